"""``samtune segment``: prompt files and automatic mode with a tiny checkpoint on disk."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core.embeddings import default_cache_dir
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image


@pytest.fixture(autouse=True)
def _segment_subcommand(monkeypatch):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("segment",))


@pytest.fixture
def image_file(tmp_path):
    image = make_image((200, 240), seed=0, dtype=np.uint16)[0]
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, image)
    return path, image


def write_csv(path, text: str):
    path.write_text(text)
    return path


def reference(tiny_sam, image, **set_image) -> Segmenter:
    segmenter = Segmenter(tiny_sam, model_id="reference", use_disk_cache=False)
    segmenter.set_image(image, **set_image)
    return segmenter


def segment(tiny_checkpoint, image_path, out, *options: str) -> int:
    return main(
        [
            "segment",
            str(image_path),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(out),
            "--device",
            "cpu",
            *options,
        ]
    )


def test_boxes_file_gives_the_segmenters_labels(tmp_path, tiny_sam, tiny_checkpoint, image_file):
    path, image = image_file
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n10,10,60,70\n120,20,220,90\n")
    out = tmp_path / "out" / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes)) == 0
    labels = tifffile.imread(out)
    expected = reference(tiny_sam, image).predict_boxes([[10, 10, 60, 70], [120, 20, 220, 90]])
    assert labels.dtype == np.uint32 and labels.max() > 0
    np.testing.assert_array_equal(labels, expected)


def test_prompts_whose_object_comes_out_empty_are_named(
    tmp_path, tiny_checkpoint, image_file, capsys, monkeypatch
):
    real = Segmenter.predict_boxes

    def without_object_2(self, boxes):  # the real labels, with the second box's object lost
        labels = real(self, boxes)
        assert {1, 2, 3} <= set(np.unique(labels).tolist())
        labels[labels == 2] = 0
        return labels

    monkeypatch.setattr(Segmenter, "predict_boxes", without_object_2)
    path, _ = image_file
    text = "x_min,y_min,x_max,y_max\n10,10,60,70\n120,20,220,90\n20,100,120,190\n"
    boxes = write_csv(tmp_path / "b.csv", text)
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--boxes", str(boxes)) == 0
    captured = capsys.readouterr()
    note = "note: 1 of 3 prompted objects came out empty (ids 2, from the data rows)"
    assert note in captured.err
    assert "2 objects written" in captured.out


def test_each_positive_point_is_one_object(tmp_path, tiny_sam, tiny_checkpoint, image_file):
    path, image = image_file
    points = write_csv(tmp_path / "p.csv", "x,y,label\n30,40,1\n200,150,1\n")
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--points", str(points)) == 0
    expected = reference(tiny_sam, image).predict_points_batched([[30, 40], [200, 150]])
    assert expected.max() > 0
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_an_object_column_groups_points_into_one_prompt(
    tmp_path, tiny_sam, tiny_checkpoint, image_file
):
    path, image = image_file
    text = "x,y,label,object\n30,40,1,5\n50,60,0,5\n200,150,1,2\n"
    points = write_csv(tmp_path / "p.csv", text)
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--points", str(points)) == 0
    labels = tifffile.imread(out)
    segmenter = reference(tiny_sam, image)
    first = segmenter.predict([[30, 40], [50, 60]], [1, 0]).mask
    second = segmenter.predict([[200, 150]], multimask=True).mask
    assert first.any()
    np.testing.assert_array_equal(labels == 5, first)
    np.testing.assert_array_equal(labels == 2, second & ~first)


def test_auto_on_a_tiled_multichannel_image(tmp_path, tiny_checkpoint, capsys):
    image = make_image((256, 400), seed=1)[0]
    stack = np.stack([np.zeros_like(image), image], axis=0)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    out = tmp_path / "labels.tif"
    options = [
        "--auto",
        "--channel-axis",
        "0",
        "--channels",
        "1",
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "-1",
        "--stability-score-thresh",
        "0",
        "--min-area",
        "1",
    ]
    assert segment(tiny_checkpoint, path, out, *options) == 0
    labels = tifffile.imread(out)
    ids = np.unique(labels[labels > 0]).tolist()
    assert labels.shape == (256, 400) and labels.dtype == np.uint32
    assert ids and ids == list(range(1, len(ids) + 1))
    captured = capsys.readouterr()
    assert "embedding" in captured.err and "2/2" in captured.err  # the tile progress bar
    assert f"{len(ids)} objects written" in captured.out


def test_a_second_run_reuses_the_cached_embeddings(tmp_path, tiny_checkpoint, image_file):
    path, _ = image_file
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n10,10,60,70\n")
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes)) == 0
    files = list(default_cache_dir().glob("*.pt"))
    assert len(files) == 1
    inode = files[0].stat().st_ino  # a rewrite (atomic: a new file renamed over) changes it
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes)) == 0
    assert [f.stat().st_ino for f in default_cache_dir().glob("*.pt")] == [inode]


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("--points", "x,y\n1,2\n", r"p.csv: missing column\(s\) \['label'\]"),
        ("--points", "x,y,label\n1,2,1\nabc,3,1\n", "p.csv, line 3: column 'x' is 'abc', not a"),
        ("--points", "x,y,label\n1,2,1\n300,3,1\n", r"p.csv, line 3: \(x=300, y=3\) lies outside"),
        ("--points", "x,y,label\n1,2,1\n5,3,0\n", "line 3: a negative point needs"),
        ("--points", "x,y,label\n1,2,2\n", "line 2: label is 2"),
        ("--points", "x,y,label,object\n1,2,1,0.5\n", "object ids are whole numbers"),
        ("--points", "x,y,label\n", "has a header but no rows"),
        ("--boxes", "x_min,y_min,x_max,y_max\n50,5,10,20\n", "line 2: x_min > x_max"),
        ("--boxes", "x_min,y_min,x_max,y_max\n5,5,10,250\n", "line 2: .* lies outside"),
    ],
)
def test_bad_prompt_files_name_the_file_line_and_fix(
    tmp_path, tiny_checkpoint, image_file, capsys, option, text, message
):
    path, _ = image_file
    prompt_file = write_csv(tmp_path / "p.csv", text)
    code = segment(tiny_checkpoint, path, tmp_path / "out.tif", option, str(prompt_file))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("samtune segment: error:")
    assert re.search(message, err), err
    assert not (tmp_path / "out.tif").exists()


def test_a_missing_image_is_a_clear_error(tmp_path, tiny_checkpoint, capsys):
    code = segment(tiny_checkpoint, tmp_path / "nope.tif", tmp_path / "o.tif", "--auto")
    assert code == 2
    assert "nope.tif' does not exist" in capsys.readouterr().err


def test_a_folder_as_output_is_refused_before_any_work(
    tmp_path, tiny_checkpoint, image_file, capsys, monkeypatch
):
    import napari_samtune.core.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(models, "load_model", no_loading)
    path, _ = image_file
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it: exit code 2
        segment(tiny_checkpoint, path, tmp_path / "out", "--auto")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"is a folder; give a file name, e.g. {tmp_path / 'out' / 'labels.tif'}" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_prompts_are_required(tmp_path, tiny_checkpoint, image_file):
    path, _ = image_file
    with pytest.raises(SystemExit):
        main(["segment", str(path), "--model", str(tiny_checkpoint), "-o", str(tmp_path / "o")])
