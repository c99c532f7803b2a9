"""``samtune evaluate`` given the same image or the same weights twice, and weights that
cannot load, found before the first model runs."""

from __future__ import annotations

import json
import shutil

import tifffile
import torch

import napari_samtune.cli as cli
from napari_samtune.core.model_lookup import get_model_spec

FAST = ["--clicks", "0", "--max-objects", "2", "--points-per-side", "4", "--no-progress"]


def _pairs_scored(out) -> list[str]:
    return json.loads((out / "evaluation.json").read_text())["pairs"]


def test_an_image_given_twice_is_scored_once_and_said(
    tmp_path, annotated_folder, tiny_checkpoint, capsys
):
    """A folder and one of its files: the repeat was scored again, so its objects weighed
    double in every mean, unsaid (training leaves a repeat out and names it)."""
    images, labels = annotated_folder
    argv = ["evaluate", "--images", str(images), str(images / "img0.tif")]
    argv += ["--labels", str(labels), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, *FAST]) == 0
    assert _pairs_scored(tmp_path / "o") == [
        "img0.tif / img0_labels.tif",
        "img1.tif / img1_labels.tif",
    ]
    err = capsys.readouterr().err
    assert "evaluation data: left out 1 pair(s) that repeat another pair" in err
    assert "so each image is scored once" in err


def test_an_image_given_twice_with_other_labels_is_refused(
    tmp_path, annotated_folder, tiny_checkpoint, capsys
):
    images, labels = annotated_folder
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "img0.tif", other / "again.tif")
    tifffile.imwrite(
        other / "again_labels.tif", (tifffile.imread(labels / "img0_labels.tif") > 0) * 1
    )
    argv = ["evaluate", "--images", str(images), str(other / "again.tif"), "--labels"]
    argv += [str(labels), str(other / "again_labels.tif"), "--model", str(tiny_checkpoint)]
    assert cli.main([*argv, "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert (
        "evaluation data: 'again.tif / again_labels.tif' and 'img0.tif / img0_labels.tif' are "
        in err
    )
    assert "the same image with different labels" in err
    assert not (tmp_path / "o").exists()


def test_a_copy_of_a_built_in_model_is_not_evaluated_again(tmp_path, annotated_folder, capsys):
    """A built-in's id is its published file hash, a file's the digest of its weights, so a
    copy of nano was evaluated a second time for a second row of the same scores."""
    images, labels = annotated_folder
    copy = shutil.copy(get_model_spec("nano").local_path(), tmp_path / "copy.pth")
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", "nano"]
    argv += ["--model", str(copy), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, *FAST]) == 0
    err = capsys.readouterr().err
    assert f"--model {copy} holds the same weights as nano, evaluated already: left out" in err
    assert "evaluating copy" not in err


def test_weights_that_do_not_fit_are_refused_before_the_first_model_runs(
    tmp_path, annotated_folder, capsys
):
    """A file whose architecture could be inferred but whose weights miss a key passed the
    check made before evaluating, and failed after the models before it had run."""
    images, labels = annotated_folder
    state = torch.load(get_model_spec("nano").local_path(), weights_only=True)
    del state[next(key for key in state if key.startswith("mask_decoder."))]
    damaged = tmp_path / "damaged.pth"
    torch.save(state, damaged)
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", "nano"]
    argv += ["--model", str(damaged), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, *FAST]) == 2
    err = capsys.readouterr().err
    assert f"--model {damaged}: " in err and "does not fit architecture 'nano'" in err
    assert "nothing was evaluated" in err and "evaluating nano" not in err
    assert not (tmp_path / "o").exists()
