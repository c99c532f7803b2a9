"""An empty path on the command line (``-o "$OUT"`` with ``OUT`` unset) is refused: Python
reads ``Path('')`` as the current folder, so it was read from or written into unsaid."""

from __future__ import annotations

from pathlib import Path

import pytest
import tifffile

from napari_samtune.cli import main
from napari_samtune.core.checkpoints import check_output_folder
from napari_samtune.core.file_lists import expand_paths
from napari_samtune.core.synthetic import make_image


@pytest.fixture
def in_a_folder_of_pairs(tmp_path, monkeypatch):
    """The current folder holds an image and its labels (a.tif, a_labels.tif)."""
    image, labels = make_image((64, 64), seed=0)
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_labels.tif", labels)
    (tmp_path / "p.csv").write_text("x,y\n30,30\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse refuses an argument's value this way
        return int(stop.code)


EMPTY = "'' is an empty path"


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "a.tif", "--model", "nano", "--points", "p.csv", "-o", ""],
        ["segment", "a.tif", "--model", "nano", "--auto", "-o", ""],
        ["segment", "", "--model", "nano", "--auto", "-o", "out/"],
        ["segment", "a.tif", "--model", "nano", "--points", "", "-o", "out.tif"],
        ["train", "--model", "nano", "--images", "a.tif", "--labels", "a_labels.tif", "--out", ""],
        ["train", "--model", "nano", "--images", "", "--labels", "a_labels.tif", "--out", "run"],
        ["evaluate", "--model", "nano", "--images", "a.tif", "--labels", "", "--out", "ev"],
        [
            "evaluate",
            "--model",
            "nano",
            "--images",
            "a.tif",
            "--labels",
            "a_labels.tif",
            "--out",
            "",
        ],
        ["export", "run", "-o", ""],
    ],
)
def test_an_empty_path_is_refused_and_nothing_is_written(in_a_folder_of_pairs, argv, capsys):
    before = sorted(in_a_folder_of_pairs.iterdir())
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert EMPTY in err, err
    assert "Traceback" not in err
    assert sorted(in_a_folder_of_pairs.iterdir()) == before


TRAIN = ["train", "--images", "a.tif", "--labels", "a_labels.tif", "--out", "run"]
EVALUATE = ["evaluate", "--images", "a.tif", "--labels", "a_labels.tif", "--out", "ev"]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        # --resume '' was read as no --resume: with --model, a new run started
        ([*TRAIN, "--model", "nano", "--resume", ""], "--resume"),
        ([*TRAIN, "--resume", ""], "--resume"),
        ([*TRAIN, "--model", "nano", "--val-images", "", "--val-labels", "a.tif"], "--val-images"),
        ([*TRAIN, "--model", "nano", "--val-images", "a.tif", "--val-labels", ""], "--val-labels"),
        (["train", "--model", "nano", "--images", "a.tif", "", "--labels", "a.tif"], "--images"),
        ([*EVALUATE[:3], "", "--model", "nano"], "--images"),
        (["export", "", "-o", "model.pth"], "checkpoint"),
    ],
)
def test_an_empty_path_names_its_option(in_a_folder_of_pairs, argv, option, capsys):
    before = sorted(in_a_folder_of_pairs.iterdir())
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {EMPTY}" in err, err
    assert sorted(in_a_folder_of_pairs.iterdir()) == before


@pytest.mark.parametrize(
    "argv",
    [
        # '' was read as no --model (train: ignored with --resume), or as the current folder
        [*TRAIN, "--model", ""],
        [*TRAIN, "--model", "", "--resume", "run"],
        [*EVALUATE, "--model", ""],
        ["segment", "a.tif", "--model", "", "--points", "p.csv", "-o", "out.tif"],
        ["demo", "--model", "", "--out", "demo"],
    ],
)
def test_an_empty_model_is_refused(in_a_folder_of_pairs, argv, capsys):
    before = sorted(in_a_folder_of_pairs.iterdir())
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "argument --model: '' is empty; give a model name" in err, err
    assert sorted(in_a_folder_of_pairs.iterdir()) == before


def test_the_core_refuses_an_empty_output_folder_or_input_path(in_a_folder_of_pairs):
    with pytest.raises(ValueError, match=r"^out_dir '' is an empty path; give a folder"):
        check_output_folder("", "out_dir")
    with pytest.raises(ValueError, match=r"^images '' is an empty path"):
        expand_paths(["", "a.tif"], "images")
    # '.' says the current folder on purpose
    assert check_output_folder(".", "out_dir") == Path(".")
    assert expand_paths(".", "images") == [Path("a.tif"), Path("a_labels.tif")]
