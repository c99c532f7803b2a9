"""The same image given twice to one run (a list holding a file twice, or a layer pair and a
folder holding the same image): trained on once, with a warning naming both; refused when
the two copies carry different labels. Before, both copies trained, and one could land in
the validation split while the other trained on it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.data import ImageLabelPair, index_objects
from napari_samtune.core.duplicate_pairs import drop_duplicates
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.label_files import image_fingerprint
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import iter_train, train
from napari_samtune.core.train_checkpoints import read_checkpoint
from napari_samtune.core.trainer import Trainer
from tests.core.test_validation_overlap import CONFIG


@pytest.fixture(scope="module")
def pairs():
    return make_dataset(3, shape=(96, 112), seed=0)


def _started(train_pairs, val_pairs, folder):
    events = iter_train(CONFIG, train_pairs, val_pairs, folder)
    started = next(events)
    events.close()
    return started


def _copy(pair, name: str) -> ImageLabelPair:
    return ImageLabelPair(pair[0].copy(), pair[1].copy(), name)


def test_the_same_pair_twice_trains_once_with_a_warning_naming_both(tmp_path, pairs):
    started = _started([*pairs, _copy(pairs[0], "copy.tif")], None, tmp_path / "r")
    assert started.n_train + started.n_val == 3  # not 4: the copy is left out
    assert started.duplicates == (("copy.tif", "pair 0"),)
    message = started.duplicates_message()
    assert message.startswith("left out 1 pair(s) that repeat another pair")
    assert "'copy.tif' (same as 'pair 0')" in message
    assert message in started.data_warnings()


def test_no_copy_of_a_training_image_is_held_out_for_validation(tmp_path, pairs):
    """With two images, one was held out whole: the copy validated the image trained on."""
    data = [pairs[0], _copy(pairs[0], "copy.tif")]
    trainer = Trainer(CONFIG, data, None, tmp_path / "r", None, None, None)
    trained = {image_fingerprint(image.rgb) for image in trainer.train_images}
    validated = {image_fingerprint(image.rgb) for image in trainer.val_images}
    assert len(trainer.train_images) == len(trainer.val_images) == 1  # parts of one image
    assert not trained & validated
    assert trainer.duplicates == (("copy.tif", "pair 0"),)


def test_the_same_image_with_other_labels_is_refused_naming_both(tmp_path, pairs):
    image, labels = pairs[1]
    other = np.where(labels == labels.max(), 0, labels)  # one object less
    data = [*pairs, ImageLabelPair(image.copy(), other, "cells.tif / cells_mask.tif")]
    with pytest.raises(ValueError) as caught:
        _started(data, None, tmp_path / "r")
    message = str(caught.value)
    assert message.startswith("training data: 'cells.tif / cells_mask.tif' and 'pair 1' are")
    assert "the same image with different labels" in message
    assert "remove the pair whose labels are wrong" in message
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_the_same_objects_under_other_ids_are_a_duplicate_not_a_conflict(pairs):
    image, labels = pairs[0]
    ids = np.unique(labels[labels > 0])
    swapped = labels.copy()
    swapped[labels == ids[0]], swapped[labels == ids[1]] = ids[1], ids[0]
    rgb = to_sam_rgb(image)
    kept, dropped = drop_duplicates(
        [index_objects(rgb, labels, "a"), index_objects(rgb.copy(), swapped, "b")]
    )
    assert [image.name for image in kept] == ["a"] and dropped == (("b", "a"),)


def test_a_duplicate_in_validation_data_is_left_out_too(tmp_path, pairs):
    started = _started(pairs[:2], [pairs[2], _copy(pairs[2], "again.tif")], tmp_path / "r")
    assert started.n_val == 1
    assert started.duplicates == (("again.tif", "pair 0"),)


def test_images_that_differ_only_where_the_fingerprint_does_not_sample_are_both_kept():
    """The fingerprint samples 1 in 3 values of a 1024 x 1024 RGB image: a key, not proof."""
    rgb = np.zeros((1024, 1024, 3), np.uint8)
    labels = np.zeros((1024, 1024), np.uint16)
    labels[:8, :8] = 1
    other = rgb.copy()
    other.flat[1] = 255
    assert image_fingerprint(other) == image_fingerprint(rgb)
    kept, dropped = drop_duplicates(
        [index_objects(rgb, labels, "a"), index_objects(other, labels, "b")]
    )
    assert len(kept) == 2 and dropped == ()


def test_distinct_pairs_are_all_kept_and_unsaid(tmp_path, pairs):
    started = _started(pairs, None, tmp_path / "r")
    assert started.duplicates == () and started.duplicates_message() == ""


def test_train_issues_the_warning_for_a_script_to_see(tmp_path, pairs):
    """train() drained the events: a script was told nothing of the copy left out."""
    with pytest.warns(UserWarning, match=r"'copy.tif' \(same as 'pair 0'\)"):
        finished = train(CONFIG, [*pairs, _copy(pairs[0], "copy.tif")], out_dir=tmp_path / "r")
    summary = read_checkpoint(finished.last_checkpoint_path)["data_summary"]
    assert summary["duplicates"] == [["copy.tif", "pair 0"]]  # the run's record says so too
