"""Label files: pairing them with their images by name, and naming the missing ones."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest
import tifffile

from napari_samtune.core.data import load_pairs
from napari_samtune.core.file_lists import expand_paths
from napari_samtune.core.label_files import image_fingerprint, match_files, pair_files
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.tiff_files import (
    float_labels_problem,
    max_float_label,
    read_tiff,
)


def _write(folder, name, array):
    folder.mkdir(exist_ok=True)
    tifffile.imwrite(folder / name, array)


def test_images_and_labels_may_share_a_folder(tiff_folders, tmp_path):
    images, labels = tiff_folders
    for f in labels.iterdir():
        f.rename(images / f.name.replace("_labels", "_mask"))
    pairs = pair_files(images, images)
    names = [(f"cell_{i}.tif", f"cell_{i}_mask.tif") for i in range(3)]
    assert [(i.name, lab.name) for i, lab in pairs] == names
    assert pair_files(str(images / "*.tif"), str(images / "*_mask.tif")) == pairs
    other_spelling = pair_files(images, f"{tmp_path}/../{tmp_path.name}/images")
    assert [(i.name, lab.name) for i, lab in other_spelling] == names
    with pytest.raises(ValueError, match="name the same 3 file.*none of them are named as labels"):
        pair_files(str(images / "cell_?.tif"), str(images / "cell_?.tif"))
    with pytest.raises(ValueError, match="name the same 3 file.*all of them are named as labels"):
        pair_files(str(images / "*_mask.tif"), images)


def test_a_label_file_named_twice_pairs_once(tiff_folders, tmp_path, monkeypatch):
    """A folder and a file in it, overlapping globs, or a relative and a whole path: the one
    file was refused as two label files of one image, with the advice to rename one."""
    images, labels = tiff_folders
    names = [(f"cell_{i}.tif", f"cell_{i}_labels.tif") for i in range(3)]
    monkeypatch.chdir(tmp_path)
    for twice in (
        [labels, labels / "cell_0_labels.tif"],
        [str(labels / "cell_?_labels.tif"), str(labels / "cell_0*")],
        ["labels", labels.absolute()],
    ):
        match = match_files(images, twice)
        assert [(i.name, lab.name) for i, lab in match.pairs] == names, twice
        assert not match.unpaired_message()
    # a link under another image's name is that image's label file ("b.tif without labels")
    (images / "cell_3.tif").symlink_to(images / "cell_0.tif")
    (labels / "cell_3_labels.tif").symlink_to(labels / "cell_0_labels.tif")
    match = match_files(images, labels)
    assert [(i.name, lab.name) for i, lab in match.pairs][3] == ("cell_3.tif", "cell_3_labels.tif")
    assert not match.unpaired_message()


def test_names_pair_as_the_annotation_widget_writes_them(tmp_path):
    """The widget saves the labels of "cell 1" as cell_1.labels.tif (file-name-safe)."""
    for name in ("cell 1.tif", "plate#2 (a).tif", "cell_3.tif"):
        _write(tmp_path / "images", name, np.zeros((4, 4), np.uint8))
    for name in ("cell_1.labels.tif", "plate_2_a.labels.tif", "cell_3_mask.tif"):
        _write(tmp_path / "labels", name, np.ones((4, 4), np.uint8))
    pairs = pair_files(tmp_path / "images", tmp_path / "labels")
    assert sorted((i.name, lab.name) for i, lab in pairs) == [
        ("cell 1.tif", "cell_1.labels.tif"),
        ("cell_3.tif", "cell_3_mask.tif"),
        ("plate#2 (a).tif", "plate_2_a.labels.tif"),
    ]


def test_names_in_any_script_pair_by_their_own_letters(tmp_path):
    """Only ASCII was kept: 日本.tif paired with 中国_labels.tif (both "image"), and 細胞A /
    試料A were refused as one name ("a"); an NFD name (macOS) pairs with its NFC labels."""
    for name in ("日本.tif", "細胞A.tif", "試料A.tif", "Zelle ä.tif", "-x.tif", "cafe\u0301.tif"):
        _write(tmp_path / "images", name, np.zeros((4, 4), np.uint8))
    labels = ("中国_labels.tif", "細胞A_labels.tif", "試料A_labels.tif", "Zelle_ä.labels.tif")
    for name in (*labels, "x_mask.tif", "caf\u00e9_mask.tif"):
        _write(tmp_path / "labels", name, np.ones((4, 4), np.uint8))
    found = match_files(tmp_path / "images", tmp_path / "labels")
    assert sorted((i.name, lab.name) for i, lab in found.pairs) == [
        ("-x.tif", "x_mask.tif"),
        ("Zelle ä.tif", "Zelle_ä.labels.tif"),
        ("cafe\u0301.tif", "caf\u00e9_mask.tif"),
        ("細胞A.tif", "細胞A_labels.tif"),
        ("試料A.tif", "試料A_labels.tif"),
    ]
    assert found.lonely_images == ("日本.tif",) and found.lonely_labels == ("中国_labels.tif",)


def test_file_names_made_from_long_names_in_any_script_fit_255_bytes():
    from napari_samtune.core.label_files import labels_file_name, safe_stem

    for name in ("日" * 120, "é" * 150, "a" * 300):
        made = labels_file_name(name)
        assert len(made.encode()) < 255 - len(".prompts.json") and made.startswith(name[:10])
    assert safe_stem("日" * 120) != safe_stem("日" * 121)
    assert (safe_stem("🙂"), safe_stem("--help"), safe_stem("a b")) == ("image", "help", "a_b")


def test_label_files_of_names_that_differ_only_in_case_say_how_names_compare(tmp_path):
    """A.tif / A_labels.tif and a.tif / a_labels.tif were told "keep one label file per
    image", though each image had one: the names compare equal, which it did not say."""
    for name in ("A.tif", "a.tif"):
        _write(tmp_path / "images", name, np.zeros((4, 4), np.uint8))
        _write(tmp_path / "labels", name.replace(".tif", "_labels.tif"), np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="both pair with image name 'a'") as err:
        match_files(tmp_path / "images", tmp_path / "labels")
    assert "names are compared ignoring case and extension" in str(err.value)
    assert "rename one image and its label file" in str(err.value)


def test_two_experiments_of_the_same_file_names_are_named_by_folder(tmp_path):
    """A/img/c0.tif with A/lab/c0.tif beside B/img/c0.tif with B/lab/c0.tif: refused as
    "label files 'c0.tif' and 'c0.tif' both pair ...", with advice (keep one label file
    per image; rename images whose names differ only so) that fitted neither."""
    for experiment in ("A", "B"):
        (tmp_path / experiment).mkdir()
        _write(tmp_path / experiment / "img", "c0.tif", np.zeros((4, 4), np.uint8))
        _write(tmp_path / experiment / "lab", "c0.tif", np.ones((4, 4), np.uint8))
    images = [tmp_path / e / "img" for e in ("A", "B")]
    with pytest.raises(ValueError) as err:
        match_files(images, [tmp_path / e / "lab" for e in ("A", "B")])
    said = str(err.value)
    assert str(tmp_path / "A" / "lab" / "c0.tif") in said
    assert str(tmp_path / "B" / "lab" / "c0.tif") in said
    assert "same name in two folders" in said and "one experiment's folders at a time" in said
    assert "keep one label file per image" not in said


def test_two_images_of_one_pairing_name_are_refused_not_given_one_label_file(tmp_path):
    """cell 1.tif and cell_1.tif pair by the same name: training one on the other's labels
    (same size, so no later check notices) would be silently wrong."""
    (first, _), (second, second_labels) = make_dataset(2, shape=(32, 32), seed=4)
    _write(tmp_path / "images", "cell 1.tif", first)
    _write(tmp_path / "images", "cell_1.tif", second)
    _write(tmp_path / "labels", "cell_1_mask.tif", second_labels)
    with pytest.raises(ValueError, match="cell 1.tif' and .*cell_1.tif' both pair with label"):
        match_files(tmp_path / "images", tmp_path / "labels")
    (tmp_path / "images" / "cell_1.tif").rename(tmp_path / "images" / "Cell 1.TIFF")
    with pytest.raises(ValueError, match="both pair with label file 'cell_1_mask.tif'"):
        load_pairs(tmp_path / "images", tmp_path / "labels")


def test_one_image_and_one_label_file_pair_whatever_their_names(tiff_folders):
    images, labels = tiff_folders
    assert pair_files(images / "cell_1.tif", labels / "cell_2_labels.tif") == [
        (images / "cell_1.tif", labels / "cell_2_labels.tif")
    ]
    with pytest.raises(ValueError, match=r"images without labels \['cell_0.tif', 'cell_2.tif'\]"):
        pair_files(images, labels / "cell_1_labels.tif")  # several images: by name only


def test_images_and_labels_given_the_wrong_way_round_are_named_as_swapped(tiff_folders):
    """The one-file pair trained on the labels as the image and the image as its labels; the
    folders were refused listing every file, without saying why."""
    images, labels = tiff_folders
    with pytest.raises(ValueError, match=r"could not pair .*: were the images and labels swapped"):
        pair_files(labels, images)
    with pytest.raises(ValueError, match=r"'cell_1_labels.tif' is named as the labels of .*"
                       r"'cell_1.tif': were the images and labels swapped\?"):  # fmt: skip
        pair_files(labels / "cell_1_labels.tif", images / "cell_1.tif")
    assert pair_files(images / "cell_1.tif", labels / "cell_2_labels.tif")  # other names pair


def test_a_folder_of_one_image_pairs_by_name_with_a_folder_of_one_label_file(tmp_path):
    """The one image annotated so far, and the labels of another image: not a pair."""
    _write(tmp_path / "images", "day_2.tif", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "labels", "day_1.labels.tif", np.ones((4, 4), np.uint8))
    unpaired = r"images without labels \['day_2.tif'\], labels without images \['day_1.labels"
    with pytest.raises(ValueError, match=unpaired):
        match_files(tmp_path / "images", tmp_path / "labels")
    with pytest.raises(ValueError, match=unpaired):
        match_files([str(tmp_path / "images" / "*.tif")], [str(tmp_path / "labels")])
    named = match_files(
        [tmp_path / "images" / "day_2.tif"], tmp_path / "labels" / "day_1.labels.tif"
    )
    assert [(i.name, lab.name) for i, lab in named.pairs] == [("day_2.tif", "day_1.labels.tif")]


def test_ome_tiff_names_pair_without_their_ome(tmp_path):
    """``cell_1.ome.tif`` (the OME-TIFF name microscopes write) paired with no label file:
    its name to pair by was ``cell_1.ome``."""
    for name in ("cell_1.ome.tif", "cell_2.tif", "cell_3.ome.tif"):
        _write(tmp_path / "images", name, np.zeros((4, 4), np.uint8))
    for name in ("cell_1_labels.tif", "cell_2_labels.ome.tif", "cell_3.ome.labels.tif"):
        _write(tmp_path / "labels", name, np.ones((4, 4), np.uint8))
    match = match_files(tmp_path / "images", tmp_path / "labels")
    assert [(i.name, lab.name) for i, lab in match.pairs] == [
        ("cell_1.ome.tif", "cell_1_labels.tif"),
        ("cell_2.tif", "cell_2_labels.ome.tif"),
        ("cell_3.ome.tif", "cell_3.ome.labels.tif"),  # the widget's autosave of its layer
    ]


def test_image_copies_among_the_labels_are_named_as_such(tmp_path):
    """A labels folder holding copies of the images beside their masks said "keep one label
    file per image", as if one of the masks were one too many."""
    _write(tmp_path / "images", "c0.tif", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "masks", "c0.tif", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "masks", "c0_mask.tif", np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError) as err:
        match_files(tmp_path / "images", tmp_path / "masks")
    assert "'c0.tif' is named like an image (a copy of it among the labels?)" in str(err.value)
    assert "'c0_mask.tif' as its labels; keep one label file per image, e.g. move the images" in (
        str(err.value)
    )


def test_unpaired_files_are_all_listed(tiff_folders):
    images, labels = tiff_folders
    (labels / "cell_2_labels.tif").rename(labels / "other.tif")
    with pytest.raises(
        ValueError, match=r"images without labels \['cell_2.tif'\].*\['other.tif'\]"
    ):
        pair_files(images, labels)


def test_matching_leaves_out_the_files_without_a_partner_and_names_them(tiff_folders):
    """A folder of images of which some are annotated, and a labels folder (e.g. the
    widget's autosaves) that also holds labels of images from elsewhere."""
    images, labels = tiff_folders
    for i in range(3, 8):
        _write(images, f"cell_{i}.tif", np.zeros((4, 4), np.uint8))
    (labels / "cell_2_labels.tif").rename(labels / "other.labels.tif")
    match = match_files(images, labels)
    assert [(i.name, lab.name) for i, lab in match.pairs] == [
        ("cell_0.tif", "cell_0_labels.tif"),
        ("cell_1.tif", "cell_1_labels.tif"),
    ]
    assert match.lonely_images == tuple(f"cell_{i}.tif" for i in (2, 3, 4, 5, 6, 7))
    assert match.lonely_labels == ("other.labels.tif",)
    assert match.left_out_message() == (
        "left out 6 image(s) without a label file (not annotated yet?): cell_2.tif, cell_3.tif, "
        "cell_4.tif and 3 more and 1 label file(s) without an image: other.labels.tif (napari "
        "saves an image's annotations under its layer's name: to pair a file renamed so with "
        "its image, rename the file or the layer back)"
    )  # (an image layer renamed after annotating left its image out, "not annotated yet?")
    with pytest.raises(ValueError, match=re.escape(match.unpaired_message())):
        pair_files(images, labels)  # strict: every file pairs
    complete = match_files(images / "cell_[01].tif", labels)
    assert complete.lonely_images == () and complete.lonely_labels == ("other.labels.tif",)
    assert "rename the file" not in complete.left_out_message()  # no image it could be
    only_images = match_files(images / "cell_[01].tif", labels / "cell_*")
    assert only_images.left_out_message() == "" and only_images.unpaired_message() == ""


def test_matching_without_any_pair_is_refused(tiff_folders, tmp_path):
    images, _ = tiff_folders
    _write(tmp_path / "elsewhere", "a.labels.tif", np.ones((4, 4), np.uint8))
    _write(tmp_path / "elsewhere", "b.labels.tif", np.ones((4, 4), np.uint8))
    with pytest.raises(
        ValueError, match=r"images without labels \['cell_0.tif'.*\['a.labels.tif', 'b.labels"
    ):
        match_files(images, tmp_path / "elsewhere")
    # autosaves of renamed image layers: the refusal says why they pair with nothing
    with pytest.raises(ValueError, match="under its layer's name: to pair a file renamed so"):
        match_files(images, tmp_path / "elsewhere")
    _write(tmp_path / "masks", "a_mask.tif", np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError) as refused:  # no autosave: no layer to have renamed
        match_files(images, tmp_path / "masks")
    assert "layer" not in str(refused.value)


def test_fingerprints_tell_images_apart_cheaply(rng, monkeypatch):
    import napari_samtune.core.label_names as label_names

    image = rng.integers(0, 60000, size=(3, 64, 80), dtype=np.uint16)
    assert image_fingerprint(image) == image_fingerprint(image.copy())
    changed = image.copy()
    changed[2, 63, 79] += 1  # the last pixel
    assert image_fingerprint(changed) != image_fingerprint(image)
    assert image_fingerprint(image.astype(np.int32)) != image_fingerprint(image)
    view = image.transpose(0, 2, 1)  # not contiguous: sampled without a copy
    assert image_fingerprint(view) == image_fingerprint(np.ascontiguousarray(view))
    monkeypatch.setattr(label_names, "FINGERPRINT_SAMPLES", 1000)  # a large image: sampled
    assert image_fingerprint(changed) == image_fingerprint(image)  # (so this pixel is missed)
    changed[0, 0, 0] += 1
    assert image_fingerprint(changed) != image_fingerprint(image)


def test_the_pixels_choose_among_an_images_autosaves(tmp_path, rng):
    """choose_namesake: the autosave saved for these pixels; else the one without a record
    (e.g. samtune segment's); else none."""
    import json

    from napari_samtune.core.label_files import choose_namesake

    image = rng.integers(0, 255, size=(8, 8), dtype=np.uint8)
    mine = image_fingerprint(image)
    plain, other = tmp_path / "a.labels.tif", tmp_path / f"a-{'1' * 16}.labels.tif"
    own = tmp_path / f"a-{mine}.labels.tif"
    for path in (plain, other, own):
        _write(tmp_path, path.name, np.ones((8, 8), np.uint8))
    (tmp_path / f"a-{'1' * 16}.prompts.json").write_text(
        json.dumps({"image_fingerprint": "1" * 16})
    )
    (tmp_path / f"a-{mine}.prompts.json").write_text(json.dumps({"image_fingerprint": mine}))
    source = tmp_path / "a.tif"
    assert choose_namesake(image, source, [plain, other, own]) == own
    assert choose_namesake(image, source, [plain, other]) == plain  # no record: segment's
    (tmp_path / "a.prompts.json").write_text(json.dumps({"image_fingerprint": "2" * 16}))
    with pytest.raises(
        ValueError, match="none was saved for its pixels.*name this image's labels a.labels.tif"
    ):
        choose_namesake(image, source, [plain, other])


def test_missing_and_empty_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "full", "a.tif", np.ones((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="images path .*nowhere.* does not exist"):
        pair_files(tmp_path / "nowhere", tmp_path / "empty")
    with pytest.raises(ValueError, match="labels folder .*empty.* contains no .tif"):
        pair_files(tmp_path / "full", tmp_path / "empty")
    with pytest.raises(ValueError, match="matches no files"):
        pair_files(str(tmp_path / "*.tif"), tmp_path)


def test_a_truncated_tiff_is_named_with_the_fix(tiff_folders):
    """tifffile's own message ('failed to read 16384 bytes, got 44') names no file."""
    images, labels = tiff_folders
    damaged = images / "cell_1.tif"
    damaged.write_bytes(damaged.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cannot read .*cell_1.tif.* as a TIFF image.*save it"):
        load_pairs(images, labels)
    with pytest.raises(ValueError, match="is not a TIFF file"):
        read_tiff(images / "cell_1.png")


def test_a_damaged_tiff_that_reads_as_no_pixels_is_named(tmp_path, capfd):
    """tifffile reads a file with a valid header and a bad offset as an empty array, and
    logs the reason on its own, naming no file."""
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(ValueError) as raised:
        read_tiff(damaged)
    message = str(raised.value)
    assert "cannot read" in message and "damaged.tif" in message
    assert "invalid offset to first page" in message and "save it again" in message
    assert capfd.readouterr().err == ""  # said once, in the error


def test_an_autosave_saved_past_unreadable_ones_pairs_with_its_image(tmp_path):
    """<name>-<fingerprint>-2.labels.tif (the widget's saves after <name>-<fingerprint> could
    not be read back either) was a label file without an image."""
    (image, labels), (other, other_labels) = make_dataset(2, (48, 64), seed=3)
    for name, pixels in (("nuclei.tif", image), ("other.tif", other)):
        _write(tmp_path / "images", name, pixels)
    numbered = f"nuclei-{image_fingerprint(image)}-2.labels.tif"
    _write(tmp_path / "labels", numbered, labels)
    _write(tmp_path / "labels", "other.labels.tif", other_labels)
    assert pair_files(tmp_path / "images", tmp_path / "labels") == [
        (tmp_path / "images" / "nuclei.tif", tmp_path / "labels" / numbered),
        (tmp_path / "images" / "other.tif", tmp_path / "labels" / "other.labels.tif"),
    ]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_labels_are_told_apart_as_before(dtype):
    """Each problem is named, NaN and inf before fractions before the range, wherever the
    offending value lies (first, last or only value)."""
    ids = np.arange(24, dtype=dtype).reshape(4, 6)
    assert float_labels_problem(ids) == "" and float_labels_problem(ids[:, ::2]) == ""
    assert float_labels_problem(np.zeros((0, 3), dtype)) == ""
    expected = {np.nan: "NaN or infinite", -np.inf: "NaN or infinite", 0.5: "fractions"}
    bound, name = max_float_label(np.dtype(dtype)), np.dtype(dtype)
    expected[-1.0] = f"outside 0..{bound}, the ids read from {name} labels"
    for value, words in expected.items():
        for index in (0, -1):
            bad = ids.copy()
            bad.flat[index] = value
            assert words in float_labels_problem(bad), (value, index)
    both = ids.copy()
    both.flat[0], both.flat[-1] = 0.5, np.inf
    assert "NaN or infinite" in float_labels_problem(both)
    both.flat[-1] = -3.0
    assert "fractions" in float_labels_problem(both)


def test_checking_float_labels_makes_no_copy_of_them():
    """np.isfinite and np.mod made temporaries of the labels' size (0.25 s for a 4096 x
    4096 float32 layer chosen as labels); now they are read in chunks."""
    labels = np.random.default_rng(0).integers(0, 50, (1024, 2048)).astype(np.float32)
    labels[-1, -1] = 0.5  # found in the last chunk only: every value is read
    tracemalloc.start()
    try:
        problem = float_labels_problem(labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "fractions" in problem
    assert peak < labels.nbytes / 4, f"peak {peak} bytes for {labels.nbytes} bytes of labels"


def test_an_existing_file_with_glob_characters_in_its_name_is_that_file(tmp_path):
    """``well[A1].tif`` was taken as a pattern (matching ``wellA.tif``, ``well1.tif``) and
    refused as matching no files, although it exists."""
    _write(tmp_path / "g", "well[A1].tif", np.ones((4, 4), np.uint8))
    _write(tmp_path / "g", "well[A1]_labels.tif", np.eye(4, dtype=np.uint8))
    _write(tmp_path / "g", "wellA.tif", np.zeros((4, 4), np.uint8))
    (pair,) = load_pairs(
        tmp_path / "g" / "well[A1].tif", str(tmp_path / "g" / "well[A1]_labels.tif")
    )
    np.testing.assert_array_equal(pair.image, np.ones((4, 4), np.uint8))
    np.testing.assert_array_equal(pair.labels > 0, np.eye(4, dtype=bool))
    # a pattern that names no file is still a pattern
    assert expand_paths(str(tmp_path / "g" / "well[A].tif"), "images") == [
        tmp_path / "g" / "wellA.tif"
    ]


def test_arrays_given_for_files_are_refused_with_the_fix(tmp_path):
    image, labels = np.ones((4, 4), np.uint8), np.eye(4, dtype=np.uint8)
    with pytest.raises(TypeError, match=r"images must be a path.*got ndarray.*go to train\(\)"):
        load_pairs(image, labels)
    with pytest.raises(TypeError, match=r"images must be a path.*got list of ndarray:"):
        match_files([image], [labels])


def test_images_with_very_long_names_pair_with_the_widget_s_and_their_own_label_files(tmp_path):
    """The widget cuts a name longer than a file name may be (see safe_stem): the image
    still pairs with that autosave, and with a label file named after it in full."""
    from napari_samtune.core.label_files import labels_file_name, namesake_name

    long = "HeLa_H2B-GFP_" + "Position" * 26 + "_t00"  # 225 characters
    images = [f"{long}1.tif", f"{long}2.ome.tif", f"{long}3.tif"]
    labels = [
        labels_file_name(f"{long}1"),
        labels_file_name(namesake_name(f"{long}2.ome", "0123456789abcdef")),
        f"{long.lower()}3_masks.tif",  # too long for the widget to write, not to pair
    ]
    for image, label in zip(images, labels, strict=True):
        _write(tmp_path / "images", image, np.zeros((4, 4), np.uint8))
        _write(tmp_path / "labels", label, np.ones((4, 4), np.uint8))
    match = match_files(tmp_path / "images", tmp_path / "labels")
    assert [(i.name, lab.name) for i, lab in match.pairs] == list(zip(images, labels, strict=True))
    assert all(len(name) < 240 for name in labels[:2])


def test_names_windows_keeps_for_devices_are_not_file_names(tmp_path):
    """An image named 'aux' (a channel) or 'NUL' was saved as aux.labels.tif, which Windows
    takes for a device, whatever follows the dot."""
    from napari_samtune.core.label_files import labels_file_name, safe_stem

    assert [safe_stem(n) for n in ("aux", "NUL.ome", "com1", "console", "con 1")] == [
        "aux_", "NUL_.ome", "com1_", "console", "con_1"
    ]  # fmt: skip
    assert labels_file_name("aux") == "aux_.labels.tif"
    _write(tmp_path / "img", "aux.tif", np.zeros((8, 8), np.uint8))
    for saved in ("aux_.labels.tif", "aux.labels.tif"):  # this version's, and one from elsewhere
        labels = tmp_path / saved.replace(".", "-")
        _write(labels, saved, np.ones((8, 8), np.uint16))
        assert [(i.name, lab.name) for i, lab in pair_files(tmp_path / "img", labels)] == [
            ("aux.tif", saved)
        ]


def test_device_names_are_refused_as_model_names():
    from napari_samtune.core.registry import validate_model_name

    with pytest.raises(ValueError, match="not a name Windows keeps for a device"):
        validate_model_name("con", "model_name")
    assert validate_model_name("con2") == "con2"


def test_a_sound_tiff_too_large_for_free_memory_is_not_called_damaged(tiff_folders, monkeypatch):
    """A 6.7 GiB image on a machine short of memory was "truncated, damaged or still being
    written: save it again, or move it out of the folder"."""
    images, labels = tiff_folders

    def out_of_memory(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 6.71 GiB for an array")  # as numpy says it

    monkeypatch.setattr(tifffile.TiffFile, "asarray", out_of_memory)
    with pytest.raises(ValueError) as refused:
        load_pairs(images, labels)
    said = str(refused.value)
    assert "cell_" in said and "do not fit in the memory this machine has free" in said
    assert re.search(r"its pixels \(\d+ x \d+ uint8, 0\.0 GiB\)", said)
    assert "damaged" not in said and "crop, bin or split the image" in said


class _Lazy:
    """An array not in memory (as dask's and zarr's): shape, dtype and ``__array__``."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels, self.shape, self.dtype, self.reads = pixels, pixels.shape, pixels.dtype, 0

    def __array__(self, dtype=None, copy=None):
        self.reads += 1
        return self.pixels


def test_a_lazy_image_is_told_apart_by_its_pixels_as_in_memory(monkeypatch):
    """Lazy images were hashed by shape and dtype alone: another image of that name and
    shape had its annotations restored, and written into; the same pixels opened lazily
    were told they were other pixels."""
    from napari_samtune.core import label_names

    one, other = (np.random.default_rng(s).integers(0, 255, (3, 40, 50), np.uint8) for s in (1, 2))
    assert image_fingerprint(_Lazy(one)) == image_fingerprint(one)
    assert image_fingerprint(_Lazy(one)) != image_fingerprint(_Lazy(other))
    monkeypatch.setattr(label_names, "LAZY_FINGERPRINT_BYTES", one.nbytes - 1)
    large = _Lazy(one)  # too large to read here: its shape and dtype only
    assert image_fingerprint(large) == image_fingerprint(_Lazy(other)) and large.reads == 0


def test_label_files_beside_their_images_are_no_images_when_labels_come_from_elsewhere(
    tmp_path,
):
    """A dataset with its ground truth beside the images, and labels from samtune segment
    in another folder: train and evaluate refused it (images without labels, rename them)."""
    (image, labels), *_ = make_dataset(1, (32, 32), seed=0)
    _write(tmp_path / "data", "img0.tif", image)
    _write(tmp_path / "data", "img0_labels.tif", labels)
    _write(tmp_path / "seg", "img0.labels.tif", labels)
    match = match_files(tmp_path / "data", tmp_path / "seg", strict=True)
    assert [(i.name, lab.name) for i, lab in match.pairs] == [("img0.tif", "img0.labels.tif")]
    assert match.left_out_message() == (
        "left out 1 file(s) among the images named as the labels of images beside them: "
        "img0_labels.tif"
    )


def test_float64_labels_hold_ids_up_to_uint32_s_largest():
    """Whole-number float64 labels above 2^24 (exact up to 2^53) were refused with float32's
    limit, as if inexact, and no fix."""
    assert [max_float_label(np.dtype(t)) for t in ("float16", "float32", "float64")] == [
        2048, 2**24, 2**32 - 1,
    ]  # fmt: skip
    big = np.array([[0, 2**30 + 7], [5, 2**24 + 1]], np.float64)
    assert float_labels_problem(big) == ""
    assert "save the labels as whole numbers" in float_labels_problem(big.astype(np.float32) * 300)


def test_a_namesake_of_a_name_without_letters_pairs_with_its_own_image(tmp_path):
    """'😀' and '🙂' are both 'image' in file names; 🙂's autosave, saved as its namesake,
    was named by its fingerprint alone (the strip ate '_-'), so it paired with nothing and
    🙂 trained on 😀's labels."""
    from napari_samtune.core.annotation_files import save_annotations, save_name

    images = {"😀": np.zeros((16, 16), np.uint8), "🙂": np.full((16, 16), 9, np.uint8)}
    labels = {name: np.zeros((16, 16), np.uint16) for name in images}
    labels["😀"][2:6, 2:6], labels["🙂"][8:14, 8:14] = 1, 1
    for name, image in images.items():
        _write(tmp_path / "images", f"{name}.tif", image)
        fingerprint = image_fingerprint(image)
        saved = save_name(tmp_path / "labels", name, fingerprint, image.shape)
        record = {"image_fingerprint": fingerprint, "objects": []}
        save_annotations(tmp_path / "labels", name, labels[name], record, saved)
    assert sorted(p.name for p in (tmp_path / "labels").glob("*.tif")) == [
        f"image-{image_fingerprint(images['🙂'])}.labels.tif",
        "image.labels.tif",
    ]
    for name in images:  # each alone, and both: its own labels
        (pair,) = load_pairs(tmp_path / "images" / f"{name}.tif", tmp_path / "labels")
        assert np.array_equal(np.asarray(pair.labels), labels[name])
    both = load_pairs(tmp_path / "images", tmp_path / "labels")
    assert [np.asarray(p.labels).sum() for p in both] == [16, 36]


def test_autosaves_an_earlier_version_named_are_named_with_the_rename_that_pairs_them(tmp_path):
    """Names kept ASCII letters only before 2026-12-06 ('Zelle ä' saved as Zelle.labels.tif):
    such autosaves paired no more, and the refusal blamed a layer renamed in napari."""
    for name in ("Zelle ä.tif", "cells 10µm.tif", "plain.tif"):
        _write(tmp_path / "images", name, np.zeros((4, 4), np.uint8))
    for name in ("Zelle.labels.tif", "cells_10_m.labels.tif", "plain.labels.tif"):
        _write(tmp_path / "labels", name, np.ones((4, 4), np.uint8))
    match = match_files(tmp_path / "images", tmp_path / "labels")
    assert [image.name for image, _ in match.pairs] == ["plain.tif"]
    for said in (match.unpaired_message(), match.left_out_message()):
        assert (
            "'Zelle.labels.tif' is named as an earlier napari-samtune named the annotations of "
            "'Zelle ä.tif': rename it 'Zelle_ä.labels.tif' (and its .prompts.json)"
        ) in said
        assert "rename it 'cells_10µm.labels.tif'" in said
        assert "layer's name" not in said  # no layer was renamed


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_names_of_any_script_give_the_same_file_bytes_under_any_locale(monkeypatch, encoding):
    """Under a Latin-1 locale (or C with Python's UTF-8 mode off) Python reads the file name
    中国.tif as mojibake (or surrogates): its labels were named 'ä_å_½' there (or 'image',
    as 日本's), which a UTF-8 machine paired with nothing."""
    import sys

    from napari_samtune.core.file_names import safe_stem

    def as_read_there(name: str) -> str:
        return name.encode("utf-8").decode(encoding, "surrogateescape")

    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: encoding)
    for name, stem in [("中国", "中国"), ("日本 1", "日本_1"), ("Zelle ä", "Zelle_ä")]:
        there = safe_stem(as_read_there(name))
        assert there.encode(encoding, "surrogateescape") == stem.encode("utf-8")
    written = safe_stem("日本")  # a layer named so in a script: on disk as from a file
    assert written.encode(encoding, "surrogateescape") == "日本".encode()
