"""A run resumed with validation images other than its checkpoint's chooses its best epoch
anew. It kept the old best when the images were given anew (``val_data``), or had the
same names as before with other pixels or labels (c0.tif of another experiment): its best
epoch, scored on the old images, was exported instead of any epoch on the new data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from napari_samtune.core.data import ImageLabelPair
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import iter_train, train


@pytest.fixture
def config(short_tiny_config) -> TrainConfig:
    """One epoch of the tiny model, 2 objects a patch, never stopped early."""
    return short_tiny_config(n_objects_per_batch=2, learning_rate=3e-3, early_stopping=None)


def _pairs(seed: int, names: list[str]) -> list[ImageLabelPair]:
    data = make_dataset(len(names), shape=(96, 96), seed=seed)
    return [
        ImageLabelPair(image, labels, name)
        for (image, labels), name in zip(data, names, strict=True)
    ]


def _resume(config, out, epochs: int, train_pairs, val_pairs):
    config = dataclasses.replace(config, epochs=epochs)
    events = list(iter_train(config, train_pairs, val_pairs, out, resume_from=out))
    return events[0].notes, events[-1]


def test_validation_images_of_the_same_names_but_other_pixels_restart_the_best(tmp_path, config):
    train_pairs, val_pairs = _pairs(0, ["t0.tif", "t1.tif"]), _pairs(1, ["c0.tif"])
    out = tmp_path / "run"
    assert train(config, train_pairs, val_pairs, out_dir=out).best_epoch == 0
    notes, finished = _resume(config, out, 2, train_pairs, val_pairs)  # the same images: kept
    assert not any("validation" in note for note in notes), notes
    best = finished.best_epoch
    other = _pairs(7, ["c0.tif"])  # another experiment's c0.tif
    notes, finished = _resume(config, out, 3, train_pairs, other)
    changed = [note for note in notes if "validation images changed" in note]
    assert changed and "whose pixels or labels are others now" in changed[0], notes
    assert f"best epoch ({best + 1})" in changed[0] and "chosen anew" in changed[0]
    assert finished.best_epoch == 2  # the only epoch scored on these images


def test_validation_images_given_anew_under_other_names_restart_the_best(tmp_path, config):
    train_pairs = _pairs(0, ["t0.tif", "t1.tif"])
    out = tmp_path / "run"
    train(config, train_pairs, _pairs(1, ["c0.tif"]), out_dir=out)
    notes, finished = _resume(config, out, 2, train_pairs, _pairs(1, ["renamed.tif"]))
    changed = [note for note in notes if "validation images changed" in note]
    assert changed, notes
    assert "validated on ['c0.tif'], and now on ['renamed.tif']" in changed[0]
    assert finished.best_epoch == 1


def test_validation_given_apart_then_held_out_is_not_said_to_have_been_held_out(tmp_path, config):
    """Resumed without its validation images, the run holds out some of its training ones:
    the note said it had "held out" the images given apart before."""
    train_pairs = _pairs(0, ["t0.tif", "t1.tif", "t2.tif"])
    out = tmp_path / "run"
    train(config, train_pairs, _pairs(1, ["c0.tif"]), out_dir=out)
    notes, _ = _resume(config, out, 2, train_pairs, None)
    changed = [note for note in notes if "validation images changed" in note]
    assert changed, notes
    assert "it validated on ['c0.tif'], and now on ['t" in changed[0]
    assert "held out of the training images" in changed[0] and "held out ['c0" not in changed[0]


def test_validation_tiles_of_another_patch_size_restart_the_best(tmp_path, config):
    """The validation images are scored in tiles of the patch size: resumed with another
    one, other objects are scored (the same weights scored 0.54 and then 0.60), and that
    score was taken as a new best epoch, and exported, with no word."""
    train_pairs, val_pairs = _pairs(0, ["t0.tif", "t1.tif"]), _pairs(1, ["c0.tif"])
    out = tmp_path / "run"
    train(config, train_pairs, val_pairs, out_dir=out)
    notes, finished = _resume(config, out, 2, train_pairs, val_pairs)
    assert not any("tiles" in note for note in notes), notes
    best = finished.best_epoch
    config = dataclasses.replace(config, patch_size=48, learning_rate=1e-12)
    notes, finished = _resume(config, out, 3, train_pairs, val_pairs)
    assert [note for note in notes if "tiles" in note] == [
        "the run's validation images are cut into other tiles now (patch_size 256 before, 48 "
        f"now): its best epoch ({best + 1}) was scored on other objects, so the best epoch is "
        "chosen anew"
    ]
    assert finished.best_epoch == 2  # the only epoch scored in these tiles
    assert math.isnan(finished.start_metric)  # the model before training: in the old tiles


def test_a_plane_annotated_since_in_a_held_out_stack_is_held_out_with_it(tmp_path, config):
    """Resumed with a plane of a held-out stack annotated since, the run trained on it while
    its neighbouring planes validated, without a word: a stack is held out whole."""
    planes = make_dataset(9, shape=(96, 96), seed=3)

    def plane(k: int, i: int) -> ImageLabelPair:  # plane i of stack k
        return ImageLabelPair(*planes[3 * k + i], f"s{k}.tif plane {i}", source=f"s{k}.tif")

    pairs = [plane(k, i) for k in range(3) for i in (0, 2)]  # their planes 1 not annotated
    out = tmp_path / "run"
    config = dataclasses.replace(config, val_fraction=0.3)
    first = train(config, pairs, None, out_dir=out)
    held = torch.load(first.last_checkpoint_path, weights_only=True)["data_summary"]["val_images"]
    assert len(held) == 2 and held[0][:2] == held[1][:2]  # one stack, whole
    added = [plane(int(held[0][1]), 1)]
    notes, finished = _resume(config, out, 2, [*pairs, *added], None)
    summary = torch.load(finished.last_checkpoint_path, weights_only=True)["data_summary"]
    assert sorted(summary["val_images"]) == sorted([*held, added[0].name])
    assert added[0].name not in summary["train_images"]
    changed = [note for note in notes if "validation images changed" in note]
    assert changed and "of the stacks it held out: a stack is held out whole" in changed[0]


def test_a_val_fraction_given_anew_on_resume_holds_out_as_it_draws(tmp_path, config):
    """--val-fraction on resume was recorded as the run's, while the checkpoint's split was
    kept: 0 still validated on the image held out, 0.6 on one image where a new run holds
    out two."""
    pairs = _pairs(0, ["t0.tif", "t1.tif", "t2.tif", "t3.tif"])
    out = tmp_path / "run"
    config = dataclasses.replace(config, val_fraction=0.25)
    first = train(config, pairs, None, out_dir=out)
    held = torch.load(first.last_checkpoint_path, weights_only=True)["data_summary"]["val_images"]
    assert len(held) == 1
    more = dataclasses.replace(config, val_fraction=0.6)
    notes, finished = _resume(more, out, 2, pairs, None)
    summary = torch.load(finished.last_checkpoint_path, weights_only=True)["data_summary"]
    assert len(summary["val_images"]) == 2 and len(summary["train_images"]) == 2
    changed = [note for note in notes if "validation images changed" in note]
    assert changed and f"held out {held} at val_fraction=0.25, and now" in changed[0], notes
    assert "at val_fraction=0.6" in changed[0] and "chosen anew" in changed[0]
    none = dataclasses.replace(config, val_fraction=0.0)
    notes, finished = _resume(none, out, 3, pairs, None)
    summary = torch.load(finished.last_checkpoint_path, weights_only=True)["data_summary"]
    assert summary["val_images"] == [] and len(summary["train_images"]) == 4
    assert any("this session by negative train loss" in note for note in notes), notes


def test_train_issues_the_run_s_notes_and_the_pairs_left_out_as_warnings(tmp_path, config):
    """``samtune train`` prints them; a script calling train() heard of neither."""
    import numpy as np

    train_pairs = _pairs(0, ["t0.tif", "t1.tif"])
    image = train_pairs[0].image
    empty = ImageLabelPair(image, np.zeros(image.shape[:2], np.uint16), "empty.tif")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"left out 1 pair\(s\) without any object.*empty.tif"):
        train(config, [*train_pairs, empty], _pairs(1, ["c0.tif"]), out_dir=out)
    again = dataclasses.replace(config, epochs=2)
    with pytest.warns(UserWarning, match=r"validation images changed .*chosen anew"):
        train(again, train_pairs, _pairs(1, ["renamed.tif"]), out_dir=out, resume_from=out)


def test_a_held_out_image_drawn_from_those_trained_on_is_said_to_flatter(tmp_path, config):
    """Resumed without the image it held out, the run held out one it had trained on: the
    note said only that the validation images changed, and the best epoch was then chosen
    by how well the model fit its own training data."""
    pairs = _pairs(0, ["a.tif", "b.tif", "c.tif"])
    out = tmp_path / "run"
    train(config, pairs, None, out_dir=out)
    held_out = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["data_summary"]
    (gone,) = held_out["val_images"]
    left = [pair for pair in pairs if pair.name != gone]
    notes, _ = _resume(config, out, 2, left, None)
    changed = [note for note in notes if "validation images changed" in note]
    assert changed and "trained in its earlier epochs, so its scores flatter" in changed[0], notes
    kept = [pair for pair in pairs if pair.name != gone] + [p for p in pairs if p.name == gone]
    notes, _ = _resume(config, out, 3, kept, None)  # the same images again: nothing said
    assert not any("flatter" in note for note in notes), notes


def test_a_validation_pair_left_out_is_named_as_one(tmp_path, config):
    """An empty validation pair named like a training one was said as "left out ...:
    t0.tif", as if the training t0.tif (with objects) had been left out."""
    import numpy as np

    train_pairs = _pairs(0, ["t0.tif", "t1.tif"])
    image = train_pairs[0].image
    empty = ImageLabelPair(image, np.zeros(image.shape[:2], np.uint16), "t0.tif")
    with pytest.warns(UserWarning, match=r"without any object .*: t0.tif \(validation\)"):
        train(config, train_pairs, [*_pairs(1, ["c0.tif"]), empty], out_dir=tmp_path / "run")
