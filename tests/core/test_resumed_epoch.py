"""An epoch stopped and resumed part-way: its bar and its time count the steps before."""

from __future__ import annotations

import dataclasses
import threading
import time

import torch

from napari_samtune.core import progress
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train import EpochDone, StepDone, iter_train, with_progress


def test_a_resumed_epochs_bar_starts_at_the_steps_done(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0)  # every redraw as a line
    events = [StepDone(0, step, 5, 0.5, 1e-4, 1.0) for step in (4, 5)]  # resumed after 3
    assert list(with_progress(iter(events), epochs=1)) == events
    drawn = [line.split("|")[-1].split()[0] for line in capsys.readouterr().err.splitlines()]
    assert drawn == ["3/5", "4/5", "5/5"]


def test_a_resumed_epochs_time_includes_its_part_before_the_stop(tmp_path, data, monkeypatch):
    config = TrainConfig(
        model="random:tiny", epochs=1, n_objects_per_batch=1, min_samples_per_epoch=4,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None,
    )  # fmt: skip
    real_clock, stop = time.perf_counter, threading.Event()
    for event in iter_train(config, *data, out_dir=tmp_path / "run", stop_event=stop):
        if isinstance(event, StepDone) and event.step == 2:
            # the first two steps took an hour, as on a slow machine
            monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + 3600.0)
            stop.set()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["step_in_epoch"] == 2 and checkpoint["epoch_elapsed_s"] >= 3600
    monkeypatch.setattr(time, "perf_counter", real_clock)
    resumed = [
        event
        for event in iter_train(
            dataclasses.replace(config), *data, out_dir=tmp_path / "run", resume_from=last
        )
        if isinstance(event, (StepDone, EpochDone))
    ]
    assert [e.step for e in resumed if isinstance(e, StepDone)] == [3, 4]
    (epoch,) = [e for e in resumed if isinstance(e, EpochDone)]
    assert 3600 <= epoch.epoch_seconds < 3600 + 600  # the hour, and this session's part


def test_a_runs_total_time_is_what_its_last_checkpoint_counts(tmp_path, data):
    """The summary counted the export after the last checkpoint too, which a resumed
    session does not count on from: its total then went down."""
    config = TrainConfig(
        model="random:tiny", epochs=1, n_objects_per_batch=1, min_samples_per_epoch=2,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None,
    )  # fmt: skip
    (finished,) = [e for e in iter_train(config, *data, out_dir=tmp_path / "run")][-1:]
    checkpoint = torch.load(finished.last_checkpoint_path, map_location="cpu", weights_only=True)
    assert finished.total_time_s == checkpoint["progress"]["elapsed_s"] > 0
    resumed = list(
        iter_train(
            dataclasses.replace(config, epochs=2), *data, out_dir=tmp_path / "run",
            resume_from=finished.last_checkpoint_path,
        )
    )[-1]  # fmt: skip
    assert resumed.total_time_s > finished.total_time_s
