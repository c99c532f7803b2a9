"""``samtune segment`` on files from real acquisitions: multi-position OME-TIFFs, hyperstacks
of time and z, stacks saved planes last, label-like names, folders copied from a Mac,
prompt files saved in another encoding."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import tifffile

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.tiff_files import read_tiff

AUTO = ["--auto", "--points-per-side", "4", "--pred-iou-thresh", "-1", "--no-progress"]


@pytest.fixture(autouse=True)
def _segment_subcommand(monkeypatch):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("segment",))


def segment(tiny_checkpoint, images, out, *options: str) -> int:
    return main(
        ["segment", *map(str, images), "--model", str(tiny_checkpoint), "-o", str(out)]
        + ["--device", "cpu", *options]
    )


def _plane(seed: int, shape=(64, 80)) -> np.ndarray:
    return make_image(shape, seed=seed)[0]


def test_a_multi_position_ome_tiff_is_refused_not_cut_to_its_first_position(
    tmp_path, tiny_checkpoint, capsys
):
    """Only the first series was read: labels of position 0 written, exit 0, positions 1 and
    2 dropped without a word (and --stack called the file a single plane)."""
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for seed in range(3):
            tif.write(_plane(seed), metadata={"axes": "YX"})
    for options in ([], ["--stack"]):
        assert segment(tiny_checkpoint, [path], tmp_path / "o.tif", *AUTO, *options) == 2
        err = capsys.readouterr().err
        assert "holds 3 images of their own (series: 64x80, 64x80, 64x80)" in err
        assert "save each as its own file" in err
    assert not (tmp_path / "o.tif").exists()
    with pytest.raises(ValueError, match="holds 3 images of their own"):
        read_tiff(path)  # training and evaluation read files alike


def test_a_hyperstack_of_time_and_z_is_refused_with_what_to_do(tmp_path, tiny_checkpoint, capsys):
    """TZCYX with --stack said "pass --stack" (given); TZYX was told to pass --channel-axis 1,
    which then segmented only the first z plane of each time point, exit 0."""
    tzyx = np.stack([np.stack([_plane(t * 3 + z) for z in range(3)]) for t in range(2)])
    for axes, data in (("TZYX", tzyx), ("TZCYX", np.stack([tzyx, tzyx], axis=2))):
        path = tmp_path / f"{axes}.tif"
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
        assert segment(tiny_checkpoint, [path], tmp_path / "o.tif", *AUTO, "--stack") == 2
        err = capsys.readouterr().err
        assert f"has axes {axes}" in err and "planes along T and Z" in err
        assert "save each T (e.g. each time point) as its own file" in err
        assert "pass --stack" not in err and "--channel-axis" not in err
    assert not (tmp_path / "o.tif").exists()


def test_a_stack_saved_planes_last_is_refused_not_cut_into_slivers(
    tmp_path, tiny_checkpoint, capsys
):
    """(H, W, 6) with --stack was segmented as 64 planes 6 pixels wide, exit 0."""
    path = tmp_path / "planes_last.tif"
    tifffile.imwrite(path, np.stack([_plane(seed) for seed in range(6)], axis=-1))
    assert segment(tiny_checkpoint, [path], tmp_path / "o.tif", *AUTO, "--stack") == 2
    err = capsys.readouterr().err
    assert "its planes would be 80x6 pixels, so its 6 planes are probably on the last" in err
    assert "numpy.moveaxis(image, -1, 0)" in err and not (tmp_path / "o.tif").exists()


def test_a_stack_of_thin_planes_is_still_a_stack_where_few_planes(tmp_path, tiny_checkpoint):
    """The planes-last refusal is for stacks whose last axis is the thin one: 3 planes of
    64 x 12 pixels are segmented."""
    path = tmp_path / "narrow.tif"
    tifffile.imwrite(path, np.stack([_plane(seed, (64, 12)) for seed in range(3)]))
    assert segment(tiny_checkpoint, [path], tmp_path / "o.tif", *AUTO, "--stack") == 0
    assert tifffile.imread(tmp_path / "o.tif").shape == (3, 64, 12)


def test_an_image_named_like_labels_is_segmented_when_named(tmp_path, tiny_checkpoint, capsys):
    """``nuclei_seg.tif`` given by name was left out as "named as labels", exit 0, nothing
    written; from a folder it is still left out (earlier outputs look like that)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("nuclei_seg.tif", "cells.tif"):
        tifffile.imwrite(folder / name, _plane(1))
    named = [folder / "nuclei_seg.tif", folder / "cells.tif"]
    assert segment(tiny_checkpoint, named, tmp_path / "out", *AUTO) == 0
    assert (tmp_path / "out" / "nuclei_seg.labels.tif").is_file()
    assert "leaving out" not in capsys.readouterr().out
    assert segment(tiny_checkpoint, [folder], tmp_path / "out2", *AUTO) == 0
    out = capsys.readouterr().out
    assert "leaving out 1 file(s) named as labels, e.g. nuclei_seg.tif" in out
    assert "name an image to segment it all the same" in out
    assert not (tmp_path / "out2" / "nuclei_seg.labels.tif").exists()


def test_a_folder_copied_from_a_mac_is_segmented(tmp_path, tiny_checkpoint, capsys):
    """macOS writes ``._cell0.tif`` beside each file on other disks: the folder was refused
    as two images of one name."""
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "cell0.tif", _plane(1))
    (folder / "._cell0.tif").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 4000)  # AppleDouble
    (folder / "dir.tif").mkdir()  # a folder named like an image: not one
    assert segment(tiny_checkpoint, [folder], tmp_path / "out", *AUTO) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["cell0.labels.tif"]
    assert "1 of 1 images segmented" in capsys.readouterr().out


def test_a_prompt_file_not_in_utf8_is_named_with_the_fix(tmp_path, tiny_checkpoint, capsys):
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, _plane(1))
    points = tmp_path / "points.csv"
    points.write_bytes("x,y,note\n10,12,5 µm\n".encode("cp1252"))
    assert segment(tiny_checkpoint, [image], tmp_path / "o.tif", "--points", str(points)) == 2
    err = capsys.readouterr().err
    assert f"prompt file {str(points)!r} is not UTF-8 text" in err
    assert "saved as UTF-8" in err and "codec" not in err


def test_the_channels_hint_gives_what_the_option_takes(tmp_path, tiny_checkpoint, capsys):
    """It said "pass --channels [i]", which the option refuses."""
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(path, np.stack([_plane(1), _plane(2)]), metadata={"axes": "CYX"})
    assert segment(tiny_checkpoint, [path], tmp_path / "o.tif", *AUTO) == 2
    err = capsys.readouterr().err
    assert "pass --channels 0 to use one of them (here the first)" in err
    assert "[i]" not in err
    assert segment(tiny_checkpoint, [path], tmp_path / "o.tif", *AUTO, "--channels", "0") == 0


def test_a_prompt_file_without_a_header_row_is_told_so(tmp_path, tiny_checkpoint, capsys):
    """It said "column(s) ['10'] appear more than once in the header"."""
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, _plane(1))
    points = tmp_path / "points.csv"
    points.write_text("10,10\n20,20\n")
    assert segment(tiny_checkpoint, [image], tmp_path / "o.tif", "--points", str(points)) == 2
    err = capsys.readouterr().err
    assert "its first line 10,10 holds numbers, not column names" in err
    assert "add one as its first line, e.g. x,y" in err and "more than once" not in err


def test_quoted_home_paths_are_read_from_the_home_folder(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    """'~/x' (quoted, so the shell left it) was expanded for -o and --model, but an image or
    prompt file so named "does not exist"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    tifffile.imwrite(tmp_path / "a.tif", _plane(0))
    (tmp_path / "points.csv").write_text("x,y\n30,30\n")
    image, points = "~/a.tif", "~/points.csv"
    assert segment(tiny_checkpoint, [image], "~/a_labels.tif", "--points", points) == 0
    assert tifffile.imread(tmp_path / "a_labels.tif").shape == (64, 80)
    assert segment(tiny_checkpoint, ["~/*.tif"], "~/out/", *AUTO) == 0  # a glob too
    assert (tmp_path / "out" / "a.labels.tif").is_file()


def test_a_prompt_file_from_a_pipe_is_read(tmp_path, tiny_checkpoint):
    """``--points <(...)`` (a pipe, /dev/fd/63) "does not exist"."""
    tifffile.imwrite(tmp_path / "a.tif", _plane(0))
    fifo = tmp_path / "points.pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("x,y\n30,30\n",))
    writer.start()
    try:
        code = segment(
            tiny_checkpoint, [tmp_path / "a.tif"], tmp_path / "o.tif", "--points", str(fifo)
        )
    finally:
        if writer.is_alive():  # not read: the writer waits for a reader
            fifo.read_text()
        writer.join()
    assert code == 0
    assert tifffile.imread(tmp_path / "o.tif").max() >= 1


def test_an_image_that_is_not_a_regular_file_is_named_so(tmp_path, tiny_checkpoint, capsys):
    assert segment(tiny_checkpoint, ["/dev/null"], tmp_path / "o.tif", *AUTO) == 2
    err = capsys.readouterr().err
    assert "image '/dev/null' is not a regular file (a pipe or a device)" in err
    assert "does not exist" not in err
