"""Validation data that overlaps the training data is warned about: the same pixels and
labels, and the same image with other labels (re-annotated), which is leakage too."""

from __future__ import annotations

import dataclasses

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


def test_a_single_image_whose_held_out_objects_are_all_cut_is_warned_about(tmp_path):
    """The held-out rows of a single image kept objects the cut splits where every one was
    (nothing else to score), unsaid, though the README says they are not scored: training
    saw their other part, and validation scored that leakage."""
    image = np.random.default_rng(3).integers(0, 255, (100, 80), np.uint8)
    tall = np.zeros((100, 80), np.int32)
    tall[20:100, 10:30], tall[50:100, 50:70] = 1, 2  # both reach into the last 10 rows
    started = _started([ImageLabelPair(image, tall, "one.tif")], None, tmp_path / "a")
    (note,) = started.notes
    assert note.startswith("validation of 'one.tif', the only image, scores only objects that")
    assert "(rows 90..99 held out)" in note and "give validation data" in note
    whole = tall.copy()
    whole[93:99, 35:45] = 3  # an object wholly in the held-out rows: the cut ones go
    assert _started([ImageLabelPair(image, whole, "one.tif")], None, tmp_path / "b").notes == ()

    run = tmp_path / "run"
    one = ImageLabelPair(image, tall, "one.tif")
    list(iter_train(CONFIG, [one], None, run))
    other = ImageLabelPair(image[::-1].copy(), whole[::-1].copy(), "other.tif")
    resumed = iter_train(
        dataclasses.replace(CONFIG, epochs=2), [one, other], None, run, resume_from=run
    )
    started = next(resumed)  # with more images, the part held out before stays held out
    resumed.close()
    assert any(n.startswith("validation of 'one.tif', the only image,") for n in started.notes)
