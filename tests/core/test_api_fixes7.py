"""Fixes found by scripting the headless core from a notebook, as a first-time user would."""

from __future__ import annotations

import pytest

from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train


def _one_epoch() -> TrainConfig:
    return TrainConfig(
        model="random:tiny",
        epochs=1,
        n_objects_per_batch=1,
        min_samples_per_epoch=2,
        n_iterative_prompts=0,
        mixed_precision="no",
        early_stopping=None,
    )


def test_pairs_given_as_a_generator_or_zip_train_like_a_list(tmp_path):
    # train(config, zip(images, labels)) raised "training data: object of type 'zip' has no
    # len()", and a generator of validation pairs a bare TypeError of the same words;
    # evaluate_prompts reads such iterables into a list, so training now does too.
    pairs, val = make_dataset(3, shape=(48, 48), seed=0), make_dataset(1, (48, 48), seed=50)
    images, labels = zip(*pairs, strict=True)
    listed = train(_one_epoch(), list(pairs), val, out_dir=tmp_path / "listed")
    zipped = train(
        _one_epoch(), zip(images, labels, strict=True), iter(val), out_dir=tmp_path / "zipped"
    )
    assert (zipped.steps_done, zipped.best_metric) == (listed.steps_done, listed.best_metric)


def test_an_empty_generator_of_pairs_is_refused_as_no_training_data(tmp_path):
    with pytest.raises(ValueError, match="training data must be a non-empty list"):
        train(_one_epoch(), (pair for pair in []), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
