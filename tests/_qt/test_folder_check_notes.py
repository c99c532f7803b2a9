"""The Finetune panel's note on TIFF folders names the autosaves it leaves out for having
been saved for other images of the same name (they were left out without a word)."""

from __future__ import annotations

import json

import tifffile

from napari_samtune._qt.train_folders import FolderSource, check_folder_pairs
from napari_samtune.core.label_files import image_fingerprint
from napari_samtune.core.synthetic import make_dataset


def test_the_note_names_the_namesakes_autosaves_left_out(tmp_path):
    (first, first_labels), (second, second_labels) = make_dataset(2, (48, 64), seed=7)
    images, annotations = tmp_path / "exp2", tmp_path / "annotations"
    images.mkdir()
    annotations.mkdir()
    tifffile.imwrite(images / "Image_001.tif", second)
    for name, image, labels in (
        ("Image_001", first, first_labels),  # another experiment's Image_001.tif
        (f"Image_001-{image_fingerprint(second)}", second, second_labels),
    ):
        tifffile.imwrite(annotations / f"{name}.labels.tif", labels)
        record = {
            "format": "napari-samtune-annotations",
            "image_fingerprint": image_fingerprint(image),
        }
        (annotations / f"{name}.prompts.json").write_text(json.dumps(record))
    check = check_folder_pairs(FolderSource(images, annotations), "training", lambda _: None)
    assert check.problem == ""
    assert "left out 1 label file(s) saved for other images of the same name" in check.note
    assert "Image_001.labels.tif" in check.note


def test_images_whose_channels_and_planes_cannot_be_told_apart_are_worded_for_the_panel(
    tmp_path,
):
    """It advised channel_axis=0 or 1 (--channel-axis), which the panel has no field for."""
    import numpy as np
    import tifffile

    from napari_samtune._qt.train_folders import FolderSource, check_folder_pairs

    for kind in ("img", "lab"):
        (tmp_path / kind).mkdir()
    labels = np.zeros((3, 64, 64), np.uint16)
    labels[:, 10:30, 10:30] = 1
    tifffile.imwrite(tmp_path / "img" / "a.tif", np.zeros((3, 3, 64, 64), np.uint8))
    tifffile.imwrite(tmp_path / "lab" / "a.tif", labels)
    source = FolderSource(tmp_path / "img", tmp_path / "lab", channels=(1,))
    problem = check_folder_pairs(source, "training", lambda progress: None).problem
    assert "channels may come first (C, Z, H, W) or second (Z, C, H, W)" in problem
    assert "the panel cannot say which (samtune train can: --channel-axis 0 or 1)" in problem
    assert "channel_axis=" not in problem
