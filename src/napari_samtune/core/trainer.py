"""The state and loop of one training run, behind :func:`napari_samtune.core.train.iter_train`.

One epoch = ``min_samples_per_epoch`` patches (sharded over ranks), grouped into
batches of ``batch_size`` and optimizer steps of ``grad_accumulation`` batches.
Every sample's patch, objects and prompts derive from (seed, sample, epoch), so a
run and its resume see exactly the same data. After each epoch: validation
(box- and point-prompt IoU), the plateau scheduler, checkpoints, early stopping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from napari_samtune.core import distributed as ddp
from napari_samtune.core.accelerate import use_fast_paths
from napari_samtune.core.checkpoint_models import restore_model
from napari_samtune.core.checkpoints import check_output_folder
from napari_samtune.core.config_checks import check_lora_rank
from napari_samtune.core.fast_encoder import encode
from napari_samtune.core.heap import keep_freed_memory
from napari_samtune.core.model_source import recorded_model
from napari_samtune.core.patches import PatchSampler, tile_patches
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.run_data import (
    TrainData,
    blank_images,
    image_like_labels,
    listed,
    prepare_run_data,
)
from napari_samtune.core.train_checkpoints import (
    base_parts_digest,
    check_resumable,
    read_checkpoint,
    resolve_checkpoint,
)
from napari_samtune.core.train_embeddings import EmbeddingLRU, stored_embeddings
from napari_samtune.core.train_events import (
    EpochDone,
    StartValidated,
    StepDone,
    TrainEvent,
    TrainingStarted,
)
from napari_samtune.core.train_export import (
    check_registration,
    metrics_record,
    name_asked_before,
    record_epoch,
    validation_fingerprint,
)
from napari_samtune.core.train_setup import (
    autocast,
    build_training_model,
    iter_chunks,
    may_leave_parameters_unused,
    resolve_precision,
    set_train_mode,
    set_trainable,
)
from napari_samtune.core.train_step import (
    SamTrainingStep,
    prepare_input,
    with_first_prompts,
)
from napari_samtune.core.train_validation import metrics_from_sums, validate_patches
from napari_samtune.core.trainer_divergence import TrainerDivergenceMixin
from napari_samtune.core.trainer_files import TrainerFilesMixin
from napari_samtune.core.trainer_resume import TrainerResumeMixin, steps_per_epoch
from napari_samtune.core.validation_split import (
    EmptyPartError,
    repeated_pairs,
    same_images,
    split_validation,
)


class Trainer(TrainerResumeMixin, TrainerFilesMixin, TrainerDivergenceMixin):
    """The state of one run; :meth:`run` is the generator behind :func:`iter_train`."""

    def __init__(
        self,
        config: TrainConfig,
        train_data: TrainData,
        val_data: TrainData | None,
        out_dir: str | Path,
        stop_event: threading.Event | None,
        resume_from: str | Path | None,
        model_name: str | None,
    ) -> None:
        from napari_samtune.core.devices import resolve_device

        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.out_dir, self.stop_event = check_output_folder(out_dir, "out_dir"), stop_event
        resumed_run = self.out_dir if resume_from is not None else None
        self.model_name = check_registration(model_name, resumed_run)
        self.train_images, self.val_images = self._prepare_data(config, train_data, val_data)
        device = resolve_device(config.device)
        self.dist = ddp.context_from_env(device.type, stop_event)
        self.epoch_carried_s = 0.0  # the epoch's time in the session(s) before a resume
        self.checkpoint_elapsed_s: float | None = None  # the run's time at its last checkpoint
        try:  # a process failing here leaves the group (gloo's threads aborted the exit)
            self._set_up(config, device, resume_from)
        except BaseException:
            ddp.shutdown(self.dist)
            raise
        self.run_start = self.epoch_start = time.perf_counter()
        self.step_seconds, self.val_seconds = [], []
        self.stopped_by_user = self.stopped_early = False
        self.steps_done, self.start_epoch = 0, self.progress.epoch  # of this session
        self.nonfinite_in_a_row = 0  # fp16: steps of non-finite loss the scaler skipped

    def _set_up(self, config: TrainConfig, device: torch.device, resume_from) -> None:
        """Everything after joining the process group: device, checkpoint, model, data."""
        self.device = ddp.device_for(self.dist, device)
        ddp.check_same_settings(self.dist, self.device, asdict(config))
        ddp.check_same_data(self.dist, self.device, self.train_images, self.val_images)
        if resume_from is not None:  # a run's folder means its checkpoints/last.pt
            resume_from = resolve_checkpoint(resume_from)
        checkpoint = read_checkpoint(resume_from) if resume_from is not None else None
        if checkpoint is not None and self.model_name is None:
            self.model_name = name_asked_before(checkpoint, self.out_dir)
        self._check_out_dir(resume_from)
        self._keep_validation_split(checkpoint, config.val_fraction)
        self.resume_from = resume_from
        self._identify_run(checkpoint)
        self._setup_model(config, checkpoint, resume_from)
        self._setup_data()
        self._setup_optimizer(checkpoint)
        self._check_disk_space()
        self._adopt_newer_best(checkpoint)

    def _prepare_data(self, config: TrainConfig, train_data: TrainData, val_data: TrainData | None):
        """Training and validation images; pairs without objects go to ``self.left_out``,
        the names of validation pairs that repeat a training pair to ``self.val_repeats``, of
        those with a training image's pixels but other labels to ``self.val_same_images``;
        a pair that repeats another of the same data is left out before any split, named in
        ``self.duplicates`` (see :func:`drop_duplicates`)."""
        train_images, self.left_out, self.duplicates = prepare_run_data(train_data, "training")
        self.val_repeats = self.val_same_images = ()
        self.held_out_of = None  # the images validation was split from (see below)
        self.split_note = ""  # a single image's held-out part scores only cut objects
        val_data = None if val_data is None else listed(val_data, "validation")
        if val_data is not None and len(val_data):
            val_images, left_out, duplicates = prepare_run_data(val_data, "validation")
            # named as validation pairs: "img0.tif / img0.tif" was taken for the training one
            self.left_out += tuple(f"{name} (validation)" for name in left_out)
            self.duplicates += duplicates
            self.val_repeats = repeated_pairs(val_images, train_images)
            self.val_same_images = same_images(val_images, train_images)
            return train_images, val_images
        self.held_out_of = train_images
        notes: list[str] = []
        try:
            split = split_validation(train_images, config.val_fraction, config.seed, notes)
        except EmptyPartError as err:  # the pairs left out are not said before training
            raise EmptyPartError(err.image, err.where, err.part, self.left_out) from None
        self.split_note = "".join(notes)  # one, or none
        return split

    def _setup_model(self, config: TrainConfig, checkpoint: dict | None, path) -> None:
        if checkpoint is None:
            sam, arch, self.base_model_id = build_training_model(config)
            check_lora_rank(config.lora_rank, arch)  # configs not made by config_from_preset
            parts = base_parts_digest(sam, config) if config.checkpoint_trainable_only else None
        else:
            check_resumable(checkpoint, config, path)
            sam, arch = restore_model(checkpoint, path)
            self.base_model_id = checkpoint.get("base_model_id", "")
            parts = checkpoint.get("base_parts_digest")
        self.base_parts = {} if parts is None else {"base_parts_digest": parts}
        self.precision = resolve_precision(config.mixed_precision, self.device)
        # what was asked ("auto"): a run continued on another machine chooses again there
        self.precision_asked = config.mixed_precision
        self.config = replace(
            config,
            model=recorded_model(config.model),
            patch_size=config.patch_size or arch.img_size,
            mixed_precision=self.precision,
            # under torchrun, "cuda": each rank's own index would be refused on resume
            device=self.device.type if self.dist.enabled else str(self.device),
        )
        if self.config.fast_attention:  # swaps module classes only: state dict unchanged
            use_fast_paths(sam)
        self.sam, self.arch = sam.to(self.device), arch
        self.params = set_trainable(self.sam, self.config)
        c = self.config
        step = SamTrainingStep(self.sam, c.n_iterative_prompts, c.mask_loss, c.fast_attention)
        unused = may_leave_parameters_unused(self.sam)
        if self.dist.enabled:
            ddp.strides_as_gradients(self.sam)
        self.step_module = ddp.wrap_module(step, self.dist, self.device, unused)

    def _setup_data(self) -> None:
        c = self.config
        self.sampler = PatchSampler(
            self.train_images,
            c.patch_size,
            c.min_object_area,
            c.min_samples_per_epoch,
            c.seed,
            vary_per_epoch=not c.encoder_frozen,  # cached embeddings need fixed patches
        )
        val_patches = tile_patches(self.val_images, c.patch_size, c.min_object_area)
        self.val_patches = val_patches[self.dist.rank :: self.dist.world_size]
        self.has_validation = bool(val_patches)
        self.val_fingerprints = sorted(validation_fingerprint(im) for im in self.val_images)
        self.cache = EmbeddingLRU(c.embedding_cache_size if c.encoder_frozen else 0)
        self.stored = stored_embeddings(c, self.base_model_id, self.arch, self.device)
        self.n_local = len(ddp.shard(np.arange(self.sampler.n_samples), self.dist))
        self.steps_per_epoch = steps_per_epoch(self.sampler.n_samples, self.dist.world_size, c)

    def run(self) -> Iterator[TrainEvent]:
        self._restore_metrics()
        on_cpu_fast = self.config.fast_attention and self.device.type == "cpu"
        with keep_freed_memory() if on_cpu_fast else nullcontext():
            validates_start = self._validates_start()
            yield self._started(validates_start)
            start = self._validate_start() if validates_start else None
            if start is not None:
                yield start
            while self.progress.epoch < self.config.epochs:
                yield from self._train_epoch()
                if self.stopped_by_user:
                    break
                yield self._end_epoch()
                if self.stopped_early:
                    break
            yield self._finish()

    def _started(self, validates_start: bool) -> TrainingStarted:
        return TrainingStarted(
            config=self.config,
            n_train=len(self.train_images),
            n_val=len(self.val_images),
            samples_per_epoch=self.sampler.n_samples,
            steps_per_epoch=self.steps_per_epoch,
            device=str(self.device),
            n_trainable_params=sum(p.numel() for p in self.params),
            start_epoch=self.progress.epoch,
            world_size=self.dist.world_size,
            left_out=self.left_out,
            duplicates=self.duplicates,
            val_repeats=self.val_repeats,
            val_same_images=self.val_same_images,
            notes=tuple(filter(None, [self.split_note, *self.notes])),
            blank=blank_images(self.train_images),
            validates_start=validates_start,
            image_like=image_like_labels([*self.train_images, *self.val_images]),
            start_metric=self.progress.start_metric,
            blank_validation=blank_images(self.val_images),
            best_epoch=self.progress.best_epoch,
        )

    def _validates_start(self) -> bool:
        """A fresh run with validation data scores the model it starts from first (a stop
        pressed while loading skips it): what its epochs must beat to be worth using."""
        p = self.progress
        fresh = p.global_step == 0 and p.epoch == 0 and math.isnan(p.start_metric)
        return fresh and self.has_validation and not self._stop_requested()

    def _validate_start(self) -> StartValidated | None:
        """The starting model's score; None when Stop came first (it would wait for the
        whole validation: minutes for a large model on a CPU). Under torchrun the ranks
        validate shards of their own sizes, so they cannot stop together: they finish it."""
        start = time.perf_counter()
        stop = self.stop_event
        stop_check = stop.is_set if stop is not None and not self.dist.enabled else None
        metrics = self._validate(stop_check)
        if metrics is None:
            self.stopped_by_user = True
            return None
        seconds = time.perf_counter() - start
        self.val_seconds.append(seconds)  # the epochs' validations take as long: the ETA
        self.progress.start_metric = metrics["val_iou"]
        return StartValidated(metrics, metrics["val_iou"], seconds)

    def _train_epoch(self) -> Iterator[StepDone]:
        epoch = self.progress.epoch
        order = ddp.shard(self.sampler.epoch_order(epoch), self.dist).tolist()
        batches = list(iter_chunks(order, self.config.batch_size))
        steps = list(iter_chunks(batches, self.config.grad_accumulation))
        set_train_mode(self.sam, self.config)
        self.epoch_start = time.perf_counter()
        if self._stop_requested():  # set while loading or validating: no step begins
            return
        for step in range(self.progress.step_in_epoch, len(steps)):
            start = time.perf_counter()
            loss = self._optimizer_step(steps[step], epoch)
            self.step_seconds.append(time.perf_counter() - start)
            p = self.progress
            p.step_in_epoch, p.global_step = step + 1, p.global_step + 1
            p.epoch_loss_sum, p.epoch_loss_count = p.epoch_loss_sum + loss, p.epoch_loss_count + 1
            self.steps_done += 1
            yield StepDone(epoch, step + 1, len(steps), loss, self._lr(), self._eta())
            if self._stop_requested():
                return

    def _stop_requested(self) -> bool:
        """The stop event is set on any rank (all ranks call this at the same points)."""
        requested = self.stop_event is not None and self.stop_event.is_set()
        self.stopped_by_user = ddp.any_rank(requested, self.dist, self.device)
        return self.stopped_by_user

    def _optimizer_step(self, micro_batches: list[list[int]], epoch: int) -> float:
        """Forward/backward every micro-batch, then one optimizer step; the mean loss over
        the step's samples (each micro-batch weighs as many samples as it has: a last one
        of 1 sample after one of 2 weighed half, not a third, unlike the batch it stands for)."""
        self.optimizer.zero_grad(set_to_none=True)
        total, samples = 0.0, sum(map(len, micro_batches))
        for i, indices in enumerate(micro_batches):
            inputs = [self._training_input(index, epoch) for index in indices]
            embeddings = self._frozen_embeddings(inputs, "train")
            last = i == len(micro_batches) - 1
            sync = self.step_module.no_sync() if self.dist.enabled and not last else nullcontext()
            with sync:
                with autocast(self.precision, self.device):
                    loss = self.step_module(inputs, embeddings)
                scaled = loss * (len(indices) / samples)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.item() * len(indices) / samples
        if self.scaler:  # fp16: the scaler skips steps whose gradients overflowed
            self._count_skipped(total, epoch)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self._refuse_divergence(total, epoch, self._norm("grad"))
            self.optimizer.step()
        return total

    def _norm(self, what: str) -> float:
        """The 2-norm of the trained parameters' gradients (``"grad"``) or weights
        (``"data"``): inf or nan where one is not finite, or so large that its square is
        not (where Adam's squared gradients overflow too). A finite loss of 1e25 gave inf
        gradients, which the optimizer turned into NaN weights, saved as best.pt. (The
        2-norm: a max-abs norm took 1 s for ViT-B's weights on a CPU, this 0.06 s; by
        tensor: torch.nn.utils.get_total_norm is of torch 2.6, and 2.4 is supported.)"""
        tensors = [getattr(p, what) for p in self.params]
        norms = [torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors if t is not None]
        return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0

    def _training_input(self, index: int, epoch: int):
        patch = self.sampler.patch(index, epoch)
        object_ids = self.sampler.sample_objects(
            patch, self.config.n_objects_per_batch, index, epoch
        )
        pixels = not self._is_cached("train", patch.key)
        inp = prepare_input(self.sam, patch, object_ids, self.device, with_pixels=pixels)
        rng = np.random.default_rng([self.config.seed, 3, index, epoch])
        return with_first_prompts(inp, rng, self.config.box_jitter)

    def _frozen_embeddings(self, inputs: list, split: str) -> torch.Tensor | None:
        """Cached embeddings when the encoder is frozen (computing the missing ones), else None."""
        if not self.config.encoder_frozen:
            return None

        def compute(pixels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), autocast(self.precision, self.device):
                return encode(self.sam, pixels)

        keys = [(split, i.key) for i in inputs]
        return self.cache.get_many(keys, inputs, partial(self.stored.embeddings, compute=compute))

    def _is_cached(self, split: str, key: tuple) -> bool:
        """The frozen encoder's embedding of this patch is cached: its pixels are not needed."""
        return self.config.encoder_frozen and (split, key) in self.cache

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _eta(self) -> float:
        if not self.step_seconds:
            return math.nan
        p, c = self.progress, self.config
        steps_left = max(0, (c.epochs - p.epoch) * self.steps_per_epoch - p.step_in_epoch)
        val_each = float(np.mean(self.val_seconds)) if self.val_seconds else 0.0
        step_each = float(np.mean(self.step_seconds[-50:]))
        return steps_left * step_each + max(0, c.epochs - p.epoch) * val_each

    # -- epoch end ----------------------------------------------------------------------

    def _end_epoch(self) -> EpochDone:
        p = self.progress
        sums = ddp.all_reduce_sum([p.epoch_loss_sum, p.epoch_loss_count], self.dist, self.device)
        train_loss = float(sums[0] / max(sums[1], 1))
        # before validation and the checkpoints: weights a step made non-finite never saved
        self._refuse_non_finite_weights(self._norm("data"), f"by the end of epoch {p.epoch + 1}")
        val_start = time.perf_counter()
        val_metrics = self._validate()
        self.val_seconds.append(time.perf_counter() - val_start)
        metric = val_metrics["val_iou"] if val_metrics else -train_loss
        self.scheduler.step(metric)
        is_best = metric > p.best_metric
        if is_best:
            p.best_metric, p.best_epoch, p.epochs_without_improvement = metric, p.epoch, 0
            p.time_to_best_s = self._elapsed()
        else:
            p.epochs_without_improvement += 1
        epoch = p.epoch
        p.epoch, p.step_in_epoch, p.epoch_loss_sum, p.epoch_loss_count = epoch + 1, 0, 0.0, 0
        patience = self.config.early_stopping
        flat = patience is not None and p.epochs_without_improvement >= patience
        self.stopped_early = flat and p.epoch < self.config.epochs  # the last epoch ends anyway
        event = EpochDone(
            epoch, train_loss, val_metrics, metric, self._metric_name(), self._lr(), None,
            is_best, p.best_metric, self._eta(), self._epoch_seconds(),
        )  # fmt: skip
        self.epoch_carried_s = 0.0
        # last.pt holds the epoch's line too: killed before the line is written, the
        # resumed run writes it (see _restore_metrics)
        self.epoch_record = metrics_record(event)
        event = replace(event, checkpoint_path=self._write_checkpoints(is_best))
        if self.dist.is_main:
            record_epoch(self.files.metrics, self.epoch_record)
        return event

    def _metric_name(self) -> str:
        return "val_iou" if self.has_validation else "negative train loss"

    def _epoch_seconds(self) -> float:
        """Wall time of the epoch in progress, with its part before a resume."""
        return self.epoch_carried_s + time.perf_counter() - self.epoch_start

    def _elapsed(self) -> float:
        return self.progress.elapsed_s + time.perf_counter() - self.run_start

    def _validate(self, stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
        """The validation metrics ({} without validation data); None when ``stop()`` ended
        it early."""
        if not self.has_validation:
            return {}
        self.sam.eval()
        sums = validate_patches(
            self.sam,
            self.val_patches,
            self.device,
            lambda inputs: self._frozen_embeddings(inputs, "val"),
            lambda: autocast(self.precision, self.device),
            self.config.fast_attention,
            lambda key: self._is_cached("val", key),
            stop,
        )
        set_train_mode(self.sam, self.config)
        if sums is None:
            return None
        return metrics_from_sums(ddp.all_reduce_sum(sums, self.dist, self.device))
