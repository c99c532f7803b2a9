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
