"""The files of a training run: checkpoints after each epoch, and at the end the export,
the registration and ``summary.json``. A mixin of :class:`~napari_samtune.core.trainer.Trainer`
(it uses the run's model, optimizer, progress and distributed context); rank 0 writes.
"""

from __future__ import annotations

import errno
import re
import shutil
import uuid
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

from napari_samtune.core import distributed as ddp
from napari_samtune.core.checkpoints import UnreadableFile, atomic_write, first_line, one_file
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train_checkpoints import write_checkpoint
from napari_samtune.core.train_events import TrainingFinished
from napari_samtune.core.train_export import (
    RunFiles,
    data_summary,
    export_and_register,
    model_stem,
    record_epoch,
    write_json,
)
from napari_samtune.core.train_validation import VALIDATION_SCORING


class TrainerFilesMixin:
    """Checkpoints, export, registration and summary of a :class:`Trainer`'s run."""

    def _check_out_dir(self, resume_from: str | Path | None) -> None:
        """A run writes into its own folder or an unused one, never over another run's
        checkpoints, metrics or registered model (which would mix the two runs), nor over a
        model file a user keeps there (an exported ``model.pth``, a kept ``best.pt``)."""
        files = self.files
        run_files = (files.last, files.metrics, files.summary, files.best, files.model)
        found = [_relative(f, self.out_dir) for f in run_files if f.exists()]
        if not found or (resume_from is not None and one_file(resume_from, files.last)):
            return
        if resume_from is not None and found == [_relative(files.best, self.out_dir)]:
            return  # carried over when it was resumed here before: see _identify_run
        replaced = models_replaced(files)
        if resume_from is None and replaced and not (files.last.exists() or files.metrics.exists()):
            raise ValueError(f"out_dir {str(self.out_dir)!r} {replaced}")  # no run: model files
        if resume_from is None:
            continue_it = (
                f"continue it with resume_from={str(files.last)!r}"
                if files.last.exists()
                else "its checkpoints are gone, so it cannot be continued"
            )
            raise ValueError(
                f"out_dir {str(self.out_dir)!r} already holds a training run ({', '.join(found)}); "
                f"{continue_it}, or choose a new folder"
            )
        raise ValueError(
            f"out_dir {str(self.out_dir)!r} holds another training run ({', '.join(found)}) "
            f"than resume_from={str(resume_from)!r}; continuing that run there would mix the two "
            "runs' checkpoints and metrics: continue it in its own folder or in a new one"
        )

    def _identify_run(self, checkpoint: dict | None) -> None:
        """The run's id (a new run's, or the one its checkpoint carries), saved in every
        checkpoint. A best.pt the resumed run keeps (beside the checkpoint it resumes from,
        carried into a new folder, or there already) and exports as its model unless a
        later epoch beats it must be of the same run: one of another run (a backup's
        last.pt restored into the wrong run's folder) was exported as this run's best
        model, even of another architecture, unsaid."""
        self.run_id = (checkpoint or {}).get("run_id") or uuid.uuid4().hex
        if checkpoint is None:
            return
        kept = {self.resume_from.with_name("best.pt").resolve(), self.files.best.resolve()}
        for best_path in sorted(kept):
            self._check_same_run(best_path, checkpoint)

    def _check_same_run(self, best_path: Path, checkpoint: dict) -> None:
        """``ValueError`` if the best.pt at ``best_path`` is of another run than
        ``checkpoint`` (see :meth:`_identify_run`)."""
        try:  # mapped, not read: it may be GBs
            best = torch.load(best_path, map_location="cpu", weights_only=True, mmap=True)
            theirs = (best.get("run_id"), best["architecture"], best.get("base_model_id", ""))
        except Exception:  # none, or damaged: this run's next best replaces it
            return
        ours = (checkpoint.get("run_id"), checkpoint["architecture"])
        ours += (checkpoint.get("base_model_id", ""),)
        both_named = theirs[0] is not None and ours[0] is not None
        if (theirs[0] == ours[0]) if both_named else (theirs[1:] == ours[1:]):
            return
        raise ValueError(
            f"{str(best_path)!r} is of another training run than {str(self.resume_from)!r} "
            f"({_how_other(theirs, ours)}): continuing would keep it as this run's best "
            f"epoch and export it as its model. Move {best_path.name} out of "
            f"{str(best_path.parent)!r}, or continue the run it belongs to from its own last.pt"
        )

    def _carry_over_best(self) -> None:
        """A run resumed into a new folder starts with the best checkpoint of the old one."""
        if self.resume_from is None or self.progress.best_epoch < 0:
            return
        earlier, here = self.resume_from.with_name("best.pt"), self.files.best
        if earlier.exists() and not here.exists():
            atomic_write(here, lambda tmp: shutil.copyfile(earlier, tmp))

    def _restore_metrics(self) -> None:
        """A run resumed in its own folder: metrics.jsonl gets the line of the checkpoint's
        last epoch if a kill came between that checkpoint and the line, and loses a line
        left unfinished (see :func:`record_epoch`)."""
        resumed = self.resume_from
        if self.dist.is_main and resumed is not None and one_file(resumed, self.files.last):
            record_epoch(self.files.metrics, self.epoch_record)

    def _adopt_newer_best(self, checkpoint: dict | None) -> None:
        """A run killed between an epoch's best.pt and its last.pt, resumed in its folder:
        best.pt holds that epoch's weights, and last.pt's best is the one before. The redone
        epoch, scoring lower (other settings, a GPU's nondeterminism), left best.pt holding
        weights of a score the summary did not name, exported as the model of the best
        epoch it named; the run's best is now best.pt's. Mapped, not read: it may be GBs."""
        if checkpoint is None or not one_file(self.resume_from, self.files.last):
            return
        try:
            best = torch.load(self.files.best, map_location="cpu", weights_only=True, mmap=True)
            newer = int(best["epoch"]) > int(checkpoint["epoch"])
            same_metric = bool(best["data_summary"]["val_images"]) == self.has_validation
            metric, done = float(best["best_metric"]), best["progress"]
        except Exception:  # none, or damaged: exporting it says so
            return
        if newer and same_metric and metric > self.progress.best_metric:
            p = self.progress
            p.best_metric, p.best_epoch = metric, int(done["best_epoch"])
            p.time_to_best_s, p.epochs_without_improvement = float(done["time_to_best_s"]), 0

    def _check_disk_space(self) -> None:
        """Refuse a run whose checkpoints and model do not fit on their disks, before it
        trains: it failed at its first checkpoint, an epoch later. Rank 0 writes them."""
        from napari_samtune.core.disk_space import run_needs, space_problem
        from napari_samtune.core.registry import user_models_dir

        problem = None
        if self.dist.is_main:
            models = user_models_dir()
            needs = run_needs(self.sam, self.config.checkpoint_trainable_only, self.out_dir, models)
            fixes = {self.out_dir: "train into a folder", models: "set SAMTUNE_MODELS_DIR to one"}
            problem = space_problem(needs, fixes)
        if ddp.any_rank(problem is not None, self.dist, self.device):
            refused = OSError(problem or "the first process of this run has no room for its "
                              "checkpoints and model: see its message")  # fmt: skip
            refused.errno = errno.ENOSPC
            raise refused

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.out_dir)

    def _write_checkpoints(self, is_best: bool) -> Path | None:
        """Write best.pt (weights) if ``is_best``, then last.pt (resumable); rank 0 only.

        In that order: a last.pt names the best epoch, and a run cut short between the two
        writes (a full disk, a kill) must not leave one naming a best.pt not written yet;
        it leaves the earlier last.pt, and the resumed run trains that epoch again."""
        if not self.dist.is_main:
            return None
        # with the first checkpoint, not at the start: a run stopped before its first step
        # leaves nothing, and a resumed one stopped at once keeps its earlier config
        write_json(self.files.config, asdict(self.saved_config))
        self._carry_over_best()
        common = self._checkpoint_fields()
        if is_best:
            write_checkpoint(
                self.files.best, self.sam, self.arch, self.saved_config,
                kind="best", **common,
            )  # fmt: skip
        try:
            return write_checkpoint(
                self.files.last,
                self.sam,
                self.arch,
                self.saved_config,
                kind="last",
                optimizer_state=self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
                scaler_state=self.scaler.state_dict() if self.scaler else {},
                rng_state={"torch": torch.get_rng_state()},
                **common,
            )
        except OSError as err:
            raise self._naming_the_best(err) from err

    def _naming_the_best(self, err: OSError) -> OSError:
        """``err`` (last.pt could not be written, e.g. a full disk) saying where the weights
        are when this run has no last.pt (its first epoch) but a best.pt: the person would
        think nothing was saved, and there is nothing to continue from."""
        best, last = self.files.best, self.files.last
        if last.exists() or not best.exists():  # an earlier last.pt: the run continues from it
            return err
        message = (
            f"{err}. The weights of epoch {self.progress.best_epoch + 1} are saved in {best}: "
            "it is a model as it is (give its path as the model: load_model, samtune's "
            "--model, the panel's checkpoint file), and samtune export makes a model file "
            "of it. " + self._without_last()
        )
        builtin = type(err).__module__ == "builtins"
        worded = type(err)(message) if builtin else OSError(message)
        worded.errno = err.errno
        return worded

    def _without_last(self) -> str:
        """How a run whose first last.pt in its folder could not be written goes on."""
        resumed = self.resume_from
        if resumed is not None and resumed.exists():  # resumed into a new folder
            return (
                f"This folder has no last.pt, but the run resumed from {resumed} is still "
                "there: free space and continue from it again"
            )
        return (
            "Without a last.pt the run cannot be continued: free space and train again, in "
            "another folder or in this one once best.pt is moved out of it (a new run there "
            "would replace it)"
        )

    @property
    def saved_config(self) -> TrainConfig:
        """The run's config as its files record it: the precision as asked, e.g. "auto",
        which a run continued on another machine resolves there (bf16 on one CPU, float32
        on another, fp16 on an older GPU), not the one resolved on this machine."""
        return replace(self.config, mixed_precision=self.precision_asked)

    def _total_time_s(self) -> float:
        """The run's training time over all sessions, as its last checkpoint of this session
        counts it (what a resumed session goes on from)."""
        counted = self.checkpoint_elapsed_s
        return self._elapsed() if counted is None else counted

    def _checkpoint_fields(self) -> dict:
        p = self.progress
        # the total a resumed session counts on from: the summary's too (export time after
        # the last checkpoint counted there made a resumed run's total go down)
        self.checkpoint_elapsed_s = self._elapsed()
        return {
            "epoch": p.epoch,
            "step": p.global_step,
            "step_in_epoch": p.step_in_epoch,
            "best_metric": p.best_metric,
            "progress": asdict(p) | {"elapsed_s": self.checkpoint_elapsed_s},
            # outside "progress", whose keys older versions take as Progress fields
            "epoch_elapsed_s": self._epoch_seconds() if p.step_in_epoch else 0.0,
            "base_model_id": self.base_model_id,
            **self.base_parts,
            "run_id": self.run_id,
            "model_name": self.model_name,  # asked for: registered under it when resumed
            "epoch_record": self.epoch_record,
            "data_summary": {
                **data_summary(
                    self.train_images,
                    self.val_images,
                    self.sampler.n_samples,
                    self.dist.world_size,
                    self.left_out,
                    self.duplicates,
                ),
                # what the validation images are, not only their names ("pair 0"): resumed
                # on others, a run forgets its starting model's score
                "val_fingerprints": self.val_fingerprints,
                "val_held_out": self.held_out_of is not None,  # else given apart
                "val_scoring": VALIDATION_SCORING,
            },
        }

    def _finish(self) -> TrainingFinished:
        """Checkpoint, export and register the model, unless this session changed nothing
        (stopped before its first step): then there is no new model to save, and an earlier
        session's checkpoint, export and summary stay as they were."""
        p = self.progress
        last, best = self.files.last, self.files.best
        trained = self.steps_done > 0 or p.epoch > self.start_epoch
        exported = name = None
        export_note = ""
        if trained:  # on every rank: the checkpoint holds the epoch's loss of all of them
            self._sum_epoch_loss_over_ranks()
            if self.stopped_by_user:  # its last step's weights, checked at no epoch's end
                self._refuse_non_finite_weights(self._norm("data"), "before it stopped")
        if self.dist.is_main and trained:
            if self.stopped_by_user or not last.exists():
                self._write_checkpoints(is_best=False)
            source = best if p.best_epoch >= 0 and best.exists() else last
            exported, name, export_note = self._export(source)
        ddp.barrier(self.dist)
        finished = TrainingFinished(
            best_epoch=p.best_epoch if p.best_epoch >= 0 else None,
            best_metric=p.best_metric,
            metric_name=self._metric_name(),
            time_to_best_s=p.time_to_best_s,
            total_time_s=self._total_time_s(),
            epochs_done=p.epoch,
            best_checkpoint_path=best if self.dist.is_main and best.exists() else None,
            last_checkpoint_path=last if self.dist.is_main and last.exists() else None,
            exported_model_path=exported,
            registered_name=name,
            stopped_early=self.stopped_early,
            stopped_by_user=self.stopped_by_user,
            steps_done=self.steps_done,
            name_taken=self.model_name if name and self.model_name not in (None, name) else None,
            folder_name_taken=self._folder_name_taken(name),
            steps_in_epoch=p.step_in_epoch,
            steps_per_epoch=self.steps_per_epoch,
            export_note=export_note,
            start_metric=p.start_metric,
            from_random=self.config.model.startswith("random:"),
        )
        if self.dist.is_main and trained:  # an earlier summary names the registered model
            # its paths whole: read from another folder, relative ones would name nothing
            summary = {
                k: v.absolute() if isinstance(v, Path) else v for k, v in asdict(finished).items()
            }
            write_json(self.files.summary, summary)
        return finished

    def _folder_name_taken(self, name: str | None) -> str | None:
        """The run folder's name where no name was asked for and the model was registered
        under a free variant of it (``my_run-2``): another model has it, which ``--model
        my_run`` then loads, so the person is told."""
        if self.model_name is not None or name is None:
            return None
        folder = model_stem(self.out_dir.resolve().name)
        return folder if re.fullmatch(rf"{re.escape(folder)}-\d+", name) else None

    def _export(self, source: Path) -> tuple[Path, str, str]:
        """Export and register ``source``: (model file, registered name, note). A best.pt
        that cannot be read (damaged on disk since it was written) does not cost the run its
        model: last.pt, whole, is exported instead, and the note says so."""
        last, summary = self.files.last, self._summary()

        def export(checkpoint: Path) -> tuple[Path, str]:
            # its weights that did not train are the base model's (self.sam), also where that
            # was removed or replaced while it trained (the export failed, the model lost);
            # a new run owns no earlier registration (a moved run's, from this folder)
            resumed = self.resume_from is not None and one_file(self.resume_from, self.files.last)
            return export_and_register(
                checkpoint, self.out_dir, self.model_name, summary, self.sam, resumed
            )

        try:
            return (*export(source), "")
        except UnreadableFile as err:
            if source == last or not last.exists():
                raise
            note = (
                f"{source} could not be read ({first_line(str(err))}), so the model holds the "
                f"weights of the latest epoch ({last.name}), not those of the best (epoch "
                f"{self.progress.best_epoch + 1})"
            )
        warnings.warn(note, stacklevel=2)
        summary["export_note"] = note  # the registered model's record says so too
        exported, name = export(last)
        return exported, name, note

    def _sum_epoch_loss_over_ranks(self) -> None:
        """The loss sum and count of the epoch so far, of all ranks: rank 0's progress (the
        checkpoint's) holds them, the others none, as a resumed run's ranks start from."""
        p = self.progress
        sums = [p.epoch_loss_sum, p.epoch_loss_count]
        total, count = ddp.all_reduce_sum(sums, self.dist, self.device)
        mine = self.dist.is_main
        p.epoch_loss_sum, p.epoch_loss_count = (float(total), int(count)) if mine else (0.0, 0)

    def _summary(self) -> dict:
        p = self.progress
        return {
            "description": f"finetuned from {self.config.model} ({self.out_dir.name})",
            "base_model": self.config.model,
            "best_epoch": p.best_epoch,
            "best_metric": p.best_metric,
            "metric": self._metric_name(),
            "config": asdict(self.saved_config),
            "precision": self.precision,  # the one chosen here ("no": float32)
            "run_id": self.run_id,  # which run registered it (a later one in the folder: not)
        }


def _relative(path: Path, folder: Path) -> str:
    """``path`` as named inside ``folder`` (``checkpoints/best.pt``)."""
    return path.relative_to(folder).as_posix()


def models_replaced(files: RunFiles) -> str:
    """What a new run in ``files``' folder would replace of the model files there (an
    exported ``model.pth``, a ``checkpoints/best.pt`` kept), as the end of a refusal;
    "" when there are none."""
    found = [_relative(f, files.folder) for f in (files.best, files.model) if f.exists()]
    if not found:
        return ""
    return (
        f"already holds {' and '.join(found)}, which a new run would replace: choose a new "
        "folder, or move them away first"
    )


def _how_other(theirs: tuple, ours: tuple) -> str:
    """How two checkpoints' (run id, architecture, base model id) differ, in words."""
    if theirs[1] != ours[1]:
        return f"a {theirs[1].get('name', 'other')} model, not {ours[1].get('name', 'this')}"
    if theirs[2] != ours[2]:
        return "finetuned from another base model"
    return "another run id"
