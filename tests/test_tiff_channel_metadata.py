"""Channels named in a TIFF's metadata (ImageJ hyperstacks, OME-TIFF): an image with its
channels first was refused as ambiguous although its file says which axis holds them."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core.data import load_pairs
from napari_samtune.core.data_checks import check_channels
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.tiff_files import channel_axis_named, read_tiff_with_axes


@pytest.fixture(autouse=True)
def _segment_subcommand(monkeypatch):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("segment",))


@pytest.fixture
def channels():
    """Three different channels (C, H, W) of one sample image, and its labels."""
    image, labels = make_image((96, 112), seed=0)
    return np.stack([image, image // 2, 255 - image]), labels


def test_the_declared_channel_axis_is_axis_c(tmp_path, channels):
    pixels, _ = channels
    files = {
        "imagej_cyx": (pixels, {"imagej": True, "metadata": {"axes": "CYX"}}, 0),
        "imagej_zcyx": (np.stack([pixels] * 2), {"imagej": True, "metadata": {"axes": "ZCYX"}}, 1),
        "ome_cyx.ome": (pixels, {"metadata": {"axes": "CYX"}}, 0),
        "tifffile_yxc": (np.moveaxis(pixels[:2], 0, -1), {"metadata": {"axes": "YXC"}}, 2),
        # no C: tifffile saves any (3, H, W) array as planar RGB (axes SYX), a 3-plane stack too
        "plain_3": (pixels, {}, None),
        "imagej_zyx": (pixels, {"imagej": True, "metadata": {"axes": "ZYX"}}, None),
        "rgb": (np.moveaxis(pixels, 0, -1), {"photometric": "rgb"}, None),
        # ImageJ calls the planes of an RGB stack channels (axes CYXS): the samples are
        "imagej_rgb_stack": (
            np.stack([np.moveaxis(pixels, 0, -1)] * 2),
            {"imagej": True, "photometric": "rgb"},
            None,
        ),
        "plane": (pixels[0], {}, None),
    }
    for name, (array, options, axis) in files.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, array, **options)
        pixels, axes = read_tiff_with_axes(path)
        np.testing.assert_array_equal(pixels, tifffile.imread(path))  # read as before
        assert pixels.shape == array.shape
        assert channel_axis_named(axes, pixels.ndim) == axis, name
    assert channel_axis_named("CYX", 2) is None  # axes not of these pixels: none taken
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="cannot read .*damaged.tif.* as a TIFF image"):
        read_tiff_with_axes(damaged)


def test_training_pairs_take_the_declared_channels(tmp_path, channels):
    pixels, labels = channels
    tifffile.imwrite(tmp_path / "a.tif", pixels, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "a_labels.tif", labels)
    (pair,) = load_pairs(tmp_path / "a.tif", tmp_path / "a_labels.tif")
    assert pair.channel_axis == 0
    expected = to_sam_rgb(pixels, channel_axis=0)
    np.testing.assert_array_equal(
        to_sam_rgb(pair.image, pair.channel_axis, pair.channels), expected
    )
    # the same pixels without metadata: which axis holds channels is not known
    tifffile.imwrite(tmp_path / "b.tif", pixels[:2])
    tifffile.imwrite(tmp_path / "b_labels.tif", labels)
    (plain,) = load_pairs(tmp_path / "b.tif", tmp_path / "b_labels.tif")
    assert plain.channel_axis is None


def segment(checkpoint, image, out, *options) -> int:
    """``samtune segment`` with points (a random tiny model finds no object with --auto)."""
    stacked = "--stack" in options
    points = out.with_name("points.csv")
    points.write_text("x,y,z\n30,40,0\n80,60,2\n" if stacked else "x,y\n30,40\n80,60\n")
    args = ["segment", str(image), "--model", str(checkpoint), "-o", str(out), "--device", "cpu"]
    return main([*args, "--points", str(points), "--no-progress", *options])


def test_segment_takes_the_declared_channels(tmp_path, tiny_checkpoint, channels, capsys):
    pixels, _ = channels
    hyperstack, plain = tmp_path / "hyper.tif", tmp_path / "plain.tif"
    tifffile.imwrite(hyperstack, pixels, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(plain, pixels)
    assert segment(tiny_checkpoint, hyperstack, tmp_path / "h.tif") == 0, capsys.readouterr()
    assert segment(tiny_checkpoint, plain, tmp_path / "p.tif", "--channel-axis", "0") == 0
    labels = tifffile.imread(tmp_path / "h.tif")
    assert labels.max() > 0
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "p.tif"))
    assert segment(tiny_checkpoint, plain, tmp_path / "x.tif") == 2  # no metadata: ambiguous
    assert "channel axis is ambiguous" in capsys.readouterr().err

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([pixels[:2]] * 3), imagej=True, metadata={"axes": "ZCYX"})
    assert segment(tiny_checkpoint, stack, tmp_path / "s.tif", "--stack") == 2
    assert (
        f"channels on axis 1, as {stack}'s metadata says: image has 2 channels (0..1); pass "
        in (capsys.readouterr().err)
    )
    assert segment(tiny_checkpoint, stack, tmp_path / "s.tif", "--stack", "--channels", "1") == 0
    given = ("--stack", "--channels", "1", "--channel-axis", "1")
    assert segment(tiny_checkpoint, stack, tmp_path / "g.tif", *given) == 0
    labels = tifffile.imread(tmp_path / "s.tif")
    assert labels.shape == (3, 96, 112) and labels.max() > 0
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "g.tif"))
    assert segment(tiny_checkpoint, stack, tmp_path / "n.tif", "--channels", "1") == 2
    assert "metadata says: image has shape (3, 2, 96, 112)" in (err := capsys.readouterr().err)
    assert err.rstrip().endswith("pass --stack to segment each plane")


def test_a_stack_of_named_axes_whose_planes_differ_from_its_labels_says_so(tmp_path, channels):
    """A (Z=3, C=2) hyperstack with a labels stack of 2 planes was called "3 channels first,
    then 2 planes; pass channel_axis 0", and following that trained on z-plane 0's two
    channels as if they were planes, without a word."""
    pixels, labels = channels
    image = tmp_path / "zcyx.tif"
    tifffile.imwrite(image, np.stack([pixels[:2]] * 3), imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "zcyx_labels.tif", np.stack([labels] * 2))
    (pair,) = load_pairs(image, tmp_path / "zcyx_labels.tif")  # planes differ: not split
    with pytest.raises(ValueError, match="channel") as refused:
        check_channels(pair)  # as every command checks its pairs before a model is loaded
    said = str(refused.value)
    assert (
        "with its channels on axis 1 (given, or named by its file), is a stack of 3 planes" in said
    )
    assert "labels (2, 96, 112) have 2; give one labels plane per image plane" in said
    assert "channels first" not in said and "channel_axis 0" not in said
    with pytest.warns(UserWarning, match=r"channel axis 0 is used as given, but the file names "
                      r"axis 1 as its channels \(its axes are ZCYX\)"):  # fmt: skip
        pairs = load_pairs(image, tmp_path / "zcyx_labels.tif", channel_axis=0, channels=0)
    assert len(pairs) == 2  # the person's choice stands


def test_a_given_channel_axis_the_file_agrees_with_is_not_warned_about(tmp_path, channels):
    import warnings

    pixels, labels = channels
    tifffile.imwrite(tmp_path / "a.tif", pixels, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "a_labels.tif", labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for axis in (0, -3):
            (pair,) = load_pairs(tmp_path / "a.tif", tmp_path / "a_labels.tif", axis, 0)
            assert pair.channel_axis == axis


def test_segment_warns_where_the_channel_axis_given_is_not_the_files(
    tmp_path, tiny_checkpoint, channels, capsys
):
    pixels, _ = channels
    hyperstack = tmp_path / "hyper.tif"
    tifffile.imwrite(hyperstack, pixels, imagej=True, metadata={"axes": "CYX"})
    assert segment(tiny_checkpoint, hyperstack, tmp_path / "h.tif", "--channel-axis", "-1") == 2
    assert "channel axis -1 is used as given, but the file names axis 0" in capsys.readouterr().err


def test_segment_calls_a_stack_whose_file_names_its_planes_a_stack(
    tmp_path, tiny_checkpoint, channels, capsys
):
    """It was "its channel axis is ambiguous", with channel options to choose from."""
    pixels, _ = channels
    for axes, kind in (("ZYX", "z-stack"), ("TYX", "time series")):
        stack = tmp_path / f"{axes}.tif"
        tifffile.imwrite(stack, pixels, imagej=True, metadata={"axes": axes})
        assert segment(tiny_checkpoint, stack, tmp_path / "o.tif") == 2
        said = capsys.readouterr().err
        assert f"a {kind} of 3 planes as its file names its axes ({axes}); pass --stack" in said
        assert "ambiguous" not in said and "--channel-axis" not in said
    assert segment(tiny_checkpoint, stack, tmp_path / "o.tif", "--stack") == 0


def test_a_folder_of_files_naming_another_channel_axis_is_warned_about_once(tmp_path, channels):
    pixels, labels = channels
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", pixels, imagej=True,
                         metadata={"axes": "CYX"})  # fmt: skip
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", labels)
    with pytest.warns(UserWarning) as warned:
        pairs = load_pairs(tmp_path / "images", tmp_path / "labels", channel_axis=-1, channels=0)
    said = [str(w.message) for w in warned if "is used as given" in str(w.message)]
    assert len(said) == 1
    assert "a.tif (and 2 more files): channel axis -1 is used as given" in said[0]
    assert len(pairs) == 3


def test_a_stack_whose_file_calls_its_planes_channels_trains_as_a_stack(tmp_path):
    """``tifffile.imwrite(path, stack, imagej=True)`` names the first axis of any 3D array
    C: with labels of a plane for each, it was refused ("no channels to choose from; give
    no --channel-axis"), though nobody had given one."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    planes = [make_image((64, 64), seed=seed) for seed in range(3)]
    stack = np.stack([image for image, _ in planes])
    tifffile.imwrite(images / "s.tif", stack, imagej=True)
    tifffile.imwrite(labels / "s.tif", np.stack([label for _, label in planes]))
    assert read_tiff_with_axes(images / "s.tif")[1] == "CYX"
    with pytest.warns(UserWarning, match="names its first axis C .* read as a stack of planes"):
        pairs = load_pairs(images, labels)
    assert len(pairs) == 3 and all(pair.image.shape == (64, 64) for pair in pairs)
    np.testing.assert_array_equal(pairs[1].image, stack[1])


def test_segment_stack_reads_a_file_calling_its_planes_channels_as_planes(
    tmp_path, tiny_checkpoint, channels, capsys
):
    """tifffile.imwrite(..., imagej=True) names any 3D array CYX: training read it as a
    stack, while segment --stack refused it, asking for a channel axis it does not have."""
    pixels, _ = channels
    stack, named = tmp_path / "ij.tif", tmp_path / "zyx.tif"
    tifffile.imwrite(stack, pixels, imagej=True)
    tifffile.imwrite(named, pixels, imagej=True, metadata={"axes": "ZYX"})
    assert read_tiff_with_axes(stack)[1] == "CYX"
    assert segment(tiny_checkpoint, stack, tmp_path / "a.tif", "--stack") == 0
    assert "ij.tif: the file names its first axis C (channels); with --stack it is read as " in (
        capsys.readouterr().err
    )
    assert segment(tiny_checkpoint, named, tmp_path / "b.tif", "--stack") == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif")
    )
