"""Qt-free parts of the annotation widget: files, label edits, image layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_samtune._qt.annotation_io import (
    annotation_paths,
    load_annotations,
    safe_stem,
    save_annotations,
    save_name,
)
from napari_samtune._qt.image_planes import describe_image
from napari_samtune._qt.label_edits import UndoEntry, UndoStack, write_objects
from napari_samtune.core.data import load_pairs, prepare_pairs
from napari_samtune.core.synthetic import make_dataset


def test_save_and_load_round_trip(tmp_path):
    labels = np.zeros((3, 20, 30), dtype=np.uint32)
    labels[1, 2:5, 3:9] = 70000  # beyond uint16
    record = {"objects": [{"ids": [70000], "planes": [1]}]}
    labels_path, prompts_path = save_annotations(tmp_path, "my image: 1/2", labels, record)
    assert labels_path.name == "my_image_1_2.labels.tif"
    assert prompts_path.name == "my_image_1_2.prompts.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [labels_path.name, prompts_path.name]
    loaded, loaded_record = load_annotations(labels_path)
    np.testing.assert_array_equal(loaded, labels)
    assert loaded.dtype == np.uint32
    assert loaded_record["objects"] == record["objects"]
    assert loaded_record["shape"] == [3, 20, 30] and loaded_record["image"] == "my image: 1/2"


def test_annotations_of_a_namesake_are_never_saved_over(tmp_path):
    labels = np.zeros((20, 30), dtype=np.uint32)
    labels[2:5, 3:9] = 1
    save_annotations(tmp_path, "Image_001", labels, {"image_fingerprint": "aaaa"})
    assert save_name(tmp_path, "Image_001", "aaaa", (20, 30)) == "Image_001"  # its own
    assert save_name(tmp_path, "Image_001", "bbbb", (20, 30)) == "Image_001-bbbb"
    assert save_name(tmp_path, "Image_002", "bbbb", (20, 30)) == "Image_002"  # free
    labels_path, _ = save_annotations(tmp_path, "Image_001", labels * 2, {}, "Image_001-bbbb")
    assert labels_path.name == "Image_001-bbbb.labels.tif"
    assert load_annotations(labels_path)[1]["image"] == "Image_001"
    assert load_annotations(tmp_path / "Image_001.labels.tif")[0].max() == 1  # untouched
    # labels without a record (samtune segment's): theirs when the shape fits
    tifffile.imwrite(tmp_path / "cells.labels.tif", labels)
    assert save_name(tmp_path, "cells", "cccc", (20, 30)) == "cells"
    assert save_name(tmp_path, "cells", "cccc", (3, 20, 30)) == "cells-cccc"


def test_autosaved_annotations_train_from_the_command_line(tmp_path):
    """The annotate -> train loop through files: `samtune train --images imgs/ --labels
    annotations/` pairs each image with its autosave, a stack plane by plane."""
    (image, labels), (image2, labels2) = make_dataset(2, shape=(40, 48), seed=7)
    (tmp_path / "imgs").mkdir()
    tifffile.imwrite(tmp_path / "imgs" / "cells.tif", image)
    tifffile.imwrite(tmp_path / "imgs" / "stack.tif", np.stack([image, image2]))
    autosaves = tmp_path / "annotations"
    save_annotations(autosaves, "cells", labels, {"objects": []})
    save_annotations(autosaves, "stack", np.stack([0 * labels2, labels2]), {"objects": []})
    pairs = load_pairs(tmp_path / "imgs", autosaves)
    assert [p.name for p in pairs] == [
        "cells.tif / cells.labels.tif",
        "stack.tif / stack.labels.tif plane 1",
    ]
    prepared = prepare_pairs(pairs)
    assert np.array_equal(prepared[1].rgb[..., 0], image2)
    assert prepared[1].labels.max() == len(np.unique(labels2)) - 1


def test_a_failed_save_keeps_the_previous_files(tmp_path):
    labels = np.ones((8, 8), dtype=np.uint32)
    labels_path, prompts_path = save_annotations(tmp_path, "img", labels, {"objects": []})
    with pytest.raises(TypeError):
        save_annotations(tmp_path, "img", labels * 2, {"objects": [object()]})  # not JSON
    np.testing.assert_array_equal(tifffile.imread(labels_path), labels)  # both files intact
    assert json.loads(prompts_path.read_text())["objects"] == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_loading_checks_the_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_annotations(tmp_path / "missing.labels.tif")
    floats = tmp_path / "floats.labels.tif"
    tifffile.imwrite(floats, np.full((4, 4), 0.5, dtype=np.float32))  # a probability map
    with pytest.raises(ValueError, match="'floats.labels.tif' holds float32 data.*integer"):
        load_annotations(floats)
    whole = np.arange(16, dtype=np.float32).reshape(4, 4)  # labels as ImageJ may save them
    tifffile.imwrite(floats, whole)
    labels, record = load_annotations(floats)
    assert labels.dtype == np.uint32 and np.array_equal(labels, whole) and record == {}
    labels_path, prompts_path = annotation_paths(tmp_path, "other")
    tifffile.imwrite(labels_path, np.zeros((4, 4), dtype=np.uint16))
    prompts_path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a napari-samtune annotation record"):
        load_annotations(labels_path)
    for damaged in ("{", "[]"):  # a damaged record names itself, never a raw parser error
        prompts_path.write_text(damaged)
        with pytest.raises(ValueError, match="other.prompts.json.*move it away"):
            load_annotations(labels_path)
    labels_path.write_bytes(labels_path.read_bytes()[:100])  # a truncated TIFF
    with pytest.raises(ValueError, match=r"cannot read .*other.labels.tif.* as a TIFF image"):
        load_annotations(labels_path)
    with pytest.raises(ValueError, match="integer"):
        save_annotations(tmp_path, "x", np.zeros((4, 4), dtype=np.float32), {})
    assert safe_stem("...") == "image"


def test_write_objects_numbers_new_ids_and_respects_existing_objects():
    labels = np.zeros((2, 6, 6), dtype=np.uint32)
    labels[0, 0, :] = 4
    objects = np.zeros((6, 6), dtype=np.uint32)
    objects[0:2, 0:3] = 9  # overlaps object 4 on row 0
    objects[4:6, 4:6] = 2
    entry = UndoEntry()
    ids = write_objects(labels, {0: objects, 1: objects}, overwrite=False, entry=entry)
    assert ids == [5, 6]  # object ids 2 and 9 in increasing order -> 5, 6 on both planes
    assert (labels[0, 0, :] == 4).all()  # not overwritten
    assert (labels[0, 1, 0:3] == 6).all() and (labels[1, 0:2, 0:3] == 6).all()
    assert (labels[:, 4:6, 4:6] == 5).all()
    assert sorted(entry.snapshots) == [0, 1]
    entry.restore(labels)
    assert labels.max() == 4 and (labels[0, 0] == 4).all()
    write_objects(labels, {0: objects}, overwrite=True)
    assert (labels[0, 0, 0:3] == 5 + 1).all()  # overwrite: object 9 -> id 6 took the pixels
    assert write_objects(labels, {0: np.zeros((6, 6), np.uint32)}) == []


def test_undo_stack_keeps_the_latest_edits():
    stack = UndoStack(depth=2)
    entries = [UndoEntry() for _ in range(3)]
    for entry in entries:
        stack.push(entry)
    assert len(stack) == 2
    assert stack.pop() is entries[2] and stack.pop() is entries[1] and stack.pop() is None


@pytest.mark.parametrize(
    ("shape", "rgb", "channels_first", "channels", "spatial", "n_planes"),
    [
        ((40, 50), False, False, None, (40, 50), 1),
        ((40, 50, 3), True, False, None, (40, 50), 1),
        ((5, 40, 50), False, False, None, (5, 40, 50), 5),
        ((5, 40, 50, 4), True, False, None, (5, 40, 50), 5),
        ((2, 40, 50), False, True, (1,), (40, 50), 1),
        ((3, 5, 40, 50), False, True, (0, 1, 2), (5, 40, 50), 5),
    ],
)
def test_image_layouts(shape, rgb, channels_first, channels, spatial, n_planes):
    axes = describe_image(shape, rgb, channels_first, channels)
    assert axes.spatial_shape == spatial and axes.n_planes == n_planes
    data = np.arange(np.prod(shape)).reshape(shape)
    plane = axes.plane(data, n_planes - 1)
    expected = {
        (False, False): data[-1] if n_planes > 1 else data,
        (True, False): data[-1] if n_planes > 1 else data,
        (False, True): data[:, -1] if n_planes > 1 else data,
    }[(rgb, channels_first)]
    np.testing.assert_array_equal(plane, expected)


@pytest.mark.parametrize(
    ("shape", "rgb", "channels_first", "channels", "message"),
    [
        ((2, 3, 40, 50), False, False, None, "channels on first axis"),
        ((40, 50), False, True, None, "expected \\(C, H, W\\)"),
        ((2, 40, 50), False, True, (5,), "invalid for 2 channels"),
        ((40, 50, 3), True, True, None, "untick"),
        ((40, 50), False, False, (0,), "needs 'channels on first axis'"),
    ],
)
def test_unsupported_layouts_say_how_to_fix_them(shape, rgb, channels_first, channels, message):
    with pytest.raises(ValueError, match=message):
        describe_image(shape, rgb, channels_first, channels)


def test_worker_errors_become_messages_with_a_fix():
    import urllib.error

    from napari_samtune._qt.workers import user_message

    offline = user_message(urllib.error.URLError("Name or service not known"))
    assert "offline" in offline and "checkpoint file" in offline
    assert "Check the path" in user_message(FileNotFoundError("no file /x.pth"))
    assert "cpu device" in user_message(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert user_message(ValueError("channels=[5] is invalid; pick 0..2")) == (
        "channels=[5] is invalid; pick 0..2"
    )
    assert user_message(KeyError("x")).startswith("KeyError")
