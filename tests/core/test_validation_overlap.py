"""Validation data that overlaps the training data is warned about: the same pixels and
labels, and the same image with other labels (re-annotated), which is leakage too."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.data import ImageLabelPair
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import iter_train

CONFIG = TrainConfig(
    model="random:tiny",
    epochs=1,
    n_objects_per_batch=2,
    min_samples_per_epoch=2,
    n_iterative_prompts=1,
    mixed_precision="no",
    early_stopping=None,
)


@pytest.fixture(scope="module")
def data():
    return make_dataset(2, shape=(96, 112), seed=0), make_dataset(1, shape=(96, 96), seed=50)


def _started(train_pairs, val_pairs, folder):
    events = iter_train(CONFIG, train_pairs, val_pairs, folder)
    started = next(events)
    events.close()
    return started


def test_a_training_image_with_other_labels_in_validation_is_warned_about(tmp_path, data):
    """Only pixels and labels both equal were caught: a re-annotated copy passed unsaid."""
    train_pairs, val_pairs = data
    image, labels = train_pairs[1]
    relabelled = np.where(labels == labels.max(), 0, labels)  # one object less
    same_image = ImageLabelPair(image.copy(), relabelled, "re-annotated.tif")
    started = _started(train_pairs, [*val_pairs, same_image], tmp_path / "r")
    assert started.val_same_images == ("re-annotated.tif",) and started.val_repeats == ()
    message = started.val_same_images_message()
    assert message.startswith("1 of 2 validation pair(s) use the same image as a training pair")
    assert "the same image is used for training and validation" in message
    assert "re-annotated.tif" in message and "validate on other images" in message
    assert started.data_warnings() == [message]


def test_a_full_repeat_is_told_once_and_new_images_not_at_all(tmp_path, data):
    train_pairs, val_pairs = data
    image, labels = train_pairs[0]
    copy = ImageLabelPair(image.copy(), labels.copy(), "copy.tif")
    started = _started(train_pairs, [*val_pairs, copy], tmp_path / "r")
    assert started.val_repeats == ("copy.tif",) and started.val_same_images == ()
    assert started.data_warnings() == [started.val_repeats_message()]
    started = _started(train_pairs, val_pairs, tmp_path / "s")
    assert started.data_warnings() == []
