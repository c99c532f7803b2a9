"""Training folders: what they hold besides TIFF files is named, not dropped unsaid; a file
that cannot be read for its permissions says so; the Finetune panel words a channel problem
with its own channels field."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune.core import tiff_files
from napari_samtune.core.file_lists import expand_paths
from napari_samtune.core.label_files import match_files
from napari_samtune.core.synthetic import make_image


def _pair(folder_images, folder_labels, name: str, image=None) -> None:
    made, labels = make_image((64, 64), seed=len(name))
    tifffile.imwrite(folder_images / f"{name}.tif", made if image is None else image)
    tifffile.imwrite(folder_labels / f"{name}_labels.tif", labels.astype(np.uint16))


@pytest.fixture
def folders(tmp_path):
    images, labels = tmp_path / "im", tmp_path / "lb"
    images.mkdir()
    labels.mkdir()
    return images, labels


def test_subfolders_and_other_files_of_the_folders_are_named(folders):
    """Only a.tif trained, and sub/b.tif and b.png went unmentioned."""
    images, labels = folders
    _pair(images, labels, "a")
    (images / "sub").mkdir()
    _pair(images / "sub", labels, "b")
    (images / "c.png").write_bytes(b"not read")
    (images / ".DS_Store").write_bytes(b"hidden: not worth a word")
    (labels / "a.prompts.json").write_text("{}")  # the annotation widget's record: expected
    match = match_files(images, labels)
    assert [image.name for image, _ in match.pairs] == ["a.tif"]
    assert match.skipped == ("c.png", "sub/")
    message = match.left_out_message()
    assert "2 entries of the folders that are not TIFF files" in message
    assert "c.png, sub/" in message and "folder/*/*.tif" in message


def test_a_pattern_lists_the_tiff_files_it_matches_as_a_folder_does(folders):
    """``imgs/*`` called the annotation widget's records, a text file and a subfolder
    "images without a label file (not annotated yet?)"."""
    images, _ = folders
    _pair(images, images, "a")  # images and their labels in one folder, as autosaves are
    (images / "a.prompts.json").write_text("{}")
    (images / "notes.txt").write_text("stained on Monday")
    (images / "old").mkdir()
    pattern = str(images / "*")
    match = match_files(pattern, pattern)
    assert [(image.name, labels.name) for image, labels in match.pairs] == [
        ("a.tif", "a_labels.tif")
    ]
    assert match.skipped == ("notes.txt", "old/")
    assert "without a label file" not in match.left_out_message()
    with pytest.raises(ValueError, match=r"matches no \.tif/\.tiff files to read \(it matches no"):
        expand_paths(str(images / "*.txt"), "images")
    tifffile.imwrite(images / ".x.tif", np.zeros((8, 8), np.uint8))  # macOS's ._ copies, say
    with pytest.raises(ValueError, match=r"it matches \.x\.tif; hidden files are not read\)"):
        expand_paths(str(images / ".x*.tif"), "images")


def test_a_folder_whose_images_are_all_in_subfolders_says_how_to_give_them(folders):
    images, labels = folders
    (images / "exp1").mkdir()
    _pair(images / "exp1", labels, "a")
    with pytest.raises(ValueError, match=r"contains no \.tif/\.tiff files; subfolders are not "):
        expand_paths(images, "images")
    pattern = r"exp1/ holds some: give a pattern such as '.*\*/\*\.tif'"
    with pytest.raises(ValueError, match=pattern):
        match_files(images, labels)
    assert len(match_files(str(images / "*" / "*.tif"), labels).pairs) == 1


def test_a_file_without_read_permission_is_not_called_damaged(tmp_path, monkeypatch):
    """It was told "it may be truncated, damaged or still being written: save it again"."""
    path = tmp_path / "b.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tifffile, "TiffFile", refused)
    with pytest.raises(ValueError, match=r"no permission to read it \(Permission denied\)") as err:
        tiff_files.read_tiff_with_axes(path)
    assert "save it again" not in str(err.value)


def test_the_panel_names_its_channels_field_for_an_ambiguous_channel_axis(folders):
    """It said "pass channel_axis (e.g. 0 or -1) and channels", which the panel has no
    field for; its channels field alone fixes it."""
    from napari_samtune._qt.train_folders import FolderSource, check_folder_pairs

    images, labels = folders
    _pair(images, labels, "a", image=np.stack([make_image((64, 64), seed=s)[0] for s in range(3)]))
    refused = check_folder_pairs(FolderSource(images, labels), "training", lambda progress: None)
    assert "channel axis is ambiguous; fill in the channels field" in refused.problem
    assert "channel_axis" not in refused.problem
    fixed = check_folder_pairs(FolderSource(images, labels, (1,)), "training", lambda p: None)
    assert fixed.problem == ""


def test_the_panel_s_channels_apply_to_the_multichannel_files_only(folders):
    """A folder of gray and multichannel files could not be trained on (each channels value
    was refused by one file or another), nor gray validation folders beside multichannel
    training ones, whose channels an empty field takes: "give no channels for it"."""
    from napari_samtune._qt.train_folders import (
        FolderSource,
        check_folder_pairs,
        load_folder_pairs,
    )

    images, labels = folders
    gray = make_image((64, 64), seed=4)[0]
    _pair(images, labels, "gray", image=gray)
    _pair(images, labels, "two", image=np.stack([gray, 255 - gray], axis=-1))
    source = FolderSource(images, labels, (1,))
    assert check_folder_pairs(source, "training", lambda progress: None).problem == ""
    gray_pair, two = load_folder_pairs(source)
    assert gray_pair.image.shape == (64, 64) and gray_pair.channels is None
    assert two.image.shape == (64, 64, 2) and two.channels == (1,)


def test_channels_given_for_gray_files_alone_are_still_refused(folders, tmp_path):
    """With no multichannel file to take them, channels were meant for other data: 48ce1cd
    let ``--channels 7`` through for a folder of gray files. Validation folders whose empty
    field takes the training folders' channels use their gray files as they are."""
    from napari_samtune._qt.train_folders import FolderSource, check_folder_pairs

    images, labels = folders
    _pair(images, labels, "gray", image=make_image((64, 64), seed=4)[0])
    given = check_folder_pairs(FolderSource(images, labels, (7,)), "training", lambda p: None)
    assert "channels=(7,) was given but the image is 2D grayscale" in given.problem
    taken = FolderSource(images, labels, (7,), channels_taken=True)
    assert check_folder_pairs(taken, "validation", lambda p: None).problem == ""


def test_a_channel_axis_given_for_multichannel_files_passes_a_gray_one_beside_them(folders):
    from napari_samtune.core.data import load_pairs

    images, labels = folders
    gray = make_image((64, 64), seed=4)[0]
    _pair(images, labels, "cyx", image=np.stack([gray, 255 - gray]))
    _pair(images, labels, "gray", image=gray)
    cyx, gray_pair = load_pairs(images, labels, channel_axis=0, channels=1)
    assert (cyx.channel_axis, cyx.channels) == (0, (1,))
    assert (gray_pair.channel_axis, gray_pair.channels) == (None, None)
