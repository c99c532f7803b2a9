"""A fresh run with validation data scores the model it starts from before its first step,
and says whether the model it saved does better: a finetuned model that scores no better
than its base was registered without a word."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import (
    EpochDone,
    StartValidated,
    StepDone,
    TrainingStarted,
    iter_train,
    train,
)
from napari_samtune.core.trainer import Trainer
from tests.core.test_train import ONE_OBJECT, _config


@pytest.fixture
def steps_change_nothing(monkeypatch):
    """Optimizer steps that leave the weights as they are: a run that cannot improve."""
    monkeypatch.setattr(Trainer, "_optimizer_step", lambda self, batches, epoch: 0.5)


def test_the_starting_model_is_scored_as_the_epochs_are(tmp_path, data, steps_change_nothing):
    events = list(iter_train(_config(epochs=1), *data, out_dir=tmp_path / "run"))
    started, start = events[0], events[1]
    assert isinstance(started, TrainingStarted) and started.validates_start
    assert isinstance(start, StartValidated) and start.seconds > 0
    (epoch,) = [e for e in events if isinstance(e, EpochDone)]
    assert start.val_metrics == epoch.val_metrics  # same weights, same validation
    assert start.metric == start.val_metrics["val_iou"] == events[-1].start_metric


@pytest.mark.parametrize("start", ["model file", "random weights"])
def test_a_model_no_better_than_its_start_is_said_to_be(
    tmp_path, data, steps_change_nothing, start
):
    """Finetuned from a model, the advice is to keep using that one; from random weights
    (``random:tiny``), which are no model to keep using, to train on."""
    model = "random:tiny"
    if start == "model file":
        model = str(tmp_path / "tiny.pth")
        torch.save(build_sam(TINY).state_dict(), model)
    with pytest.warns(UserWarning, match="scores no better on the validation images") as said:
        finished = train(_config(epochs=1, model=model), *data, out_dir=tmp_path / "run")
    assert finished.registered_name == "run"  # kept: the user decides
    message = str(said[0].message)
    assert f"val_iou {finished.best_metric:.3f} at its best epoch" in message
    if start == "model file":
        assert "than the model it started from" in message
        assert "keep using that one; to gain from finetuning, annotate more images" in message
    else:
        assert "than the random weights it started from" in message
        assert "keep using" not in message
        assert message.endswith(
            "train it longer, on more annotated images, or finetune a pretrained model instead"
        )
    before = f"val_iou {finished.start_metric:.3f} before training"
    assert before in finished.outcome_message()


def test_a_model_that_learned_is_not_warned_about(tmp_path):
    train_data = make_dataset(4, shape=(128, 128), style=ONE_OBJECT, seed=0)
    val_data = make_dataset(2, shape=(128, 128), style=ONE_OBJECT, seed=100)
    config = _config(epochs=3, n_objects_per_batch=1, min_samples_per_epoch=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        finished = train(config, train_data, val_data, out_dir=tmp_path / "learn")
    assert finished.best_metric > finished.start_metric + 0.1
    assert finished.no_better_message() == ""
    assert "before training" in finished.outcome_message()


def test_without_validation_data_nothing_is_scored_first(tmp_path, data):
    config = _config(epochs=1, val_fraction=0.0)
    events = list(iter_train(config, data[0], out_dir=tmp_path / "run"))
    assert not events[0].validates_start
    assert isinstance(events[1], StepDone)
    finished = events[-1]
    assert math.isnan(finished.start_metric) and "before training" not in (
        finished.outcome_message()
    )


def test_a_stop_before_the_start_skips_its_scoring(tmp_path, data):
    import threading

    stop = threading.Event()
    stop.set()
    events = list(iter_train(_config(), *data, out_dir=tmp_path / "run", stop_event=stop))
    assert [type(e).__name__ for e in events] == ["TrainingStarted", "TrainingFinished"]


def test_a_resume_that_drops_validation_forgets_the_start_score(tmp_path, data):
    """The start was scored by val_iou; without validation data the best is chosen by the
    training loss, which the start's score cannot be compared with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whether one epoch beat the start does not matter
        first = train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    assert math.isfinite(first.start_metric)
    resumed = train(
        _config(epochs=2, val_fraction=0.0),
        data[0],
        out_dir=tmp_path / "run",
        resume_from=first.last_checkpoint_path,
    )
    assert resumed.metric_name == "negative train loss" and math.isnan(resumed.start_metric)
    assert resumed.no_better_message() == ""


def test_stop_during_the_start_s_scoring_ends_it_at_once(tmp_path, monkeypatch):
    """Stop waited for the whole validation (minutes for vit_b on a CPU), then threw the
    score away."""
    import threading

    from napari_samtune.core import train_validation

    stop, scored = threading.Event(), []
    real = train_validation.validation_sums

    def one_patch_then_stop(*args, **kwargs):
        scored.append(1)
        stop.set()  # pressed while the first patch was scored
        return real(*args, **kwargs)

    monkeypatch.setattr(train_validation, "validation_sums", one_patch_then_stop)
    val_data = make_dataset(4, shape=(96, 96), seed=60)
    events = list(
        iter_train(_config(), make_dataset(2, shape=(96, 96), seed=0), val_data,
                   out_dir=tmp_path / "run", stop_event=stop)
    )  # fmt: skip
    assert scored == [1]  # not the other 3 patches
    assert [type(e).__name__ for e in events] == ["TrainingStarted", "TrainingFinished"]
    assert events[-1].stopped_by_user and events[-1].steps_done == 0


def test_a_resume_on_other_validation_images_forgets_the_start_score(tmp_path, data):
    """Its 'before training' score, of other images, was compared with this session's."""
    import threading

    stop = threading.Event()
    first = None
    for event in iter_train(_config(), *data, out_dir=tmp_path / "run", stop_event=stop):
        if isinstance(event, StepDone):
            stop.set()  # within epoch 1: no epoch scored yet
        first = event
    assert math.isfinite(first.start_metric) and first.best_epoch is None
    other_val = make_dataset(1, shape=(96, 96), seed=77)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = train(_config(), *data, out_dir=tmp_path / "again", resume_from=tmp_path / "run")
        resumed = train(
            _config(), data[0], other_val, out_dir=tmp_path / "run", resume_from=tmp_path / "run"
        )
    assert math.isnan(resumed.start_metric) and "before training" not in resumed.outcome_message()
    assert same.start_metric == first.start_metric  # the same images: kept
