"""The events a training run yields, and the progress counters its checkpoints keep.

Events are small frozen dataclasses, safe to hand from a worker thread to the
GUI: numbers, strings, paths, the config and a dict of metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from napari_samtune.core.duplicate_pairs import duplicates_message
from napari_samtune.core.label_files import describe_names
from napari_samtune.core.presets import TrainConfig


@dataclass(frozen=True)
class TrainingStarted:
    config: TrainConfig  # the effective config (patch size, precision and device resolved)
    n_train: int  # training images (or image parts)
    n_val: int  # validation images (or image parts)
    samples_per_epoch: int  # patches per epoch, over all ranks
    steps_per_epoch: int  # optimizer steps per epoch on each rank
    device: str  # e.g. "cpu", "cuda:0"
    n_trainable_params: int  # parameters the optimizer updates
    start_epoch: int  # 0, or where a resumed run continues
    world_size: int  # processes training together
    left_out: tuple[str, ...] = ()  # names of the pairs left out for having no object
    duplicates: tuple[tuple[str, str], ...] = ()  # (left out, kept) names of repeated pairs
    val_repeats: tuple[str, ...] = ()  # validation pairs equal to a training pair
    val_same_images: tuple[str, ...] = ()  # validation pairs of a training image, other labels
    notes: tuple[str, ...] = ()  # what else the person training should know (shown as warnings)
    blank: tuple[str, ...] = ()  # training pairs whose image is one value everywhere
    validates_start: bool = False  # StartValidated comes next: the starting model is scored
    image_like: tuple[str, ...] = ()  # pairs whose labels look like an image (swapped?)
    # val_iou of the model the run started from, kept by a resumed run (NaN: not scored yet,
    # or on other validation images; a fresh run's comes with StartValidated)
    start_metric: float = math.nan
    blank_validation: tuple[str, ...] = ()  # validation pairs whose image is one value
    # a resumed run's best epoch so far (0-based); -1 for none, or chosen anew on new
    # validation images (the plot stars it, not the epoch its metrics.jsonl starred last)
    best_epoch: int = -1

    def left_out_message(self) -> str:
        """``"left out 2 pair(s) without any object (labels all 0): a, b"``; "" if none."""
        if not self.left_out:
            return ""
        names = describe_names(self.left_out)
        return f"left out {len(self.left_out)} pair(s) without any object (labels all 0): {names}"

    def duplicates_message(self) -> str:
        """The warning that pairs given twice were left out, naming both copies; "" if none."""
        return duplicates_message(self.duplicates)

    def val_repeats_message(self) -> str:
        """The warning that validation repeats training data, with the fix; "" if it does not."""
        if not self.val_repeats:
            return ""
        return (
            f"{len(self.val_repeats)} of {self.n_val} validation pair(s) are also training pairs "
            f"(same pixels and labels): {describe_names(self.val_repeats)}; their scores show "
            "how the model fits its training data, not how it segments new images, and choose "
            "the best epoch by that: validate on other images, or give no validation data "
            "for a held-out split"
        )

    def val_same_images_message(self) -> str:
        """The warning that validation images are training images (with other labels), with
        the fix; "" if none is."""
        if not self.val_same_images:
            return ""
        return (
            f"{len(self.val_same_images)} of {self.n_val} validation pair(s) use the same image "
            f"as a training pair, with other labels: {describe_names(self.val_same_images)}; "
            "the same image is used for training and validation, so their scores overstate "
            "how the model segments new images: validate on other images, or give no "
            "validation data for a held-out split"
        )

    def blank_message(self) -> str:
        """The warning that some images are blank (one value everywhere), with the fix; ""
        if none is."""
        parts = []
        if self.blank:
            parts.append(
                f"{len(self.blank)} training pair(s) have an image of one value everywhere "
                f"(blank): {describe_names(self.blank)}; SAM sees none of their objects, so the "
                "model is taught to draw masks on nothing"
            )
        if self.blank_validation:
            parts.append(
                f"{len(self.blank_validation)} of {self.n_val} validation pair(s) have a blank "
                f"image: {describe_names(self.blank_validation)}; no model can segment them, "
                "so their scores cannot tell its epochs apart"
            )
        if not parts:
            return ""
        return "; ".join(parts) + (
            ": check that the right image (and channel) is paired with these labels"
        )

    def image_like_message(self) -> str:
        """The warning that some labels look like images (images and labels swapped?), with
        the fix; "" if none does."""
        if not self.image_like:
            return ""
        return (
            f"{len(self.image_like)} pair(s) have labels that look like an image (most "
            f"neighbouring pixels in different objects): {describe_names(self.image_like)}; "
            "were images and labels swapped? Check which files are given as images and "
            "which as labels (instance labels hold one id per object, 0 for background)"
        )

    def data_warnings(self) -> list[str]:
        """The warnings about the data (:meth:`blank_message`, :meth:`duplicates_message`,
        :meth:`val_repeats_message`, :meth:`val_same_images_message`) that apply, for a front
        end to show."""
        messages = (
            self.image_like_message(),
            self.blank_message(),
            self.duplicates_message(),
            self.val_repeats_message(),
            self.val_same_images_message(),
        )
        return [message for message in messages if message]


@dataclass(frozen=True)
class StepDone:
    epoch: int  # 0-based epoch
    step: int  # 1-based optimizer step within the epoch
    steps_per_epoch: int  # optimizer steps per epoch
    loss: float  # loss of this step (this rank)
    learning_rate: float  # current learning rate
    eta_seconds: float  # estimated time to the last epoch (early stopping may end sooner)


@dataclass(frozen=True)
class StartValidated:
    """The model a fresh run starts from, scored on the validation images before its first
    step: what its epochs have to beat."""

    val_metrics: dict[str, float]  # as EpochDone.val_metrics
    metric: float  # val_iou
    seconds: float  # wall time of the validation


@dataclass(frozen=True)
class EpochDone:
    epoch: int  # 0-based epoch just finished
    train_loss: float  # mean training loss of the epoch, all ranks
    val_metrics: dict[str, float]  # val_iou_box, val_iou_point, val_dice_*, val_iou; {} if none
    metric: float  # what "best" means, higher is better: val_iou, else -train_loss
    metric_name: str  # "val_iou" or "negative train loss"
    learning_rate: float  # learning rate after the scheduler's step
    checkpoint_path: Path | None  # the 'last' checkpoint (None on ranks other than 0)
    is_best: bool  # this epoch set a new best metric (and wrote best.pt)
    best_metric: float  # best metric so far
    eta_seconds: float  # estimated time to the last epoch
    epoch_seconds: float  # wall time of this epoch, validation included


@dataclass(frozen=True)
class TrainingFinished:
    best_epoch: int | None  # 0-based epoch of the best metric; None if no epoch completed
    best_metric: float  # best metric (see EpochDone.metric)
    metric_name: str  # see EpochDone.metric_name
    time_to_best_s: float  # training time until the best epoch ended
    total_time_s: float  # training time in total (resumed runs: all sessions)
    epochs_done: int  # completed epochs: trained, validated and checkpointed
    best_checkpoint_path: Path | None  # best.pt, or None when no epoch completed
    last_checkpoint_path: Path | None  # last.pt; None when there is none (see steps_done)
    exported_model_path: Path | None  # out_dir / "model.pth" (rank 0); None: nothing saved
    registered_name: str | None  # user-model name for load_model(); None on other ranks
    stopped_early: bool  # early stopping ended the run
    stopped_by_user: bool  # the stop event ended the run
    steps_done: int  # optimizer steps of this session; 0: stopped before any, nothing saved
    name_taken: str | None = None  # the model name asked for, taken by another model while
    # the run trained: registered_name is a free variant of it
    folder_name_taken: str | None = None  # no name asked for: the run folder's name, which
    # names another model, so registered_name is a free variant of it
    steps_in_epoch: int = 0  # stopped mid-epoch: the steps done of the epoch after
    # epochs_done; all steps_per_epoch of them: only its validation is left, which a resume
    # does first
    steps_per_epoch: int = 0
    export_note: str = ""  # why the model holds other weights than the best epoch's ("": it
    # does not)
    start_metric: float = math.nan  # val_iou of the model before the run's first step (NaN:
    # not measured: no validation data, or a run begun by an older version)
    from_random: bool = False  # the run started from random weights ("random:<arch>")

    def name_note(self) -> str:
        """Why ``registered_name`` is not the name asked for or the folder's: "" where it is."""
        if self.name_taken:
            return f" (the name {self.name_taken!r} was taken by another model meanwhile)"
        if self.folder_name_taken:
            return f" (the run folder's name {self.folder_name_taken!r} names another model)"
        return ""

    def outcome_message(self) -> str:
        """How the run ended, and where its model is, in one sentence."""
        how = "stopped" if self.stopped_by_user else "finished"
        if self.stopped_early:
            how = "stopped early (no improvement)"
        if self.exported_model_path is None:
            if self.steps_done == 0 and self.last_checkpoint_path is not None:  # resumed
                return (
                    f"training {how} before any training step; the run's checkpoints and "
                    f"model stay as they were ({self.last_checkpoint_path.parent.parent})"
                )
            if self.steps_done == 0:
                return f"training {how} before any training step; no model saved"
            return f"training {how}; no model was exported"
        note = f"; {self.export_note}" if self.export_note else ""
        return (
            f"training {how} after {self.trained_summary()}: model "
            f"{self.registered_name!r}{self.name_note()} saved to {self.exported_model_path}"
            f"{self._gain()}{note}"
        )

    def _gain(self) -> str:
        """``" (val_iou 0.412 before training, 0.705 at its best epoch)"``; "" unmeasured."""
        if not (math.isfinite(self.start_metric) and self.best_epoch is not None):
            return ""
        return (
            f" ({self.metric_name} {self.start_metric:.3f} before training, "
            f"{self.best_metric:.3f} at its best epoch)"
        )

    def no_better_message(self) -> str:
        """The warning that the saved model scores no better on the validation images than
        the model the run started from, with what to do; "" when it scores better (or
        either was not measured)."""
        if not self._gain() or self.exported_model_path is None:
            return ""
        if self.best_metric > self.start_metric:
            return ""
        scores = (
            f"({self.metric_name} {self.best_metric:.3f} at its best epoch, "
            f"{self.start_metric:.3f} before training)"
        )
        if self.from_random:  # no model to keep using
            return (
                f"the model {self.registered_name!r} scores no better on the validation images "
                f"than the random weights it started from {scores}: train it longer, on more "
                "annotated images, or finetune a pretrained model instead"
            )
        return (
            f"the finetuned model {self.registered_name!r} scores no better on the validation "
            f"images than the model it started from {scores}: keep using that one; to gain "
            "from finetuning, annotate more images, or train longer or with a lower learning "
            "rate"
        )

    def trained_summary(self) -> str:
        """What was trained: "2 epochs", or "1 epoch and 3 of 7 steps of epoch 2"."""
        n = self.epochs_done
        epochs = f"{n} epoch{'s' * (n != 1)}"
        if not self.steps_in_epoch:
            return epochs
        epoch = f"epoch {n + 1}"
        if self.steps_in_epoch < self.steps_per_epoch:
            steps = f"{self.steps_in_epoch} of {self.steps_per_epoch} steps of {epoch}"
        else:  # stopped in the epoch's last step: a stop does not wait for its validation
            steps = (
                f"all {self.steps_per_epoch} steps of {epoch}, before its validation (continuing "
                f"the run validates {epoch} first and goes on)"
            )
        return f"{epochs} and {steps}" if n else steps


TrainEvent = TrainingStarted | StartValidated | StepDone | EpochDone | TrainingFinished


@dataclass
class Progress:
    """Where a run stands; saved in checkpoints so a resume continues exactly."""

    epoch: int = 0  # epoch in progress (or next to start)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    global_step: int = 0  # optimizer steps done in total
    best_metric: float = -math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    epoch_loss_sum: float = 0.0  # step losses of the epoch so far: this rank's (checkpoint: all)
    epoch_loss_count: int = 0
    elapsed_s: float = 0.0  # training time of earlier sessions (resume)
    time_to_best_s: float = 0.0
    start_metric: float = math.nan  # val_iou before the first step (NaN: not measured)
