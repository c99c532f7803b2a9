"""Training data: pairing files, up-front checks and validation splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_samtune.core import data as data_module
from napari_samtune.core.data import (
    ImageLabelPair,
    NoObjectsError,
    as_pairs,
    foreign_labels_message,
    load_pairs,
    namesakes_message,
    prepare_annotated,
    prepare_pair,
    prepare_pairs,
    read_match,
    split_planes,
)
from napari_samtune.core.data_checks import ChannelError
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.label_files import match_files, pair_files
from napari_samtune.core.synthetic import make_dataset, make_image
from napari_samtune.core.validation_split import split_validation


def _write(folder, name, array):
    folder.mkdir(exist_ok=True)
    tifffile.imwrite(folder / name, array)


def test_files_pair_by_name_from_folders_globs_and_lists(tiff_folders):
    images, labels = tiff_folders
    pairs = pair_files(images, labels)
    assert [(i.name, lab.name) for i, lab in pairs] == [
        (f"cell_{i}.tif", f"cell_{i}_labels.tif") for i in range(3)
    ]
    assert pair_files(str(images / "cell_*.tif"), labels) == pairs
    assert pair_files([images / "cell_1.tif"], [labels / "cell_1_labels.tif"]) == pairs[1:2]
    loaded = load_pairs(images, labels)
    expected = make_dataset(3, shape=(64, 80), seed=1)
    assert all(np.array_equal(p.labels, e[1]) for p, e in zip(loaded, expected, strict=True))
    assert loaded[0].name == "cell_0.tif / cell_0_labels.tif"


def test_two_saves_for_one_image_s_pixels_are_refused_naming_both(tmp_path):
    """A save diverted beside a file changed meanwhile (two napari windows): training took
    the first of the two and left the other's objects out, unsaid."""
    from napari_samtune.core.annotation_files import save_annotations
    from napari_samtune.core.label_files import image_fingerprint

    (image, labels), _ = make_dataset(2, (48, 64), seed=7)
    _write(tmp_path / "images", "img.tif", image)
    fingerprint = image_fingerprint(image)
    record = {"image_fingerprint": fingerprint, "objects": []}
    save_annotations(tmp_path / "annotations", "img", labels, record)
    save_annotations(tmp_path / "annotations", f"img-{fingerprint}", labels, record)
    with pytest.raises(ValueError, match="were all saved for the pixels of 'img.tif'") as err:
        load_pairs(tmp_path / "images", tmp_path / "annotations")
    assert "img.labels.tif" in str(err.value) and f"img-{fingerprint}.labels.tif" in str(err.value)
    assert "keep the one to train on" in str(err.value)


def test_each_image_pairs_with_the_autosave_of_its_pixels_among_namesakes(tmp_path):
    """Image_001.tif of two experiments, annotated in one autosave folder: the second one's
    annotations are Image_001-<fingerprint>.labels.tif, and each image trains on its own."""
    from napari_samtune.core.label_files import image_fingerprint

    (first, first_labels), (second, second_labels) = make_dataset(2, (48, 64), seed=7)
    annotations = tmp_path / "annotations"
    for folder, image in (("exp1", first), ("exp2", second)):
        _write(tmp_path / folder, "Image_001.tif", image)
        _write(tmp_path / folder, "Image_002.tif", image)
    for name, image, labels in (
        ("Image_001", first, first_labels),
        (f"Image_001-{image_fingerprint(second)}", second, second_labels),
        ("Image_002", None, second_labels),  # samtune segment's output: no record
    ):
        _write(annotations, f"{name}.labels.tif", labels)
        if image is not None:
            record = {
                "format": "napari-samtune-annotations",
                "image_fingerprint": image_fingerprint(image),
            }
            (annotations / f"{name}.prompts.json").write_text(json.dumps(record))
    for folder, labels in (("exp1", first_labels), ("exp2", second_labels)):
        pairs = load_pairs(tmp_path / folder, annotations)  # strict: every file pairs
        assert len(pairs) == 2
        np.testing.assert_array_equal(pairs[0].labels, labels)
    assert pairs[0].name == f"Image_001.tif / Image_001-{image_fingerprint(second)}.labels.tif"
    # the autosave of the other experiment's image is left out, and now said to be
    left: list[str] = []
    read_match(match_files(tmp_path / "exp2", annotations), namesakes_left=left)
    assert left == ["Image_001.labels.tif"]
    assert namesakes_message(left) == (
        "left out 1 label file(s) saved for other images of the same name (told apart by "
        "their pixels): Image_001.labels.tif"
    )
    # both experiments' images given together: each takes its own, and none is left out
    # (each was said to be left out, having been passed over by the other image)
    same_name = [tmp_path / folder / "Image_001.tif" for folder in ("exp1", "exp2")]
    both = match_files(same_name, annotations)
    left = []
    pairs = read_match(both, namesakes_left=left)
    assert len(pairs) == 2 and left == []

    (annotations / "Image_001.prompts.json").write_text(
        json.dumps({"image_fingerprint": "0123456789abcdef"})
    )  # neither autosave was saved for exp1's image now
    with pytest.raises(ValueError, match="pair with 'Image_001.tif' by name, but none was saved"):
        load_pairs(tmp_path / "exp1", annotations)
    foreign = []  # exp2's own autosave gone: its image pairs with exp1's by name, but told
    (annotations / f"Image_001-{image_fingerprint(second)}.labels.tif").rename(tmp_path / "x.tif")
    assert len(read_match(match_files(tmp_path / "exp2", annotations), foreign)) == 2
    assert foreign == ["Image_001.tif / Image_001.labels.tif"]
    assert "samtune segment) for other pixels than their image's" in foreign_labels_message(foreign)
    (tmp_path / "x.tif").rename(annotations / f"Image_001-{image_fingerprint(second)}.labels.tif")
    (annotations / "Image_001.labels.tif").unlink()  # only exp2's: not exp1's image's either
    with pytest.raises(ValueError, match=r"Image_001-[0-9a-f]{16}.labels.tif pair with 'Image"):
        load_pairs(tmp_path / "exp1", annotations)
    assert load_pairs(tmp_path / "exp2", annotations)[0].name.startswith(
        "Image_001.tif / Image_001-"
    )
    _write(annotations, "Image_001_mask.tif", first_labels)  # not an autosave: one per image
    with pytest.raises(ValueError, match="both pair with image name 'image_001'"):
        load_pairs(tmp_path / "exp1", annotations)


def _n_pieces(labels: np.ndarray) -> int:
    """The connected pieces of a plane's objects: what a plane of a stack trains on (objects
    of synthetic images can be cut in pieces by the ones drawn before them)."""
    from scipy import ndimage

    connected = ndimage.generate_binary_structure(2, 2)
    return sum(ndimage.label(labels == i, connected)[1] for i in np.unique(labels) if i)


def test_stack_files_give_one_pair_per_annotated_plane(tmp_path):
    """A z-stack annotated in the widget (its autosave is a labels stack) trains from files."""
    (image, labels), (image2, labels2) = make_dataset(2, shape=(48, 40), seed=3)
    stacks = {
        "gray": (np.stack([image, image2, image]), np.stack([labels, 0 * labels, labels2])),
        "rgb": (np.stack([np.dstack([image] * 3)] * 2), np.stack([0 * labels, labels])),
    }
    for name, (image_stack, labels_stack) in stacks.items():
        _write(tmp_path / "images", f"{name}.tif", image_stack)
        _write(tmp_path / "labels", f"{name}_labels.tif", labels_stack)
    pairs = load_pairs(tmp_path / "images", tmp_path / "labels")
    assert [p.name for p in pairs] == [
        "gray.tif / gray_labels.tif plane 0",
        "gray.tif / gray_labels.tif plane 2",
        "rgb.tif / rgb_labels.tif plane 1",
    ]
    assert np.array_equal(pairs[1].image, image) and np.array_equal(pairs[1].labels, labels2)
    assert pairs[2].image.shape == (48, 40, 3) and np.array_equal(pairs[2].labels, labels)
    assert [prepare_pair(p).labels.max() for p in pairs] == [
        _n_pieces(lab) for lab in (labels, labels2, labels)
    ]


def test_the_channel_choice_reaches_single_images_and_the_planes_of_stacks(tmp_path):
    """Two-channel files (a noise channel and the cells) train on the channel chosen."""
    (image, labels), (image2, labels2) = make_dataset(2, shape=(48, 40), seed=5)
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    _write(tmp_path / "flat", "a.tif", np.stack([noise, image]))  # (C, H, W)
    _write(tmp_path / "flat_labels", "a_labels.tif", labels)
    stack = np.stack([np.stack([noise, image], -1), np.stack([noise, image2], -1)])
    _write(tmp_path / "stack", "zc.tif", stack)  # (Z, H, W, C): 2 planes of 2 channels
    _write(tmp_path / "stack_labels", "zc_labels.tif", np.stack([labels, labels2]))
    for folder, message in [
        ("flat", "image of 'a.tif / a_labels.tif': .* channel axis is ambiguous"),
        ("stack", r"image of 'zc.tif / zc_labels.tif': .* \(2, 48, 40, 2\): 2 planes with a"),
    ]:
        with pytest.raises(ValueError, match=message):
            prepare_pairs(load_pairs(tmp_path / folder, tmp_path / f"{folder}_labels"))

    (flat,) = load_pairs(tmp_path / "flat", tmp_path / "flat_labels", 0, [1])
    assert np.array_equal(prepare_pair(flat).rgb, to_sam_rgb(image))
    for axis in (3, -1):
        planes = load_pairs(tmp_path / "stack", tmp_path / "stack_labels", axis, [1])
        assert [p.name for p in planes] == [f"zc.tif / zc_labels.tif plane {i}" for i in (0, 1)]
        assert [p.channel_axis for p in planes] == [2, 2]  # counted in the plane
        for pair, cells in zip(planes, [image, image2], strict=True):
            assert np.array_equal(prepare_pair(pair).rgb, to_sam_rgb(cells))
    with pytest.raises(ValueError, match="channel_axis=0 is the stack's axis of planes"):
        load_pairs(tmp_path / "stack", tmp_path / "stack_labels", 0, [1])


def test_stacks_with_their_channels_first_train_plane_by_plane(tmp_path):
    """(C, Z, H, W) files, as OME-TIFF often holds them: channel axis 0, or guessed from the
    labels' planes once channels are chosen; without a choice the error says which."""
    (image, labels), (image2, labels2) = make_dataset(2, shape=(48, 40), seed=8)
    noise = np.random.default_rng(1).integers(0, 256, image.shape, dtype=np.uint8)
    cells = np.stack([image, noise, image2])  # 3 planes; the middle one not annotated
    _write(tmp_path / "images", "czyx.tif", np.stack([np.flip(cells, 1), cells]))  # (2, 3, H, W)
    _write(tmp_path / "labels", "czyx_labels.tif", np.stack([labels, 0 * labels, labels2]))
    with pytest.raises(ValueError, match=r"\(2, 3, 48, 40\) and its labels .* 2 channels first, "):
        prepare_pairs(load_pairs(tmp_path / "images", tmp_path / "labels"))
    for axis in (0, -4, None):
        planes = load_pairs(tmp_path / "images", tmp_path / "labels", axis, [1])
        assert [p.name for p in planes] == [f"czyx.tif / czyx_labels.tif plane {i}" for i in (0, 2)]
        for pair, plane in zip(planes, [image, image2], strict=True):
            assert np.array_equal(prepare_pair(pair).rgb, to_sam_rgb(plane))


def test_a_stack_and_labels_of_other_plane_counts_are_named_as_such(tmp_path):
    """Not as an ambiguous channel axis, which they are not."""
    image, labels = make_image((32, 40), seed=9)
    _write(tmp_path / "images", "z5.tif", np.stack([image] * 5))
    _write(tmp_path / "labels", "z5_labels.tif", np.stack([labels] * 3))
    with pytest.raises(ValueError, match="'z5.tif / z5_labels.tif': the image stack has 5 planes "):
        prepare_pairs(load_pairs(tmp_path / "images", tmp_path / "labels"))
    _write(tmp_path / "labels", "z5_labels.tif", labels)  # one plane for a stack of 5
    with pytest.raises(ValueError, match=r"a stack of 5 planes needs a labels stack of as many"):
        prepare_pairs(load_pairs(tmp_path / "images", tmp_path / "labels"))


def test_channels_given_for_a_grayscale_stack_are_named_not_its_labels(tmp_path):
    """A (Z, H, W) stack with labels of as many planes has no channels to choose: the error
    says so, rather than asking for the (planes, H, W) labels it has."""
    image, labels = make_image((32, 40), seed=4)
    _write(tmp_path / "images", "z3.tif", np.stack([image] * 3))
    _write(tmp_path / "labels", "z3_labels.tif", np.stack([labels] * 3))
    no_channels = r"\(3, 32, 40\) like its labels: a stack of 3 grayscale planes, with no channels"
    for axis, channels in [(None, [1]), (0, [0]), (-1, [1])]:
        with pytest.raises(ChannelError, match=no_channels):
            prepare_pairs(load_pairs(tmp_path / "images", tmp_path / "labels", axis, channels))
    assert len(prepare_pairs(load_pairs(tmp_path / "images", tmp_path / "labels"))) == 3


def test_a_grayscale_stack_beside_multichannel_files_is_used_as_it_is(tmp_path):
    """A folder of (H, W, 3) images and a gray (Z, H, W) stack, --channels 1: refused with
    "give no --channel-axis or channels for it", which a command with one --channels for
    every file cannot do (2D gray files there were used as they are)."""
    image, labels = make_image((32, 40), seed=4)
    _write(tmp_path / "images", "rgb.tif", np.stack([image, image // 2, image], axis=-1))
    _write(tmp_path / "labels", "rgb_labels.tif", labels)
    _write(tmp_path / "images", "z3.tif", np.stack([image] * 3))
    _write(tmp_path / "labels", "z3_labels.tif", np.stack([labels] * 3))
    pairs = load_pairs(tmp_path / "images", tmp_path / "labels", channels=[1])
    assert [(p.name, p.channels) for p in pairs] == [
        ("rgb.tif / rgb_labels.tif", (1,)),
        *[(f"z3.tif / z3_labels.tif plane {i}", None) for i in range(3)],
    ]
    prepared = prepare_pairs(pairs)
    as_is, channel_1 = (prepare_pair(ImageLabelPair(i, labels)).rgb for i in (image, image // 2))
    np.testing.assert_array_equal(prepared[1].rgb, as_is)  # the plane, as it is
    np.testing.assert_array_equal(prepared[0].rgb, channel_1)


def test_a_stack_named_so_by_its_file_with_one_plane_of_labels_is_called_a_stack(tmp_path):
    """An ImageJ z-stack (axes ZYX) with 2D labels was "an image whose channel axis is
    ambiguous: pass channel_axis and channels", which would have scored a plane as a
    channel."""
    image, labels = make_image((32, 40), seed=4)
    (tmp_path / "images").mkdir()
    stack = np.stack([image] * 3)
    tifffile.imwrite(tmp_path / "images" / "z3.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    _write(tmp_path / "labels", "z3_labels.tif", labels)
    with pytest.raises(ValueError) as err:
        prepare_pairs(load_pairs(tmp_path / "images", tmp_path / "labels"))
    said = str(err.value)
    assert "the image is a stack of 3 planes (its file names its axes ZYX)" in said
    assert "labels are one plane (32, 40)" in said and "channel" not in said


def test_label_files_of_whole_floats_are_labels_and_other_floats_are_named(tmp_path):
    image, labels = make_image((32, 40), seed=6)
    with_fraction = labels.astype(np.float32)
    with_fraction[labels == labels.max()] = 0.5  # a probability map, say
    for name, saved in [("whole", labels.astype(np.float32)), ("fraction", with_fraction)]:
        _write(tmp_path / "images", f"{name}.tif", image)
        _write(tmp_path / "labels", f"{name}_labels.tif", saved)
    whole_nan = labels.astype(np.float64)
    whole_nan[0, 0] = np.nan
    _write(tmp_path / "images", "nan.tif", image)
    _write(tmp_path / "labels", "nan_labels.tif", whole_nan)
    fraction, nan, whole = load_pairs(tmp_path / "images", tmp_path / "labels")
    assert whole.labels.dtype == np.uint32 and np.array_equal(whole.labels, labels)
    assert np.array_equal(
        prepare_pair(whole).labels, prepare_pair(ImageLabelPair(image, labels)).labels
    )
    assert fraction.labels.dtype == np.float32 and nan.labels.dtype == np.float64
    with pytest.raises(TypeError, match="'fraction.tif / fraction_labels.tif'.*fractions: a prob"):
        prepare_pair(fraction)
    with pytest.raises(TypeError, match="dtype float64.*NaN or infinite values"):
        prepare_pair(nan)
    negative = ImageLabelPair(image, -labels.astype(np.float32), "negative.tif")
    with pytest.raises(TypeError, match="'negative.tif'.*values outside 0..16777216"):
        prepare_pair(negative)
    in_memory = ImageLabelPair(image, labels.astype(np.float32), "layer")  # not a file: told
    with pytest.raises(TypeError, match=r"'layer'.*astype\('uint32'\)"):
        prepare_pair(in_memory)


def test_what_is_not_a_stack_stays_one_pair_for_the_checks():
    image, labels = make_image((32, 32), seed=4)
    rgb = np.dstack([image] * 3)
    coloured_labels = np.dstack([labels] * 3).astype(np.uint8)  # (H, W, 3) labels: refused later
    assert len(split_planes(rgb, coloured_labels, "x")) == 1
    assert len(split_planes(image, np.stack([labels] * 2), "x")) == 1  # 2D image, 3D labels
    assert len(split_planes(np.stack([image] * 3), np.stack([labels] * 2), "x")) == 1  # 3 vs 2
    empty = split_planes(np.stack([image] * 2), np.zeros((2, 32, 32), np.uint8), "e.tif")
    assert [p.name for p in empty] == ["e.tif plane 0"]
    with pytest.raises(ValueError, match="'e.tif plane 0' contain no objects"):
        prepare_pair(empty[0])
    # a layer says whether it is RGB: (2, 32, 32, 3) as a 2-plane RGB stack or not
    assert len(split_planes(np.stack([rgb] * 2), np.stack([labels] * 2), "x", rgb=True)) == 2
    assert len(split_planes(np.stack([rgb] * 2), np.stack([labels] * 2), "x", rgb=False)) == 1


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (np.ones((32, 32), np.float32), TypeError, "dtype float32.*integer instance labels"),
        (np.ones((32, 32), bool), TypeError, "boolean.*scipy.ndimage.label"),
        (np.ones((32, 32, 3), np.uint8), ValueError, "RGB image.*2D instance label"),
        (np.ones((2, 32, 32), np.uint16), ValueError, r"shape \(2, 32, 32\).*2D.*image stack"),
        (np.ones((32, 31), np.uint16), ValueError, "32x32 pixels but its labels.*same pixels"),
        (np.zeros((32, 32), np.uint16), ValueError, "contain no objects.*annotate"),
        (-np.ones((32, 32), np.int32), ValueError, r"negative ids \(the lowest is -1\)"),
    ],
)
def test_bad_pairs_are_refused_with_the_name_and_the_fix(labels, error, message):
    pair = ImageLabelPair(np.zeros((32, 32), np.uint8), labels, name="plate3.tif")
    with pytest.raises(error, match=f"'plate3.tif'.*{message}|{message}"):
        prepare_pair(pair)
    with pytest.raises(error, match="plate3.tif"):
        prepare_pair(pair)


def test_bad_image_channels_name_the_pair():
    pair = ImageLabelPair(np.zeros((32, 32, 5), np.uint8), np.ones((32, 32), np.uint8), "x.tif", -1)
    with pytest.raises(ValueError, match="image of 'x.tif'.*5 channels"):
        prepare_pair(pair)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_an_image_without_a_finite_pixel_is_refused_for_training_naming_it(fill):
    """It normalised to a black image that training and evaluation took as it was."""
    image, labels = make_image((32, 40), seed=4)
    pair = ImageLabelPair(np.full(image.shape, fill, np.float32), labels, "export.tif")
    with pytest.raises(ValueError, match="image of 'export.tif' holds no finite pixel value"):
        prepare_pair(pair)
    some_nan = np.where(labels > 0, np.nan, image).astype(np.float32)  # one finite pixel will do
    assert prepare_pair(ImageLabelPair(some_nan, labels, "some.tif")).rgb.any()


def test_one_channel_may_be_an_int_and_other_choices_are_named_type_errors():
    image, labels = make_image((32, 40), seed=4)
    noise = np.zeros_like(image)
    (pair,) = split_planes(np.stack([noise, image]), labels, "c.tif", None, 0, 1)
    assert pair.channels == (1,)
    assert np.array_equal(prepare_pair(pair).rgb, to_sam_rgb(image))
    typed = ImageLabelPair(np.stack([noise, image]), labels, "t.tif", 0, "1")
    with pytest.raises(TypeError, match="image of 't.tif': channels='1' is not a channel"):
        prepare_pair(typed)


def test_in_memory_pairs_are_normalised_like_inference():
    image, labels = make_image((48, 40), seed=2, dtype=np.uint16)
    labels = labels * 7  # non-consecutive ids
    (prepared,) = prepare_pairs(as_pairs([(image, labels)]))
    assert np.array_equal(prepared.rgb, to_sam_rgb(image))
    assert prepared.labels.dtype == np.uint32
    assert set(np.unique(prepared.labels)) == set(range(int(prepared.labels.max()) + 1))
    assert prepared.object_areas.sum() == np.count_nonzero(labels)
    with pytest.raises(ValueError, match="non-empty list"):
        as_pairs([])
    with pytest.raises(TypeError, match=r"data\[0\] is an int; give an \(image, labels\) pair$"):
        as_pairs([3])


def test_in_memory_stacks_give_one_pair_per_annotated_plane_as_files_do():
    """A (Z, H, W) stack and its labels stack passed as arrays train as the same file would,
    not refused as an image of ambiguous channels."""
    (image, labels), (image2, labels2), _ = make_dataset(3, shape=(48, 40), seed=3)
    stack, labels_stack = np.stack([image, image2, image]), np.stack([labels, 0 * labels, labels2])
    pairs = as_pairs([(stack, labels_stack)])
    assert [p.name for p in pairs] == ["pair 0 plane 0", "pair 0 plane 2"]
    assert np.array_equal(pairs[1].image, image) and np.array_equal(pairs[1].labels, labels2)
    assert [prepare_pair(p).labels.max() for p in pairs] == [_n_pieces(labels), _n_pieces(labels2)]


def test_one_pair_not_in_a_list_is_told_how_to_pass_it():
    image, labels = make_image((32, 40), seed=2)
    for one in [(image, labels), [image, labels]]:
        with pytest.raises(TypeError, match=r"data\[0\] is a ndarray.*pass \[\(image, labels\)\]"):
            as_pairs(one)
    with pytest.raises(ValueError, match=r"to train on one pair, pass \[pair\]"):
        as_pairs(ImageLabelPair(image, labels))
    # given to a run, it stopped at "object of type 'ImageLabelPair' has no len()"
    from napari_samtune.core.run_data import prepare_run_data

    with pytest.raises(ValueError, match=r"training data: .*to train on one pair, pass \[pair\]"):
        prepare_run_data(ImageLabelPair(image, labels), "training")


def test_pairs_without_objects_are_left_out_and_other_problems_still_refused():
    (image, labels), (image2, labels2) = make_dataset(2, shape=(32, 40), seed=2)
    blank = np.zeros_like(labels)
    pairs = [
        ImageLabelPair(image, labels, "a.tif"),
        ImageLabelPair(image, blank, "empty.tif"),
        ImageLabelPair(image2, labels2, "b.tif"),
    ]
    prepared, left_out = prepare_annotated(pairs)
    assert [p.name for p in prepared] == ["a.tif", "b.tif"] and left_out == ("empty.tif",)
    assert np.array_equal(prepared[1].labels, prepare_pair(pairs[2]).labels)
    (only,), nothing = prepare_annotated(pairs[:1])
    assert only.name == "a.tif" and nothing == ()
    # only objects may be missing: an empty pair of the wrong kind is still refused
    with pytest.raises(TypeError, match="'empty.tif' have dtype float32"):
        prepare_annotated([*pairs, ImageLabelPair(image, blank.astype(np.float32), "empty.tif")])
    wrong_size = ImageLabelPair(image, np.zeros((32, 41), np.uint8), "empty.tif")
    with pytest.raises(ValueError, match="'empty.tif' is 32x40 pixels but its labels"):
        prepare_annotated([*pairs, wrong_size])
    # nothing left: one pair keeps its own message, several are counted and named
    with pytest.raises(NoObjectsError, match="'empty.tif' contain no objects"):
        prepare_annotated(pairs[1:2])
    many = [ImageLabelPair(image, blank, f"e{i}.tif") for i in range(5)]
    with pytest.raises(
        ValueError,
        match=r"none of the 5 validation pairs .*: e0.tif, e1.tif, "
        r"e2.tif and 2 more; annotate",
    ):
        prepare_annotated(many, "validation")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_relabelling_by_table_equals_relabelling_by_sorting(rng, dtype):
    """Ids become 1..N in their order, through a lookup table (4096 x 4096: 0.09 s instead
    of 2.6 s for np.unique on this VM); the result must be np.unique's."""

    def by_sorting(labels):
        ids, dense = np.unique(labels, return_inverse=True)
        return dense.reshape(labels.shape).astype(np.uint32) + (ids[0] != 0)

    labels = rng.integers(0, 40, size=(30, 41)).astype(dtype)
    sparse = labels.astype(np.int64) * (97 if np.iinfo(dtype).max > 4000 else 3)
    without_background = np.where(labels == 0, 5, labels).astype(dtype)
    for case in (labels, sparse.astype(dtype), without_background):
        relabelled = data_module._relabel(case)
        assert relabelled.dtype == np.uint32
        np.testing.assert_array_equal(relabelled, by_sorting(case))
    if np.iinfo(dtype).max > data_module.MAX_LOOKUP_ID:  # ids too large for a table
        huge = labels.astype(dtype) * dtype(data_module.MAX_LOOKUP_ID // 8)
        np.testing.assert_array_equal(data_module._relabel(huge), by_sorting(huge))


def test_validation_split_by_image_and_within_a_single_image():
    images = prepare_pairs(as_pairs(make_dataset(5, shape=(64, 64), seed=0)))
    train, val = split_validation(images, 0.2, seed=0)
    assert (len(train), len(val)) == (4, 1)
    assert {im.name for im in train}.isdisjoint({im.name for im in val})
    assert split_validation(images, 0.0, seed=0) == (images, [])
    (single,) = prepare_pairs(as_pairs(make_dataset(1, shape=(200, 120), seed=0)))
    (train_part,), (val_part,) = split_validation([single], 0.25, seed=0)
    assert train_part.labels.shape == (150, 120) and val_part.labels.shape == (50, 120)
    assert np.array_equal(val_part.rgb, single.rgb[150:])


def _stack(n_planes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = make_dataset(n_planes, shape=(48, 48), seed=seed)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_the_planes_of_one_stack_are_not_split_between_training_and_validation():
    """Plane 3 of a stack validated while its planes 2 and 4 trained: validation scored
    planes that look like the training ones."""
    stack = prepare_pairs(split_planes(*_stack(10, seed=0), "cells.tif"))
    train, val = split_validation(stack, 0.2, seed=0)
    assert [im.name for im in val] == ["cells.tif plane 8", "cells.tif plane 9"]  # a block
    assert [im.name for im in train] == [f"cells.tif plane {i}" for i in range(8)]
    for seed in range(5):  # several stacks: whole ones
        stacks = [split_planes(*_stack(4, seed=s), f"s{s}.tif") for s in range(5)]
        images = prepare_pairs([pair for planes in stacks for pair in planes])
        train, val = split_validation(images, 0.2, seed=seed)
        assert {im.group for im in train}.isdisjoint({im.group for im in val})
        assert len(val) == 4 and len(train) == 16


def test_a_large_stack_beside_single_images_is_not_all_held_out():
    stack = split_planes(*_stack(12, seed=0), "big.tif")
    images = prepare_pairs([*stack, *as_pairs(make_dataset(2, shape=(48, 48), seed=50))])
    for seed in range(6):
        train, val = split_validation(images, 0.2, seed=seed)
        assert len(val) <= 3 and all(im.group != "big.tif" for im in val)


def test_a_single_image_without_objects_in_the_held_out_part_is_refused():
    labels = np.zeros((100, 50), np.uint16)
    labels[10:30, 10:30] = 1
    (image,) = prepare_pairs([ImageLabelPair(np.zeros((100, 50), np.uint8), labels, "one.tif")])
    with pytest.raises(ValueError, match="'one.tif' is the only image.*rows 90..99.*no objects"):
        split_validation([image], 0.1, seed=0)


@pytest.mark.parametrize("length", [2, 3, 4, 5])
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_a_tiny_single_image_keeps_a_row_in_each_part_whatever_the_fraction(length, fraction):
    rgb = np.zeros((length, 1, 3), np.uint8)
    (image,) = prepare_pairs([ImageLabelPair(rgb[..., 0], np.ones((length, 1), np.uint16), "t")])
    (train,), (val,) = split_validation([image], fraction, seed=0)
    assert train.labels.shape[0] >= 1 and val.labels.shape[0] >= 1
    assert train.labels.shape[0] + val.labels.shape[0] == length


def test_a_single_one_pixel_image_cannot_be_split_and_says_what_to_do_instead():
    dot = np.ones((1, 1), np.uint8)
    (image,) = prepare_pairs([ImageLabelPair(dot * 0, dot, "dot")])
    with pytest.raises(ValueError, match="'dot' is the only image.*pass validation data or set"):
        split_validation([image], 0.2, seed=0)


def test_an_object_in_pieces_on_a_plane_of_3d_labels_trains_as_one_object_per_piece():
    """A U-shaped 3D cell cut by a plane into its two arms was one object: its box spanned
    both arms, and a click on one was taught to segment the other."""
    image = make_image((48, 48), seed=3)[0]
    plane = np.zeros((48, 48), np.uint16)
    plane[5:20, 5:15] = 4  # one 3D object, in two pieces on this plane
    plane[5:20, 30:40] = 4
    plane[30:40, 10:20] = 9
    plane[40:44, 20:24] = 9  # touches object 9's piece only diagonally at (39, 19)/(40, 20)
    planes = split_planes(np.stack([image, image]), np.stack([plane, plane]), "cells.tif")
    prepared = prepare_pair(planes[0])
    assert prepared.object_areas.size == 3  # the arms apart; the diagonal touch holds
    assert sorted(prepared.object_areas.tolist()) == [116, 150, 150]
    flat = prepare_pair(ImageLabelPair(image, plane, "flat.tif"))  # a 2D image: as drawn
    assert flat.object_areas.size == 2


def test_objects_the_cut_of_a_single_image_splits_are_not_validated():
    """Their part above the cut trained: 6 of a 128 px image's 8 held-out objects were such
    pieces, and scoring them flattered the model. Where all are cut, they stay."""
    labels = np.zeros((100, 40), np.uint16)
    labels[70:85, 5:15] = 1  # across the cut at row 80
    labels[88:98, 20:30] = 2  # below it, whole
    labels[10:20, 5:15] = 3  # above it
    rgb = np.zeros((100, 40), np.uint8)
    (image,) = prepare_pairs([ImageLabelPair(rgb, labels, "one.tif")])
    (train,), (val,) = split_validation([image], 0.2, seed=0)
    assert val.labels.shape == (20, 40) and val.object_areas.tolist() == [100]  # object 2
    assert train.object_areas.size == 2  # 3, and 1's part above the cut
    labels[88:98, 20:30] = 0  # only the cut object held out: scored as before
    (image,) = prepare_pairs([ImageLabelPair(rgb, labels, "one.tif")])
    (_,), (val,) = split_validation([image], 0.2, seed=0)
    assert val.object_areas.tolist() == [50]


def test_a_training_pair_s_warnings_name_its_file(tmp_path):
    """A folder's 4-channel images were warned about without a name."""
    import warnings

    rgba = np.random.default_rng(0).integers(0, 255, (48, 48, 4), np.uint8)
    labels = np.zeros((48, 48), np.uint16)
    labels[10:20, 10:20] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_pairs([ImageLabelPair(rgba, labels, "four.tif")])
    assert any(str(w.message).startswith("four.tif: image of shape") for w in caught)


def test_an_autosave_without_a_fingerprint_passed_over_is_not_called_another_image_s(tmp_path):
    """An image 'aux' was saved as aux.labels.tif (no fingerprint) by an earlier version,
    then as aux_.labels.tif: training said the first was "saved for other images of the
    same name (told apart by their pixels)", though nothing told it apart."""
    from napari_samtune.core.annotation_files import save_annotations
    from napari_samtune.core.label_files import image_fingerprint

    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    tifffile.imwrite(tmp_path / "aux.tif", image)
    labels = np.zeros((64, 64), np.uint16)
    labels[5:15, 5:15] = 1
    tifffile.imwrite(tmp_path / "aux.labels.tif", labels)  # an earlier version's: no record
    record = {"objects": [], "image_fingerprint": image_fingerprint(image)}
    save_annotations(tmp_path / "ann", "aux", labels, record)
    (tmp_path / "aux.labels.tif").rename(tmp_path / "ann" / "aux.labels.tif")
    left: list[str] = []
    (pair,) = read_match(match_files(tmp_path / "aux.tif", tmp_path / "ann"), namesakes_left=left)
    assert pair.name == "aux.tif / aux_.labels.tif"
    assert left == [
        "aux.labels.tif (saved without its image's fingerprint, perhaps by an earlier version: "
        "if it holds this image's annotations, go on with it in napari, 'Load annotations…')"
    ]
