"""Finetune SAM on annotated images: a generator of training events.

:func:`iter_train` runs a whole training and yields small frozen events
(:class:`TrainingStarted`, :class:`StartValidated` (a fresh run with validation data
scores the model it starts from), :class:`StepDone` after every optimizer step,
:class:`EpochDone` with validation metrics and checkpoint, :class:`TrainingFinished`);
:func:`train` drains it for scripts and the command line, and the napari
widget wraps the same generator in a thread worker. Stopping is cooperative:
set the ``stop_event`` and the run finishes its step, writes a checkpoint,
exports the model and returns normally (set before the first step, it saves nothing:
there is no new model).

Files in ``out_dir``: ``config.json`` (the effective config), ``checkpoints/
last.pt`` (resumable) and ``checkpoints/best.pt``, ``metrics.jsonl`` (one line
per epoch), ``model.pth`` (the best model as a plain SAM state dict, LoRA
merged) and ``summary.json``. The exported model is also registered as a user
model, so ``load_model(name)`` and the Segmenter can use it at once.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from napari_samtune.core import distributed as ddp
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.run_data import TrainData
from napari_samtune.core.run_lock import holds_training_lock, training_lock
from napari_samtune.core.train_events import (
    EpochDone,
    StartValidated,
    StepDone,
    TrainEvent,
    TrainingFinished,
    TrainingStarted,
)
from napari_samtune.core.trainer import Trainer

__all__ = [
    "EpochDone",
    "StartValidated",
    "StepDone",
    "TrainData",
    "TrainEvent",
    "Trainer",
    "TrainingFinished",
    "TrainingStarted",
    "iter_train",
    "train",
    "with_progress",
]


def iter_train(
    config: TrainConfig,
    train_data: TrainData,
    val_data: TrainData | None = None,
    out_dir: str | Path = "samtune-run",
    stop_event: threading.Event | None = None,
    resume_from: str | Path | None = None,
    model_name: str | None = None,
) -> Iterator[TrainEvent]:
    """Finetune SAM, yielding events (see module docstring).

    Args:
        config: the run's configuration.
        train_data: (image, labels) pairs or :class:`ImageLabelPair` s; labels are
            (H, W) integer instance labels, or (planes, H, W) with a stack of as many
            image planes (one pair per plane with objects); or :class:`PreparedImage` s,
            prepared by the caller (e.g. to check them first), used as they are. A list or
            tuple, or an iterator (a generator, ``zip(images, labels)``) read into a list first.
        val_data: validation pairs, given as ``train_data``; None (or an empty list, as a
            front end with no validation data chosen passes) holds out
            ``config.val_fraction`` of the training images (of the one image's area, with a
            single image).
        out_dir: folder for config, checkpoints, metrics and the exported model.
        stop_event: set it to stop after the current step (checkpoint + export).
        resume_from: the run to continue: its folder (which means its
            ``checkpoints/last.pt``) or a ``last.pt``; into its own folder as ``out_dir``, or
            into a new one.
        model_name: user-model name to register the result under; default: the
            name of ``out_dir`` (made unique).
    """
    _check_stop_event(stop_event)
    with ddp.peer_failures_explained():  # under torchrun: another process failed
        trainer = Trainer(
            config, train_data, val_data, out_dir, stop_event, resume_from, model_name
        )
        try:
            with _folder_held(trainer):
                yield from trainer.run()
        finally:
            ddp.shutdown(trainer.dist)


@contextmanager
def _folder_held(trainer: Trainer) -> Iterator[None]:
    """The run folder's training lock (rank 0's), unless this process holds it already
    (the command line and the training widget take it first): a run of another process
    into the folder is refused instead of writing over this one's checkpoints; and so is
    a second run of this process (a notebook's training thread started twice), which the
    lock held by this process let in: two runs wrote one folder, one model lost unsaid."""
    out_dir = trainer.out_dir
    if not trainer.dist.is_main:
        yield
        return
    lock = nullcontext() if holds_training_lock(out_dir) else training_lock(out_dir)
    with lock, _one_run_at_a_time(out_dir):
        yield


_running_in: set[Path] = set()  # folders a run of this process trains in
_running_in_lock = threading.Lock()


@contextmanager
def _one_run_at_a_time(out_dir: Path) -> Iterator[None]:
    key = Path(out_dir).resolve()
    with _running_in_lock:
        if key in _running_in:
            raise ValueError(
                f"out_dir {str(out_dir)!r} is in use by another training run of this process: "
                "another thread's, which is still going (wait for it to finish), or an "
                "iter_train generator left before its end, as by a break out of its loop, "
                "which holds the folder until it is closed (call its close(), or delete it); "
                "or choose another folder"
            )
        _running_in.add(key)
    try:
        yield
    finally:
        with _running_in_lock:
            _running_in.discard(key)


def _check_stop_event(stop_event: object) -> None:
    """``TypeError`` for a stop_event that is no event: True, or the class threading.Event,
    trained until the first step and then failed on "'bool' object has no attribute
    'is_set'" (or "missing 1 required positional argument")."""
    if stop_event is None or (
        callable(getattr(stop_event, "is_set", None)) and not isinstance(stop_event, type)
    ):
        return
    raise TypeError(
        f"stop_event={stop_event!r} is not an event; pass stop = threading.Event() and call "
        "stop.set() to stop the run (a multiprocessing.Event works too), or None"
    )


def train(
    config: TrainConfig,
    train_data: TrainData,
    val_data: TrainData | None = None,
    out_dir: str | Path = "samtune-run",
    stop_event: threading.Event | None = None,
    resume_from: str | Path | None = None,
    model_name: str | None = None,
    progress: bool = False,
) -> TrainingFinished:
    """Run :func:`iter_train` to the end (same arguments); returns its last event.

    ``progress``: show a bar per epoch and a line of metrics after each (stderr / stdout);
    under ``torchrun``, in the first process only (the others train alike). What the run
    says about its data (:meth:`TrainingStarted.data_warnings`: pairs given twice, validation
    that repeats training; the pairs without objects left out) and its notes (a resume's
    validation changed, its best epoch chosen anew) are issued as :class:`UserWarning` s,
    which a script would not see otherwise, as ``samtune train`` prints them.
    """
    finished = None
    events = iter_train(config, train_data, val_data, out_dir, stop_event, resume_from, model_name)
    if progress and ddp.is_main_process():
        events = with_progress(events, config.epochs)
    for event in events:
        if isinstance(event, TrainingStarted) and ddp.is_main_process():
            said = [event.left_out_message(), *event.data_warnings(), *event.notes]
            for message in filter(None, said):
                warnings.warn(message, UserWarning, stacklevel=2)
        if isinstance(event, TrainingFinished) and event.no_better_message():
            warnings.warn(event.no_better_message(), UserWarning, stacklevel=2)
        finished = event
    return finished


def with_progress(
    events: Iterable[TrainEvent], epochs: int, bar: bool = True
) -> Iterator[TrainEvent]:
    """Pass ``events`` through, showing a bar of each epoch's steps (with ``bar``, on stderr;
    see :func:`~napari_samtune.core.progress.progress_bar`) and printing :func:`epoch_line`
    after each epoch."""
    from napari_samtune.core.progress import progress_bar

    shown = None
    try:
        for event in events:
            if isinstance(event, StepDone) and bar:
                if shown is None:
                    desc = f"epoch {event.epoch + 1}/{epochs}"
                    shown = progress_bar(
                        event.steps_per_epoch, desc, unit="step", leave=False,
                        initial=event.step - 1,  # a resumed epoch's steps done before
                    )  # fmt: skip
                postfix = {"loss": f"{event.loss:.4f}", "lr": f"{event.learning_rate:.2g}"}
                shown.set_postfix(postfix, refresh=False)  # drawn by update, when it redraws
                shown.update(1)
            elif isinstance(event, EpochDone):
                if shown is not None:
                    shown.close()
                    shown = None
                print(epoch_line(event, epochs), flush=True)
            elif isinstance(event, StartValidated):
                print(start_line(event), flush=True)
            yield event
    finally:
        if shown is not None:
            shown.close()


def start_line(event: StartValidated) -> str:
    """One line for the model the run starts from: its validation metrics, time."""
    values = " ".join(f"{k}={v:.4f}" for k, v in event.val_metrics.items())
    return f"before training: {values} {event.seconds:.1f}s"


def epoch_line(event: EpochDone, epochs: int) -> str:
    """One line for a finished epoch: losses, validation metrics, learning rate, time."""
    values = [f"train_loss={event.train_loss:.4f}"]
    values += [f"{k}={v:.4f}" for k, v in event.val_metrics.items()]
    values += [f"lr={event.learning_rate:.2g}", f"{event.epoch_seconds:.1f}s"]
    best = " (best)" if event.is_best else ""
    return f"epoch {event.epoch + 1}/{epochs}: {' '.join(values)}{best}"
