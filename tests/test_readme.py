"""The README's Python examples run as written (shortened to one epoch) on generated images."""

from __future__ import annotations

import re
from pathlib import Path

import tifffile
import torch

from napari_samtune.core.devices import resolve_device
from napari_samtune.core.synthetic import make_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 3, "the README's Python examples changed: update this test"
    for i, (image, labels) in enumerate(make_dataset(4, shape=(192, 192), seed=7)):
        for folder, array, name in [("images", image, f"c{i}"), ("labels", labels, f"c{i}_mask")]:
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"{name}.tif", array)
    tifffile.imwrite(tmp_path / "cells.tif", make_dataset(1, shape=(192, 192), seed=8)[0][0])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    segment, training, partly = blocks
    exec(compile(segment, "README segment example", "exec"), namespace)
    assert namespace["mask"].shape == (192, 192) and namespace["mask"].dtype == bool
    assert namespace["labels"].shape == (192, 192)
    assert namespace["denser"].points_per_side == 32  # changed automatic settings ran
    assert namespace["denser"].pred_iou_thresh == 0.4  # on nano's defaults, not SAM's
    assert namespace["segmenter"].model.device.type == resolve_device("auto").type  # a GPU if any

    assert "epochs=20" in training
    shortened = training.replace("epochs=20", "epochs=1, min_samples_per_epoch=4")
    exec(compile(shortened, "README training example", "exec"), namespace)
    finished, model = namespace["finished"], namespace["model"]
    assert finished.epochs_done == 1 and (tmp_path / "run" / "model.pth").is_file()
    registered = model.sam.state_dict()  # the registered model is the run's export
    saved = torch.load(finished.exported_model_path, weights_only=True)
    assert all(torch.equal(registered[k], saved[k]) for k in saved)

    (tmp_path / "annotations").mkdir()  # two of the four images annotated
    for name in ("c1", "c3"):
        (tmp_path / "labels" / f"{name}_mask.tif").rename(
            tmp_path / "annotations" / f"{name}.labels.tif"
        )
    exec(compile(partly, "README partly annotated example", "exec"), namespace)
    assert [pair.name for pair in namespace["pairs"]] == [
        "c1.tif / c1.labels.tif", "c3.tif / c3.labels.tif"
    ]  # fmt: skip
    assert namespace["match"].lonely_images == ("c0.tif", "c2.tif")
    assert namespace["foreign"] == []  # plain label files: saved for no other pixels
