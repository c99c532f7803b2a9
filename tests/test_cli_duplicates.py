"""``samtune train`` on an image given twice (the same pixels under two file names): the
copy is left out and both named in a warning; with other labels, refused naming both."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import napari_samtune.cli as cli
from napari_samtune.core.synthetic import make_dataset

FAST = [
    "--lr", "3e-3", "--min-samples", "2", "--iterative-prompts", "1",
    "--mixed-precision", "no", "--n-objects", "2", "--no-progress", "--epochs", "1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _subcommands(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("train",))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest single-threaded
    yield
    torch.set_num_threads(before)


def _argv(tmp_path, copy_labels) -> list[str]:
    """Three pairs s0..s2 and copy.tif, s0's image with ``copy_labels(s0's labels)``."""
    folder = tmp_path / "data"
    folder.mkdir()
    pairs = make_dataset(3, shape=(80, 96), seed=3)
    for i, (image, labels) in enumerate(pairs):
        tifffile.imwrite(folder / f"s{i}.tif", image)
        tifffile.imwrite(folder / f"s{i}_mask.tif", labels)
    tifffile.imwrite(folder / "copy.tif", pairs[0][0])
    tifffile.imwrite(folder / "copy_mask.tif", copy_labels(pairs[0][1]))
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", str(folder)]
    return [*argv, "--labels", str(folder), *FAST, "--out", str(tmp_path / "run")]


def test_an_image_given_twice_trains_once_and_both_files_are_named(tmp_path, capsys):
    assert cli.main(_argv(tmp_path, lambda labels: labels)) == 0
    out, err = capsys.readouterr()
    assert "2 training / 1 validation images" in out  # of 3 images, not 4
    assert "warning: left out 1 pair(s) that repeat another pair" in err
    assert "'s0.tif / s0_mask.tif' (same as 'copy.tif / copy_mask.tif')" in err


def test_an_image_given_twice_with_other_labels_is_refused_naming_both(tmp_path, capsys):
    def one_object_less(labels):
        return np.where(labels == labels.max(), 0, labels)

    assert cli.main(_argv(tmp_path, one_object_less)) == 2
    err = capsys.readouterr().err
    assert "'s0.tif / s0_mask.tif' and 'copy.tif / copy_mask.tif' are the same image" in err
    assert "remove the pair whose labels are wrong" in err
