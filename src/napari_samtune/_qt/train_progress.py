"""The Finetune widget's view of a run: the training events, on the main thread, move its
progress bar, status line and live plot, and say how the run ended (or why it failed).

A mixin of :class:`~napari_samtune._qt.train_widget.TrainWidget` (it uses its
``progress_bar``, ``status_label``, ``result_label``, ``plot``, ``settings``,
``use_model_check``, ``stop_event``, ``steps_seen``, ``viewer``, ``start_error``,
``run_folder``, ``_run_before``, ``history`` and signals).
"""

from __future__ import annotations

import math

from napari.utils.notifications import show_error, show_info, show_warning

from napari_samtune._qt.model_picker import FILE_ENTRY
from napari_samtune._qt.task_messages import user_message
from napari_samtune._qt.train_data import show_problem
from napari_samtune._qt.train_run import (
    HeldOutPartEmpty,
    ModelNotDownloaded,
    RunFolderInUse,
    finetune_panels,
    offer_model,
)
from napari_samtune.core.checkpoint_models import BaseModelUnavailable
from napari_samtune.core.fetch import DownloadStopped
from napari_samtune.core.preset_memory import (
    nothing_smaller,
    smaller_settings,
    trains_adapters,
)
from napari_samtune.core.train import (
    EpochDone,
    StartValidated,
    StepDone,
    TrainingFinished,
    TrainingStarted,
)
from napari_samtune.core.train_export import RunFiles


def format_duration(seconds: float) -> str:
    """``"1:02:03"`` / ``"2:03"``; ``"?"`` while unknown (NaN, negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainProgressMixin:
    """Training events -> progress bar, status, plot and the result line."""

    def _on_event(self, event) -> None:
        if isinstance(event, StepDone):
            self._on_step(event)
        elif isinstance(event, EpochDone):
            self._on_epoch(event)
        elif isinstance(event, TrainingStarted):
            self._on_started(event)
        elif isinstance(event, StartValidated):
            self._on_start_validated(event)
        elif isinstance(event, TrainingFinished):
            self._on_finished(event)

    def _on_started(self, event: TrainingStarted) -> None:
        self.started = event
        self._show_new_run(event)
        total = (event.config.epochs - event.start_epoch) * event.steps_per_epoch
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(f"epoch {event.start_epoch + 1}/{event.config.epochs}")
        if event.validates_start:
            self.progress_bar.setFormat(
                f"scoring the model before training on {event.n_val} validation image(s)"
            )
        if not (self.stop_event and self.stop_event.is_set()):  # keep saying it is stopping
            self.status_label.setText(
                f"training on {event.device}: {event.n_train} training and {event.n_val} "
                f"validation images, {event.samples_per_epoch} patches per epoch"
            )
        if event.left_out:
            show_info(event.left_out_message())
        for warning in event.data_warnings():
            show_warning(warning)
        self._show_download_notes()
        for note in event.notes:
            show_warning(note)
        self.training_started.emit(event)

    def _on_start_validated(self, event: StartValidated) -> None:
        self.plot.add_start(event.metric)
        if self.started is not None:
            self.progress_bar.setFormat(f"epoch 1/{self.started.config.epochs}")
        if not (self.stop_event and self.stop_event.is_set()):
            self.status_label.setText(
                f"validation IoU before training: {event.metric:.3f} (what the epochs must beat)"
            )

    def _show_new_run(self, event: TrainingStarted) -> None:
        """The last run's plot and result line give way to this run's, once it has begun:
        a run refused before (its folder in use, its data) leaves them in view. A continued
        run's plot starts with its epochs so far, and the score before its first step; its
        best epoch is the trainer's (none where the validation images changed: its best was
        scored on others), not the last one its metrics.jsonl starred."""
        self.plot.clear(max_epochs=event.config.epochs)
        if math.isfinite(event.start_metric) and not event.validates_start:
            self.plot.add_start(event.start_metric)
        for past in self.history:  # a continued run's epochs so far
            is_best = past.epoch == event.best_epoch
            self.plot.add_epoch(past.epoch + 1, past.train_loss, past.val_iou, is_best)
        self.result_label.setText("")

    def _show_download_notes(self) -> None:
        """What the model's download said besides its progress (a damaged cached file moved
        aside), once: napari shows no log records. The worker has finished downloading."""
        notes, self.download_notes = self.download_notes, []
        for note in notes:
            show_warning(note)

    def _on_step(self, event: StepDone) -> None:
        self.steps_seen += 1
        if self.started is None:
            return
        epochs = self.started.config.epochs
        done = (event.epoch - self.started.start_epoch) * event.steps_per_epoch + event.step
        self.progress_bar.setValue(min(done, self.progress_bar.maximum()))
        self.progress_bar.setFormat(
            f"epoch {event.epoch + 1}/{epochs} · step {event.step}/{event.steps_per_epoch} · "
            f"ETA {format_duration(event.eta_seconds)}"
        )
        if not (self.stop_event and self.stop_event.is_set()):
            self.status_label.setText(
                f"loss {event.loss:.4f}, learning rate {event.learning_rate:.2g}"
            )
        self.plot.add_step(event.epoch + 1, event.step, event.steps_per_epoch, event.loss)

    def _on_epoch(self, event: EpochDone) -> None:
        metric = event.val_metrics.get("val_iou")  # None without validation data
        self.plot.add_epoch(event.epoch + 1, event.train_loss, metric, event.is_best)
        self.epoch_done.emit(event)

    def _on_finished(self, event: TrainingFinished) -> None:
        self.result = event
        # a run that stopped (Stop, early stopping) left its last step's time to go shown
        self.progress_bar.setFormat(self.progress_bar.format().split(" · ETA ")[0])
        if event.registered_name is None:  # e.g. stopped before any step: nothing to offer
            self.result_label.setText(event.outcome_message())
            show_info(event.outcome_message())
            self.training_finished.emit(event)
            return
        for panel in {self, *finetune_panels(self.viewer)}:  # to finetune it further (in
            panel.settings.model_picker.refresh_models()  # every window; opened after Start)
        asked, kept_because = self.use_model_check.isChecked(), _not_to_use(event)
        try:
            n_widgets = offer_model(self.viewer, event.registered_name, asked and not kept_because)
        except (ValueError, RuntimeError) as err:  # e.g. the annotation widget is closing
            show_error(f"could not offer the new model to the annotation widget: {err}")
            n_widgets = 0
        where = " and added to the annotation widget's model list" if n_widgets else ""
        if n_widgets and asked and kept_because:  # the warning said "keep using that one"
            where += (
                f"; not loaded there, as {kept_because}: to try it, choose it there and press "
                "Load model"
            )
        message = event.outcome_message() + where
        self.result_label.setText(message)
        show_info(message)
        if event.no_better_message():
            show_warning(event.no_better_message())
        self.training_finished.emit(event)

    def memory_advice(self) -> str:
        """What a run out of memory can change: a continued one, or one with a checkpoint
        to continue from, keeps its preset and settings (Continue… takes none of them)."""
        resumable = self.run_folder is not None and RunFiles(self.run_folder).last.is_file()
        config = None if self.started is None else self.started.config
        room = smaller_settings(config)
        frozen = f"LoRA rank 0 and {FROZEN_ADVICE}" if trains_adapters(config) else FROZEN_ADVICE
        if resumable:
            anew = ["a preset for less memory"] if "preset" in room else []
            anew += [frozen] if "freeze" in room else []
            if anew:
                return f"{CONTINUE_MEMORY_ADVICE}, or start a new run from its model with " + (
                    " or ".join(anew)
                )
            return f"{CONTINUE_MEMORY_ADVICE}; {nothing_smaller(config)}"
        advanced = ["fewer objects per batch"] if "objects" in room else []
        advanced += [frozen] if "freeze" in room else []
        ways = ["choose a preset for less memory"] if "preset" in room else []
        ways += [f"in Advanced settings choose {' or '.join(advanced)}"] if advanced else []
        return ", or ".join(ways) if ways else nothing_smaller(config)

    def _on_error(self, error: BaseException) -> None:
        """The run failed (the runner has notified the user); keep the reason in view, and
        say where its last checkpoint is, if an epoch ended: nothing up to it is lost. A
        run refused its folder, the held-out part of its only image, or the download of its
        model never trained: that is shown as a refused Start."""
        if isinstance(error, RunFolderInUse):
            self.settings.show_start_problem(str(error))
            show_problem(self.start_error, "cannot start: fix the problems marked in red")
            self._forget_run_folder()
            return
        if isinstance(error, HeldOutPartEmpty | ModelNotDownloaded):
            show_problem(self.start_error, str(error))
            self._forget_run_folder()
            return
        if isinstance(error, DownloadStopped):  # Stop during the model's download
            self.result_label.setText(f"stopped before training began: {error}")
            return
        text = f"training failed: {user_message(error, self.memory_advice())}"
        # (a continued run whose base model has other weights now fails the same way again)
        continues = not isinstance(error, BaseModelUnavailable)
        self.result_label.setText(text + self._what_is_kept(continues))

    def _forget_run_folder(self) -> None:
        """The run was refused, or made no folder: the run folder (where Continue…'s dialog
        opens) is the last run's again, if its folder is still there."""
        before = self._run_before
        self.run_folder = before if before is not None and before.is_dir() else None

    def _what_is_kept(self, continues: bool = True) -> str:
        """Where a failed run's weights are, so that nothing looks lost: last.pt, which
        Continue… goes on from (once the failure named is fixed, where ``continues`` is
        False), else best.pt (the disk filled between the first epoch's two checkpoints),
        which the model lists read as a checkpoint file."""
        if self.run_folder is None:
            return ""
        files = RunFiles(self.run_folder)
        if files.last.is_file():
            after = "" if continues else " once what is named above is fixed"
            return (
                f"\nthe checkpoint of its last finished epoch is in {self.run_folder}: "
                f"Continue… goes on from there{after}"
            )
        if files.best.is_file():
            return (
                f"\nthe weights of its best epoch are in {files.best}: to use them, choose "
                f"'{FILE_ENTRY}' as the model, here or in Annotate"
            )
        return ""


# what a run that ran out of memory can ask for instead (the Advanced settings' fields),
# where its settings can still go down (not the patch size: smaller patches are resized up
# to the model's input, the same memory)
FROZEN_ADVICE = "a frozen image encoder"
# a continued run keeps its preset, objects per batch and what it trains
CONTINUE_MEMORY_ADVICE = "continue it on a device with more memory"


def _not_to_use(event: TrainingFinished) -> str:
    """Why the finished run's model is not loaded for annotation in place of the model in
    use, though "use it" is ticked ("" where it is): it scores no better on the validation
    images than the model (or random weights) it started from, or it completed no epoch."""
    if event.no_better_message():
        start = "the random weights" if event.from_random else "the model"
        return f"it scores no better than {start} it started from"
    if event.best_epoch is None:
        return "it completed no epoch"
    return ""
