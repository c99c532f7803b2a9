"""``samtune segment --auto`` over several images: stopped by Ctrl+C or SIGTERM, and given
nothing but label files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core.synthetic import make_image

AUTO = ["--auto", "--points-per-side", "4", "--pred-iou-thresh", "-1", "--no-progress"]

# Runs samtune segment, sending itself ``signal`` as the second image is segmented.
SIGNALLED_AT_THE_SECOND_IMAGE = """
import os, signal, sys
import napari_samtune.cli.segment_batch as segment
real, calls = segment.segment_planes, []
def segment_planes(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return real(*args, **kwargs)
segment.segment_planes = segment_planes
from napari_samtune.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _images(folder, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        tifffile.imwrite(folder / f"cell_{i}.tif", make_image((64, 80), seed=i)[0])


@pytest.mark.parametrize(
    ("name", "code", "said"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_a_stopped_batch_says_how_far_it_got_and_that_the_same_command_goes_on(
    tmp_path, tiny_checkpoint, name, code, said
):
    # Ctrl+C said only "samtune segment: interrupted"; SIGTERM (a batch job's time limit)
    # killed the process without a word.
    _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "-o", str(out)]
    stopped = subprocess.run(
        [sys.executable, "-c", SIGNALLED_AT_THE_SECOND_IMAGE, name, *argv, *AUTO],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert stopped.returncode == code, stopped.stderr
    assert (
        f"samtune segment: {said}; 1 of 3 images segmented into {out}; the same command "
        "segments the rest (images whose labels are there are skipped)"
    ) in stopped.stderr
    assert sorted(p.name for p in out.glob("*.tif")) == ["cell_0.labels.tif"]


def test_a_stopped_batch_with_overwrite_names_the_images_not_reached(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """With --overwrite, "the same command segments the rest (images whose labels are there
    are skipped)" was wrong both ways: the same command redid every image, and without
    --overwrite the images not reached kept their earlier labels, unsaid."""
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("segment",))
    _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "-o", str(out)]
    assert main([*argv, *AUTO]) == 0
    earlier = (out / "cell_2.labels.tif").stat().st_mtime_ns
    stopped = subprocess.run(
        [sys.executable, "-c", SIGNALLED_AT_THE_SECOND_IMAGE, "SIGTERM", *argv, *AUTO]
        + ["--overwrite"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert stopped.returncode == 143, stopped.stderr
    assert "skipped" not in stopped.stderr
    rest = [tmp_path / "in" / f"cell_{i}.tif" for i in (1, 2)]
    assert (
        f"samtune segment: terminated; 1 of 3 images segmented into {out}; the 2 not segmented "
        "keep any labels they had there before, and the same command (--overwrite) would "
        "segment every image again; to segment just those, give only them, with --overwrite "
        f"as before: {rest[0]} {rest[1]}"
    ) in stopped.stderr
    assert (out / "cell_2.labels.tif").stat().st_mtime_ns == earlier  # the earlier labels


def test_a_folder_of_label_files_only_is_an_error_not_a_success(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    # The labels folder given by mistake printed "leaving out 1 file(s) named as labels"
    # and exited 0, having segmented nothing.
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("segment",))
    folder = tmp_path / "labels"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"cell_{i}_labels.tif", make_image((64, 80), seed=i)[1])
    argv = ["segment", str(folder), "--model", str(tiny_checkpoint), "-o", str(tmp_path / "o")]
    assert main([*argv, *AUTO]) == 2
    err = capsys.readouterr().err
    assert "all 2 TIFF file(s) given are named as labels (e.g. cell_0_labels.tif)" in err
    assert "give the images' folder, or name an image file to segment it all the same" in err
    assert not (tmp_path / "o").exists()


# Runs samtune segment, sending itself SIGTERM while its model loads (a download, say).
TERMINATED_WHILE_THE_MODEL_LOADS = """
import os, signal, sys
import napari_samtune.core.models as models
def load_model(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM went unhandled")
models.load_model = load_model
from napari_samtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_the_model_loads_is_said(tmp_path, tiny_checkpoint):
    """SIGTERM while the model was downloaded ended the command without a word (the
    download's Ctrl+C says what it kept); only the images' segmenting was covered."""
    _images(tmp_path / "in", 1)
    argv = ["segment", str(tmp_path / "in"), "--model", "nano", "-o", str(tmp_path / "out")]
    stopped = subprocess.run(
        [sys.executable, "-c", TERMINATED_WHILE_THE_MODEL_LOADS, *argv, *AUTO],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.strip().endswith("samtune segment: terminated"), stopped.stderr


def test_a_stopped_batch_with_many_images_left_lists_them_in_a_file(tmp_path, monkeypatch):
    """Past 20 images the note named 20 and "...", and still said to give "only them"."""
    from argparse import Namespace
    from pathlib import Path

    from napari_samtune.cli.segment_batch import MAX_NAMED, how_to_go_on

    todo = [Path("in") / f"cell {i}.tif" for i in range(MAX_NAMED + 5)]  # as given: relative
    monkeypatch.chdir(tmp_path)
    note = how_to_go_on(Namespace(overwrite=True), todo, todo[:2], tmp_path)
    listed = tmp_path / "not-segmented.txt"
    assert f"the {MAX_NAMED + 3} not segmented keep any labels they had there before" in note
    assert note.endswith(f"give them as @{listed} (a file listing them, one per line)")
    whole = [tmp_path / f for f in todo[2:]]  # whole paths: the list is read from anywhere
    assert listed.read_text(encoding="utf-8").splitlines() == [str(f) for f in whole]
    from napari_samtune.cli import build_parser  # the command takes them as said
    from napari_samtune.cli.segment import _listed_images

    with listed.open("a", encoding="utf-8") as file:
        file.write("\n")  # a blank last line, as editors leave one
    argv = ["segment", f"@{listed}", "--model", "nano", "--auto", "-o", str(tmp_path)]
    given = build_parser().parse_args(argv).image
    assert _listed_images(given) == (whole, [listed])


def test_the_list_of_a_stopped_batch_is_crossed_off_as_its_images_are_segmented(tmp_path):
    """Given back as @FILE and all segmented, not-segmented.txt stayed, naming them as not
    segmented (and samtune evaluate of the folder left it out by name)."""
    from pathlib import Path

    from napari_samtune.cli.segment_batch import cross_off

    images = [tmp_path / f"cell_{i}.tif" for i in range(3)]
    listed = tmp_path / "not-segmented.txt"
    listed.write_text("".join(f"{f}\n" for f in images) + "\n", encoding="utf-8")
    cross_off(listed, [Path(images[0])])
    assert listed.read_text(encoding="utf-8").splitlines() == [str(f) for f in images[1:]]
    cross_off(listed, images[1:])
    assert not listed.exists()
    cross_off(listed, images)  # none there: nothing to do


def test_a_batch_given_its_list_back_deletes_it_once_done(tmp_path, tiny_checkpoint, capsys):
    from napari_samtune.cli import main

    _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    listed = out / "not-segmented.txt"
    listed.write_text("".join(f"{f}\n" for f in sorted((tmp_path / "in").iterdir())))
    argv = ["segment", f"@{listed}", "--model", str(tiny_checkpoint), "-o", str(out), *AUTO]
    assert main([*argv, "--overwrite"]) == 0
    assert not listed.exists() and len(list(out.glob("*.labels.tif"))) == 2
    assert f"{listed}: deleted: every image listed is segmented" in capsys.readouterr().out


def test_a_batch_given_its_list_back_and_stopped_again_crosses_off_what_it_did(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    """Stopped a second time, the list kept naming the images that run had segmented;
    given back later with --overwrite, it would redo them (over corrections made since)."""
    import napari_samtune.cli.segment_batch as segment

    _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    images = sorted((tmp_path / "in").iterdir())
    listed = out / "not-segmented.txt"
    listed.write_text("".join(f"{f}\n" for f in images))
    real, calls = segment.segment_planes, []

    def stopped_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(segment, "segment_planes", stopped_at_the_second)
    argv = ["segment", f"@{listed}", "--model", str(tiny_checkpoint), "-o", str(out), *AUTO]
    assert main([*argv, "--overwrite"]) == 130
    assert listed.read_text(encoding="utf-8").splitlines() == [str(f) for f in images[1:]]
    assert "1 of 3 images segmented" in capsys.readouterr().err


def test_only_the_images_are_read_from_a_list(tmp_path, monkeypatch, capsys):
    """argparse's @ read every argument from files: --boxes @b.csv looked for b.csv, a
    listed --overwrite replaced labels, and a binary file after @ was a traceback."""
    from argparse import Namespace

    from napari_samtune.cli.segment_batch import how_to_go_on

    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "in", 1)
    (tmp_path / "list.txt").write_text("in/cell_0.tif\n--overwrite\n", encoding="utf-8")
    argv = ["segment", "@list.txt", "--model", "nano", "--auto", "-o", "out/"]
    assert main(argv) == 2  # the line '--overwrite' is a path, which does not exist
    assert "--overwrite" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "b.tif", np.full((8, 8), 200, np.uint8))  # @ before an image
    assert main(["segment", "@b.tif", "--model", "nano", "--auto", "-o", "out/"]) == 2
    said = capsys.readouterr().err
    assert "is no list of images" in said and "is given as ./@b.tif" in said
    listed = tmp_path / "out" / "not-segmented.txt"  # given back: the same command goes on
    note = how_to_go_on(Namespace(overwrite=True, lists=[listed]), [], [], tmp_path / "out")
    assert note.startswith("the same command segments the rest (") and "lists them now" in note
