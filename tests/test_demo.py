"""``samtune demo --quick``: finetuning nano on 2 images of an unseen domain must help."""

from __future__ import annotations

import csv

import napari_samtune.cli as cli

# The quick demo (3 held-out images, 4 short epochs) raised box IoU from 0.20 to 0.59 in our
# run; the margin is well below that, to stay robust to platform differences in arithmetic.
MIN_BOX_IOU_GAIN = 0.15


def test_quick_demo_improves_held_out_box_iou(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    with open(out / "comparison.csv") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    before, after = rows["nano"], rows["nano finetuned"]
    gain = float(after["box_iou"]) - float(before["box_iou"])
    assert gain >= MIN_BOX_IOU_GAIN, (before["box_iou"], after["box_iou"])
    assert (out / "comparison.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "data" / "train").iterdir()) == [
        "image_000.tif", "image_000_labels.tif", "image_001.tif", "image_001_labels.tif",
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "| nano finetuned |" in printed and "preset:" in printed
    assert "learning_rate=0.0001" in printed  # the effective config is shown


def test_a_new_demo_in_the_same_folder_replaces_neither_data_nor_run_nor_comparison(tmp_path):
    from napari_samtune.core.demo import _new_run_names

    def names(tag: str) -> tuple:
        return tmp_path / f"data{tag}", tmp_path / f"finetune{tag}", f"comparison{tag}"

    assert _new_run_names(tmp_path) == names("")
    (tmp_path / "finetune").mkdir()  # an earlier demo's run ...
    assert _new_run_names(tmp_path) == names("-2")
    (tmp_path / "finetune").rmdir()
    (tmp_path / "comparison.csv").write_text("model\n")  # ... or its comparison alone
    assert _new_run_names(tmp_path) == names("-2")
    (tmp_path / "finetune-2").mkdir()
    (tmp_path / "comparison-3.png").write_bytes(b"")
    assert _new_run_names(tmp_path) == names("-4")
    (tmp_path / "data-4").mkdir()  # images of another seed, or someone's own data folder
    assert _new_run_names(tmp_path) == names("-5")
