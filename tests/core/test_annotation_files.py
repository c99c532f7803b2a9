"""Annotation files: labels TIFF + JSON record, as the widget autosaves them and
``samtune segment`` writes them."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tifffile

from napari_samtune.core import annotation_files
from napari_samtune.core.annotation_files import (
    ChangedMeanwhile,
    annotation_paths,
    file_state,
    load_annotations,
    safe_stem,
    save_annotations,
    save_name,
    unchanged_since,
    write_annotations,
)
from napari_samtune.core.data import load_pairs, prepare_pairs
from napari_samtune.core.synthetic import make_dataset
from tests.core.test_data import _n_pieces


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


@pytest.mark.parametrize("planes", [3, 4, 20])
def test_a_stack_s_labels_are_saved_one_gray_page_per_plane(tmp_path, planes):
    """A stack of 3 or 4 planes was saved as one RGB (RGBA) page of 32-bit samples, which
    Pillow could not open and Fiji would read as colour channels, not planes."""
    labels = np.zeros((planes, 16, 24), dtype=np.uint32)
    labels[:, 2:6, 3:9] = np.arange(1, planes + 1)[:, None, None]
    labels_path, _ = save_annotations(tmp_path, "stack", labels, {})
    with tifffile.TiffFile(labels_path) as tiff:
        assert len(tiff.pages) == planes
        page = tiff.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert page.samplesperpixel == 1 and page.shape == (16, 24)
    np.testing.assert_array_equal(load_annotations(labels_path)[0], labels)


def test_annotations_of_a_namesake_are_never_saved_over(tmp_path):
    labels = np.zeros((20, 30), dtype=np.uint32)
    labels[2:5, 3:9] = 1
    save_annotations(tmp_path, "Image_001", labels, {"image_fingerprint": "aaaa"})
    assert save_name(tmp_path, "Image_001", "aaaa", (20, 30)) == "Image_001"  # its own
    assert save_name(tmp_path, "Image_001", "bbbb", (20, 30)) == "Image_001-bbbb"
    assert save_name(tmp_path, "Image_002", "bbbb", (20, 30)) == "Image_002"  # free
    # the same pixels read with other axes (a (3, H, W) image as channels, then a stack)
    assert save_name(tmp_path, "Image_001", "aaaa", (2, 20, 30)) == "Image_001-aaaa"
    labels_path, _ = save_annotations(tmp_path, "Image_001", labels * 2, {}, "Image_001-bbbb")
    assert labels_path.name == "Image_001-bbbb.labels.tif"
    assert load_annotations(labels_path)[1]["image"] == "Image_001"
    assert load_annotations(tmp_path / "Image_001.labels.tif")[0].max() == 1  # untouched
    # labels without a record (another tool's): theirs when the shape fits
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
    assert prepared[1].labels.max() == _n_pieces(labels2)  # a plane: an object per piece


def test_a_failed_save_keeps_the_previous_files(tmp_path):
    labels = np.ones((8, 8), dtype=np.uint32)
    labels_path, prompts_path = save_annotations(tmp_path, "img", labels, {"objects": []})
    with pytest.raises(TypeError):
        save_annotations(tmp_path, "img", labels * 2, {"objects": [object()]})  # not JSON
    np.testing.assert_array_equal(tifffile.imread(labels_path), labels)  # both files intact
    assert json.loads(prompts_path.read_text())["objects"] == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_record_that_cannot_be_written_leaves_the_labels_as_they_were(tmp_path, monkeypatch):
    """A disk that filled between the labels and their record left new labels beside the
    old record; now both are kept as they were, and no temporary file stays."""
    import errno
    from pathlib import Path

    labels = np.ones((8, 8), dtype=np.uint32)
    labels_path, prompts_path = save_annotations(tmp_path, "img", labels, {"objects": []})
    write_text = Path.write_text

    def full(path, *args, **kwargs):
        if ".prompts.json." in path.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="no space left on the device"):
        save_annotations(tmp_path, "img", labels * 2, {"objects": [{"id": 1}]})
    np.testing.assert_array_equal(tifffile.imread(labels_path), labels)
    assert json.loads(prompts_path.read_text())["objects"] == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(OSError):
        save_annotations(tmp_path, "new", labels, {"objects": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.labels.tif", "img.prompts.json"]


def test_loading_checks_the_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_annotations(tmp_path / "missing.labels.tif")
    floats = tmp_path / "floats.labels.tif"
    tifffile.imwrite(floats, np.full((4, 4), 0.5, dtype=np.float32))  # a probability map
    with pytest.raises(ValueError, match="'floats.labels.tif' holds float32 data.*fractions"):
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


def test_ids_beyond_uint32_are_renumbered_on_loading_and_refused_on_saving(tmp_path):
    """They wrapped: 2**32 + 5 became 5, and 2**40 became 0, an object lost as background."""
    foreign = np.zeros((2, 6, 6), dtype=np.int64)  # labels of another tool, as int64
    foreign[0, :2] = 2**40
    foreign[1, 3:] = 2**32 + 5
    foreign[1, :2] = 5
    path = tmp_path / "foreign.labels.tif"
    tifffile.imwrite(path, foreign)
    labels, _ = load_annotations(path)
    assert labels.dtype == np.uint32  # 5 stays 5 (it was renumbered 1); the others: 1, 2
    np.testing.assert_array_equal(
        labels, np.select([foreign == 2**40, foreign > 5], [2, 1], foreign)
    )
    tifffile.imwrite(path, foreign + 2**33)  # no background at all: every id stays an object
    labels, _ = load_annotations(path)
    np.testing.assert_array_equal(labels, np.searchsorted([0, 5, 2**32 + 5, 2**40], foreign) + 1)
    with pytest.raises(ValueError, match=r"ids up to 1099511627776, beyond the 4294967295"):
        save_annotations(tmp_path, "big", foreign, {})
    assert not annotation_paths(tmp_path, "big")[0].exists()


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((4, 5), np.uint32),
        np.zeros((0, 3, 3), np.uint16),
        np.array([[0, 3, 3], [7, 0, 1]], np.uint8),
        np.array([[[0, 9], [9, 0]], [[2, 0], [0, 0]], [[0, 0], [0, 0]]], np.uint32),
        np.array([[0, annotation_files.COUNT_BY_BINS_UP_TO + 5], [4, 4]], np.uint32),  # np.unique
        np.array([[0, 2**40], [2**40, 3]], np.int64),
        np.array([[-1, 0], [5, 5]], np.int32),
    ],
)
def test_count_objects_counts_the_ids_but_background(labels):
    assert annotation_files.count_objects(labels) == np.count_nonzero(np.unique(labels))


def test_count_objects_of_a_random_stack_matches_unique():
    labels = np.random.default_rng(0).integers(0, 3000, size=(6, 64, 80)).astype(np.uint32)
    labels[2] = 0
    labels[4, :10] = 5000
    assert annotation_files.count_objects(labels) == np.count_nonzero(np.unique(labels))


def test_same_image_saves_finds_an_image_s_annotations_under_other_names(tmp_path, monkeypatch):
    """By the fingerprint their records name, newest first; not the excluded file (the
    image's own name), not another image's, not labels of another shape (the same pixels
    read with other axes), not where no record names one."""
    import os

    ones = np.ones((4, 4), np.uint32)
    saved = {}
    for age, (name, fingerprint, labels) in enumerate([
        ("renamed", "abc", ones), ("copied", "abc", ones), ("other", "def", ones),
        ("planes", "abc", np.ones((2, 4, 4), np.uint32)), ("own", "abc", ones),
        ("no record", None, ones),
    ]):  # fmt: skip
        record = {} if fingerprint is None else {"image_fingerprint": fingerprint}
        saved[name], prompts = annotation_files.save_annotations(tmp_path, name, labels, record)
        os.utime(prompts, (1000 - age, 1000 - age))  # "renamed" newest
    own = saved["own"]
    found = annotation_files.same_image_saves(tmp_path, "abc", (4, 4), exclude=(own,))
    assert found == [saved["renamed"], saved["copied"]]
    assert annotation_files.same_image_saves(tmp_path, "abc", (2, 4, 4)) == [saved["planes"]]
    assert annotation_files.same_image_saves(tmp_path / "none yet", "abc", (4, 4)) == []
    monkeypatch.setattr(annotation_files, "SAME_IMAGE_SCAN_LIMIT", 1)  # the newest record only
    assert annotation_files.same_image_saves(tmp_path, "abc", (4, 4)) == [saved["renamed"]]


def test_same_image_saves_reads_a_record_whole_where_its_head_has_no_fingerprint(tmp_path):
    labels, prompts = annotation_files.save_annotations(
        tmp_path, "long", np.ones((4, 4), np.uint32), {"image_fingerprint": "abc"}
    )
    record = json.loads(prompts.read_text(encoding="utf-8"))
    fingerprint = record.pop("image_fingerprint")
    record["notes"] = "x" * 10_000  # the fingerprint beyond the first 4 KB
    prompts.write_text(json.dumps({**record, "image_fingerprint": fingerprint}), "utf-8")
    assert annotation_files.same_image_saves(tmp_path, "abc", (4, 4)) == [labels]
    prompts.write_text("{not json", "utf-8")  # damaged: not offered
    assert annotation_files.same_image_saves(tmp_path, "abc", (4, 4)) == []


LONG = "Experiment_2024-05-01_HeLa_H2B-GFP_" + "Position" * 26 + "_t001"  # 248 characters


@pytest.mark.parametrize("name", [LONG, LONG + ".ome", "a" * 250 + ": 1/2"])
def test_annotations_of_an_image_with_a_very_long_name_are_saved(tmp_path, name):
    """A name longer than a file name may be (a microscope's export name, 248 characters)
    raised "File name too long" at every save: it is cut, ending in a hash of the whole.
    Its namesakes' files fit too, and names that fit are kept as they were."""
    labels = np.zeros((20, 30), dtype=np.uint32)
    labels[2:5, 3:9] = 1
    labels_path, prompts_path = save_annotations(tmp_path, name, labels, {"image_fingerprint": "a"})
    assert load_annotations(labels_path)[0].max() == 1
    assert len(labels_path.name) < 255 and len(prompts_path.name) < 255
    assert safe_stem(safe_stem(name)) == safe_stem(name)  # the cut name is kept as it is
    namesake = save_name(tmp_path, name, "0123456789abcdef", (20, 30))
    labels_path, prompts_path = save_annotations(tmp_path, name, labels, {}, namesake)
    assert len(prompts_path.name) < 255 and "-0123456789abcdef" in prompts_path.name
    assert safe_stem(LONG[:200]) == LONG[:200]
    assert safe_stem(LONG) != safe_stem(LONG[:-1] + "2")  # the hash tells them apart


def test_a_save_deletes_the_files_a_killed_save_left_half_written(tmp_path):
    """A save killed mid-write left ``.<name>.labels.tif.<random>.tmp``, hidden and as large
    as the labels, in the annotation folder for ever."""
    import os
    import time

    from napari_samtune.core.annotation_files import save_annotations

    labels = np.zeros((16, 16), np.uint32)
    labels[2:6, 2:6] = 1
    stale = tmp_path / ".cells.labels.tif.k3j2h1.tmp"
    young = tmp_path / ".cells.prompts.json.a1b2c3.tmp"  # perhaps another save going on
    other = tmp_path / ".nuclei.labels.tif.x9y8z7.tmp"  # another image's: left to its saves
    for path in (stale, young, other):
        path.write_bytes(b"half")
    hour_ago = time.time() - 2 * 3600
    for path in (stale, other):
        os.utime(path, (hour_ago, hour_ago))
    save_annotations(tmp_path, "cells", labels, {"objects": []})
    assert not stale.exists()
    assert young.exists() and other.exists()


def test_two_saves_of_one_labels_file_at_once_leave_a_matching_record(tmp_path, monkeypatch):
    """The widget's autosave and a samtune segment (or two processes) saving one file: the
    first wrote its record, the second its record and labels, then the first its labels:
    the labels of one beside the record of the other."""
    real_write, first_record_written = annotation_files.atomic_write, []
    done = threading.Event()

    def slow_first(path, write):
        result = real_write(path, write)
        if path.name.endswith(".prompts.json") and not first_record_written:
            first_record_written.append(path)
            done.wait(timeout=1.0)  # the second save's turn, unless it waits for this one
        return result

    monkeypatch.setattr(annotation_files, "atomic_write", slow_first)
    path = tmp_path / "a.labels.tif"

    def save(k: int) -> None:
        write_annotations(path, "a", np.full((8, 8), k, np.uint32), {"who": k})

    first = threading.Thread(target=save, args=(1,))
    first.start()
    deadline = time.monotonic() + 10
    while not first_record_written and time.monotonic() < deadline:
        time.sleep(0.001)
    second = threading.Thread(target=lambda: (save(2), done.set()))
    second.start()
    first.join()
    second.join()
    labels, record = load_annotations(path)
    assert int(labels[0, 0]) == record["who"] == 2  # the later save, whole


def test_a_save_finding_its_file_written_since_it_was_chosen_writes_nothing(tmp_path):
    """Two napari windows saving one image name: the other's save landed between this
    save's choice of the file and its write, and was replaced unsaid."""
    ours = np.full((8, 8), 1, np.uint32)
    path, record_path = save_annotations(tmp_path, "a", ours, {"who": "us"})
    chosen = unchanged_since(file_state(path))
    theirs = np.full((8, 8), 2, np.uint32)
    write_annotations(path, "a", theirs, {"who": "them"})  # the other window's save
    with pytest.raises(ChangedMeanwhile) as raised:
        save_annotations(tmp_path, "a", ours + 2, {"who": "us"}, before_write=chosen)
    assert raised.value.labels_path == path and "nothing was saved over it" in str(raised.value)
    labels, record = load_annotations(path)
    np.testing.assert_array_equal(labels, theirs)
    assert record["who"] == "them"
    # unchanged since it was chosen (or absent, as chosen): written
    save_annotations(tmp_path, "a", ours + 2, {}, before_write=unchanged_since(file_state(path)))
    assert int(load_annotations(path)[0][0, 0]) == 3
    save_annotations(tmp_path, "b", ours, {}, before_write=unchanged_since(None))
    with pytest.raises(ChangedMeanwhile):  # "absent" no longer holds
        save_annotations(tmp_path, "b", ours, {}, before_write=unchanged_since(None))


@pytest.mark.parametrize("objects", [5, "abc", None, [1, 2]])
def test_a_record_whose_objects_are_no_list_of_records_is_refused(tmp_path, objects):
    """ "objects": 5 in a prompts.json: the Annotate panel replaced the labels with the file's,
    then failed on the records (a TypeError, no message and no autosave), and "abc" became
    the records ['a', 'b', 'c'], written back at the next save."""
    labels = np.zeros((8, 8), np.uint32)
    labels_path, prompts_path = annotation_files.save_annotations(tmp_path, "im", labels, {})
    record = json.loads(prompts_path.read_text())
    prompts_path.write_text(json.dumps({**record, "objects": objects}))
    with pytest.raises(ValueError, match="holds objects of the wrong kind.*move it away"):
        annotation_files.load_annotations(labels_path)
