"""Images and labels swapped (``--images labels/ --labels images/`` with the same file names,
which pair by name): the intensities trained as instance labels, each grey value an object,
and a useless model was registered without a word."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_samtune.cli as cli
from napari_samtune.core.data import ImageLabelPair
from napari_samtune.core.run_data import IMAGE_LIKE_EDGES, edge_share
from napari_samtune.core.synthetic import make_dataset
from tests.core.test_duplicate_pairs import _started


@pytest.fixture(scope="module")
def pairs():
    return make_dataset(2, shape=(96, 112), seed=3)


def test_labels_that_look_like_an_image_are_named(tmp_path, pairs):
    (image, labels), (other, other_labels) = pairs
    swapped = ImageLabelPair(other_labels.astype(np.uint8), other, "swapped.tif")
    event = _started([ImageLabelPair(image, labels, "ok.tif"), swapped], None, tmp_path / "r")
    assert event.image_like == ("swapped.tif",)
    message = event.image_like_message()
    assert "were images and labels swapped?" in message and "ok.tif" not in message
    assert message in event.data_warnings()


def test_dense_touching_objects_are_labels_not_an_image():
    """Tissue segmented wall to wall: every pixel in an object, many of them touching."""
    cell = 6
    grid = np.arange(1, 44 * 44 + 1).reshape(44, 44).repeat(cell, 0).repeat(cell, 1)
    assert edge_share(grid) < IMAGE_LIKE_EDGES / 2
    image, _ = make_dataset(1, shape=(96, 112), seed=5)[0]
    assert edge_share(image) > IMAGE_LIKE_EDGES


def test_a_background_subtracted_image_read_as_labels_is_named_too(pairs):
    """Its background of zeros (80 % of the pixels) diluted the share below the threshold."""
    image, labels = pairs[0]
    rng = np.random.default_rng(0)
    cells = np.isin(labels, np.unique(labels[labels > 0])[::4])  # a quarter of the objects
    subtracted = np.where(cells, rng.integers(100, 4000, labels.shape), 0).astype(np.uint16)
    assert (subtracted == 0).mean() > 0.5
    assert edge_share(subtracted) > IMAGE_LIKE_EDGES
    assert edge_share(labels) < 0.05  # the labels themselves: objects apart


def test_the_command_line_warns_about_swapped_folders(tmp_path, pairs, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i, (image, label) in enumerate(pairs):
        tifffile.imwrite(images / f"c{i}.tif", image)
        tifffile.imwrite(labels / f"c{i}.tif", label.astype(np.uint16))
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--epochs", "1",
            "--min-samples", "1", "--n-objects", "1", "--iterative-prompts", "0",
            "--mixed-precision", "no", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main([*argv, "--images", str(labels), "--labels", str(images)]) == 0
    err = capsys.readouterr().err
    assert "have labels that look like an image" in err and "c0.tif" in err
