"""A training run continued from its checkpoint: the optimizer, scheduler, gradient scaler,
progress and random state come back, and the epoch in progress is adjusted when the run
resumes with another number of processes or another step size. A mixin of
:class:`~napari_samtune.core.trainer.Trainer` (it uses the run's config, parameters,
precision, distributed context and step counts).
"""

from __future__ import annotations

import math

import torch

from napari_samtune.core.checkpoint_fields import not_resumable
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train_checkpoints import check_not_stopped_early
from napari_samtune.core.train_events import Progress
from napari_samtune.core.train_setup import make_optimizer
from napari_samtune.core.train_validation import VALIDATION_SCORING
from napari_samtune.core.validation_split import split_one_image


class TrainerResumeMixin:
    """Optimizer set-up and the state a :class:`Trainer` restores from a checkpoint."""

    def _setup_optimizer(self, checkpoint: dict | None) -> None:
        self.optimizer, self.scheduler = make_optimizer(self.params, self.config)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.progress, self.notes = Progress(), []
        # the metrics.jsonl line of the last epoch done (see TrainerFilesMixin._restore_metrics)
        self.epoch_record = checkpoint.get("epoch_record") if checkpoint else None
        if checkpoint is None:
            return
        try:  # torch's words ("loaded state dict contains a parameter group that doesn't
            # match the size of optimizer's group") named no file
            self.optimizer.load_state_dict(checkpoint["optimizer_state"])
            self.scheduler.load_state_dict(checkpoint["scheduler_state"])
        except (ValueError, KeyError, TypeError) as err:
            raise not_resumable(
                self.resume_from,
                f"its optimizer or scheduler state does not fit the parameters its run trains "
                f"({type(err).__name__}: {err})",
            ) from None
        # Its state holds the settings it was made with; the config's apply, as it says
        self.scheduler.patience = self.config.scheduler_patience
        self.scheduler.factor = self.config.scheduler_factor
        if self.config.learning_rate != checkpoint["config"].get("learning_rate"):
            for group in self.optimizer.param_groups:  # asked for anew: e.g. after divergence
                group["lr"] = self.config.learning_rate
        if self.scaler is not None and checkpoint.get("scaler_state"):
            self.scaler.load_state_dict(checkpoint["scaler_state"])
        self.progress = Progress(**checkpoint["progress"])
        if not self.dist.is_main:  # the epoch's loss so far, of every rank, is rank 0's
            self.progress.epoch_loss_sum, self.progress.epoch_loss_count = 0.0, 0
        torch.set_rng_state(checkpoint["rng_state"]["torch"])
        self._restart_best_for(bool(checkpoint.get("data_summary", {}).get("val_images", ())))
        summary, saved_settings = checkpoint.get("data_summary", {}), checkpoint["config"]
        self._restart_best_for_new_validation(summary, saved_settings)
        self._forget_start_score_of_other_images(summary, saved_settings)
        saved = TrainConfig.from_dict(checkpoint["config"])
        if not self._restart_epoch_for(checkpoint.get("data_summary", {}), saved):
            self._continue_epoch_in_new_steps(saved)
        if self.progress.step_in_epoch:  # checkpoints before 2026-12-07 lack the epoch's time
            self.epoch_carried_s = float(checkpoint.get("epoch_elapsed_s", 0.0))
        flat = self.progress.epochs_without_improvement  # 0 where the best is chosen anew
        check_not_stopped_early(checkpoint, self.config.early_stopping, flat, self.resume_from)

    def _restart_best_for(self, had_validation: bool) -> None:
        """A run resumed with validation data where it had none, or without where it had:
        its best epoch was chosen by another metric (validation IoU or negative training
        loss), which this session's cannot be compared with, so the best is chosen anew."""
        if had_validation == self.has_validation:
            return
        p, before = self.progress, "val_iou" if had_validation else "negative train loss"
        if p.best_epoch >= 0:
            self.notes.append(
                f"the run's best epoch ({p.best_epoch + 1}) was chosen by {before}, and this "
                f"session by {self._metric_name()}: its best epoch is chosen anew"
            )
        p.best_metric, p.best_epoch, p.epochs_without_improvement = -math.inf, -1, 0
        p.start_metric = math.nan  # of another metric, or of none

    def _keep_validation_split(self, checkpoint: dict | None, val_fraction: float) -> None:
        """A run resumed with its validation held out of its training images holds out the
        images its checkpoint did, whatever the seed now and with any images added since
        (they train, but for new planes of a held-out stack: held out with it, which
        changes the validation): its epochs are then scored on the same images, and its
        best epoch stays comparable. Where those images are not all there any more, or the
        only image was split in two, the split stays as drawn and ``validation_changed``
        says how. A ``val_fraction`` other than the run's holds out as drawn with it."""
        self.validation_changed = ""
        if checkpoint is None or self.held_out_of is None:
            return
        summary = checkpoint.get("data_summary", {})
        before, trained = list(summary.get("val_images", ())), summary.get("train_images", ())
        now = [image.name for image in self.val_images]
        images = self.held_out_of
        names = [image.name for image in images]
        split_one = bool(set(before) & set(trained))  # the part of an image held out
        if not before or (set(before) == set(now) and not (split_one and len(images) > 1)):
            return  # none before (_restart_best_for says so), or the same
        if summary.get("val_held_out") is False:  # given apart before: none to hold out again
            self.validation_changed = (
                f"validated on {before}, and now on {now}, held out of the training images"
            ) + _trained_on(now, trained)
            return
        fraction = checkpoint.get("config", {}).get("val_fraction")
        if isinstance(fraction, float) and fraction != val_fraction:
            # asked for anew (it was kept, unsaid, though the config said otherwise): the
            # split drawn with it stands; none held out now is said as validation dropped
            if now:
                self.validation_changed = (
                    f"held out {before} at val_fraction={fraction}, and now {now} at "
                    f"val_fraction={val_fraction}"
                ) + _trained_on(now, trained)
            return
        if split_one and now and self._hold_out_the_same_part(before, fraction):
            return
        if not split_one and len(set(names)) == len(names) and set(before) < set(names):
            # a plane annotated since in a held-out stack is held out with it (trained on,
            # its neighbours validated it)
            groups = {image.group for image in images if image.name in before}
            self.train_images = [image for image in images if image.group not in groups]
            self.val_images = [image for image in images if image.group in groups]
            joined = [image.name for image in self.val_images if image.name not in before]
            if joined:
                self.validation_changed = (
                    f"held out {before}, and now also {joined}, of the stacks it held out: a "
                    "stack is held out whole"
                )
            return
        self.validation_changed = f"held out {before}, and now {now}" + _trained_on(now, trained)

    def _hold_out_the_same_part(self, before: list[str], fraction: float | None) -> bool:
        """A run that held out part of its only image, resumed with more images: that part
        stays held out (the whole image was, then, part of it trained on before), the rest
        of it trains with the others (``fraction``: the run's ``val_fraction``, which drew
        the part). False where the image is not there as one."""
        images = self.held_out_of
        named = [image for image in images if image.name in before]
        if len(before) != 1 or len(named) != 1 or not isinstance(fraction, float):
            return False
        notes: list[str] = []  # (said when the run began, and said again)
        try:
            (top,), (part,) = split_one_image(named[0], fraction, notes)
        except ValueError:  # its shape or objects changed: no longer the part it was
            return False
        self.train_images = [top if image is named[0] else image for image in images]
        self.val_images = [part]
        self.split_note = "".join(notes)
        return True

    def _forget_start_score_of_other_images(self, summary: dict, saved: dict) -> None:
        """The starting model's score (see ``Progress.start_metric``) was measured on the
        validation images the checkpoint names, in the tiles of its settings ``saved``;
        resumed on others (given anew, or a held-out image gone), or tiled otherwise, it
        cannot be compared with this session's epochs."""
        if "val_fingerprints" in summary:
            other = summary["val_fingerprints"] != self.val_fingerprints
        else:  # a checkpoint written before they were kept: by their names
            now = sorted(image.name for image in self.val_images)
            other = sorted(summary.get("val_images", ())) != now
        if other or self._other_tiles(saved) or self._other_scoring(summary):
            self.progress.start_metric = math.nan

    def _restart_best_for_new_validation(self, summary: dict, saved: dict) -> None:
        """The run's validation images changed (see :meth:`_keep_validation_split`, and
        :meth:`_other_validation` for images given anew, or of the same names with other
        pixels or labels), or their tiles did (:meth:`_other_tiles`): its best epoch was
        scored on other objects, so the best epoch is chosen anew (it was kept, and
        exported instead of every epoch on the new data)."""
        p = self.progress
        if not self.has_validation or p.best_epoch < 0:
            return
        changed = self.validation_changed or self._other_validation(summary)
        tiles = self._other_tiles(saved)
        if changed:
            what = f"the run's validation images changed (it {changed})"
        elif tiles:
            what = f"the run's validation images are cut into other tiles now ({tiles})"
        elif self._other_scoring(summary):
            what = (
                "the checkpoint's validation scores were counted as an earlier version of "
                "napari-samtune counted them (each piece of an object in every tile it "
                "reached)"
            )
        else:
            return
        self.notes.append(
            f"{what}: its best epoch ({p.best_epoch + 1}) was scored on other objects, so the "
            "best epoch is chosen anew"
        )
        p.best_metric, p.best_epoch, p.epochs_without_improvement = -math.inf, -1, 0
        p.start_metric = math.nan  # scored on the other images

    @staticmethod
    def _other_scoring(summary: dict) -> bool:
        """Whether the checkpoint's validation was scored otherwise than validation scores
        now (:data:`VALIDATION_SCORING`; a checkpoint of before it was kept: the first way)."""
        return summary.get("val_scoring", 1) != VALIDATION_SCORING

    def _other_tiles(self, saved: dict) -> str:
        """How this session's settings cut the validation images into the tiles it scores
        otherwise than the checkpoint's settings ``saved`` did: a patch size or smallest
        object area changed scores other objects (48-pixel tiles of the same images scored
        0.60 where 112-pixel ones scored 0.54); "" where they are the same."""
        changes = [
            f"{name} {saved[name]} before, {getattr(self.config, name)} now"
            for name in ("patch_size", "min_object_area")
            if saved.get(name) not in (None, getattr(self.config, name))
        ]
        return "; ".join(changes)

    def _other_validation(self, summary: dict) -> str:
        """How this session's validation images differ from those the checkpoint's
        ``summary`` names, by their pixels and labels where it kept their fingerprints (file
        names repeat across experiments: c0.tif); "" where they are the same."""
        before = sorted(summary.get("val_images", ()))
        now = sorted(image.name for image in self.val_images)
        if before != now:
            return f"validated on {before}, and now on {now}"
        fingerprints = summary.get("val_fingerprints")
        if fingerprints is not None and fingerprints != self.val_fingerprints:
            return f"validated on {before}, whose pixels or labels are others now"
        return ""

    def _restart_epoch_for(self, summary: dict, saved: TrainConfig) -> bool:
        """A run stopped mid-epoch with another number of processes, or another number of
        samples an epoch (``summary``: its checkpoint's data summary): its steps counted
        each process's own samples of another shuffle, so the epoch starts over (some
        samples again) rather than skip or repeat samples unsaid; stopped after the epoch's
        last step, only its end is left. True if it was either."""
        p = self.progress
        world, samples = summary.get("world_size"), summary.get("samples_per_epoch")
        now_world, now_samples = self.dist.world_size, self.sampler.n_samples
        new_world, new_samples = world not in (None, now_world), samples not in (None, now_samples)
        if not (new_world or new_samples) or p.step_in_epoch == 0:
            return False
        if new_world and new_samples:
            then = (
                f"{world} process(es) and {samples} samples an epoch and continues with "
                f"{now_world} process(es) and {now_samples} samples"
            )
        elif new_world:
            then = f"{world} process(es) and continues with {now_world}"
        else:
            then = f"{samples} samples an epoch and continues with {now_samples}"
        steps = steps_per_epoch(samples or self.sampler.n_samples, world or 1, saved)
        if p.step_in_epoch >= steps:  # every sample trained on: no step again
            self.notes.append(
                f"the run was stopped after the last step of epoch {p.epoch + 1} with {then}: "
                "its samples are done"
            )
            p.step_in_epoch = self.steps_per_epoch
            return True
        self.notes.append(
            f"the run was stopped in epoch {p.epoch + 1} with {then}: epoch {p.epoch + 1} "
            "starts over"
        )
        p.step_in_epoch, p.epoch_loss_sum, p.epoch_loss_count = 0, 0.0, 0
        return True

    def _continue_epoch_in_new_steps(self, saved: TrainConfig) -> None:
        """A run stopped mid-epoch and resumed with another batch size or gradient
        accumulation: its steps held another number of samples, so the steps done are
        counted again in samples, and the epoch goes on from the step holding the first
        sample not yet trained on, rather than skipping samples or repeating many unsaid."""
        p, c = self.progress, self.config
        before = saved.batch_size * saved.grad_accumulation  # samples in a step, per process
        now = c.batch_size * c.grad_accumulation
        if p.step_in_epoch == 0 or before == now:
            return
        done = min(p.step_in_epoch * before, self.n_local)
        step = self.steps_per_epoch if done == self.n_local else done // now
        again = done - min(step * now, self.n_local)
        where = f"from step {step + 1}" if step < self.steps_per_epoch else "its samples are done"
        self.notes.append(
            f"the run was stopped in epoch {p.epoch + 1} after {done} sample(s) in steps of "
            f"{before} and continues in steps of {now}: {where}"
            + (f", training on {again} sample(s) of the epoch again" if again else "")
        )
        p.step_in_epoch = step

    # -- the run ---------------------------------------------------------------------------


def steps_per_epoch(n_samples: int, world_size: int, config: TrainConfig) -> int:
    """Optimizer steps of each of ``world_size`` processes in an epoch (see :func:`ddp.shard`)."""
    n_local = math.ceil(n_samples / world_size)
    return math.ceil(math.ceil(n_local / config.batch_size) / config.grad_accumulation)


def _trained_on(now: list[str], trained) -> str:
    """The clause saying which of the images held out ``now`` the run ``trained`` on before
    (a held-out image removed since: another one was drawn, its scores flattering the model
    it had trained, unsaid), or ""."""
    seen = [name for name in now if name in set(trained)]
    if not seen:
        return ""
    return (
        f"; {seen} trained in its earlier epochs, so its scores flatter the model: give the "
        "images it held out back, or start a new run on these"
    )
