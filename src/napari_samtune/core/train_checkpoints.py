"""Training checkpoints (best / last): written, found, read and checked for resuming; their
model is restored and exported by :mod:`napari_samtune.core.checkpoint_models`.

A training checkpoint is a project checkpoint (see
:mod:`napari_samtune.core.checkpoints`) that ``torch.load(weights_only=True)``
reads: only tensors, dicts, lists, strings and numbers. Keys:

``format``, ``format_version``, ``kind`` ("last": resumable, with optimizer
state; "best": weights only), ``architecture``, ``model_state`` (the SAM state
dict with LoRA merged, so ``load_model`` reads it as a model; with
``checkpoint_trainable_only`` only the trained weights and
``model_state_complete`` False), ``lora_state`` (the adapters, unmerged, for
resuming), ``optimizer_state``, ``scheduler_state``, ``scaler_state``,
``config`` (``asdict(TrainConfig)``), ``preset``, ``epoch`` (the epoch in
progress), ``step`` (optimizer steps so far), ``step_in_epoch``,
``best_metric``, ``progress`` (counters and timings), ``epoch_elapsed_s`` (the epoch's
wall time so far, stopped mid-epoch; 0 at an epoch's end), ``versions``,
``data_summary``, ``base_model_id``, ``base_parts_digest`` (with ``checkpoint_trainable_only``:
of the weights taken from the base model, see :func:`base_parts_digest`), ``run_id`` (the
same in every checkpoint of a run and
its continuations), ``rng_state``, ``epoch_record`` (the metrics.jsonl record of the last
epoch done, or None).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from napari_samtune.core.architectures import SamArchitecture
from napari_samtune.core.checkpoint_fields import (
    RESUME_MUST_MATCH,
    check_model_fields,
    check_resume_fields,
    instead_of,
    whole_one_beside,
)
from napari_samtune.core.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    atomic_torch_save,
    check_format_version,
    check_records,
    is_project_checkpoint,
    safe_torch_load,
)
from napari_samtune.core.lora import adapter_state_dict, merged_state_dict
from napari_samtune.core.model_source import recorded_model
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.run_lock import training_process
from napari_samtune.core.shell_words import shell_path
from napari_samtune.core.train_export import RunFiles
from napari_samtune.core.train_setup import trainable_names

TRAINING_CHECKPOINT = "a training checkpoint: the best.pt or last.pt that training writes"


def versions() -> dict[str, str]:
    """Versions of the packages that produced a checkpoint."""
    import napari_samtune

    try:
        segment_anything = metadata.version("segment-anything")
    except metadata.PackageNotFoundError:
        segment_anything = "unknown"
    return {
        "torch": str(torch.__version__),
        "segment_anything": segment_anything,
        "napari_samtune": napari_samtune.__version__,
    }


def model_states(sam: Sam, trainable_only: bool) -> tuple[dict, dict, bool]:
    """``(model_state, lora_state, complete)`` of a training model, tensors on the CPU."""
    if trainable_only:
        trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
        state = {k: v for k, v in sam.state_dict().items() if k in trainable}
        state = {k: v for k, v in state.items() if not k.endswith(("lora_a", "lora_b"))}
        lora = adapter_state_dict(sam, with_base=False)
    else:
        state, lora = merged_state_dict(sam), adapter_state_dict(sam, with_base=True)
    cpu = {k: v.detach().cpu().clone() for k, v in state.items()}
    return cpu, {k: v.detach().cpu().clone() for k, v in lora.items()}, not trainable_only


def base_parts_digest(sam: Sam, config: TrainConfig) -> str:
    """Digest of the weights of a training model that a checkpoint holding only the trained
    ones (``checkpoint_trainable_only``) takes from the base model: all but the parameters
    that train per ``config``. A checkpoint is completed on its base model when these are
    the same, also if the base model's other weights changed since (registered anew by a
    continued run, say), which refused the checkpoint though its completion was exact."""
    return _digest_without(sam, trainable_names(sam, config))


def _digest_without(sam: Sam, left_out: set[str]) -> str:
    from napari_samtune.core.models import state_dict_digest

    return state_dict_digest({k: v for k, v in sam.state_dict().items() if k not in left_out})


def recorded_parts_match(checkpoint: dict, sam: Sam, config: TrainConfig, model_id: str) -> bool:
    """Whether the base model ``sam`` (content id ``model_id``) still has the weights the
    checkpoint takes from it. The digest of 2026-12-05 was taken before the frozen parts
    were marked, so it left out every parameter (only the buffers): such a checkpoint, as
    one from before digests, is held to the base model's id."""
    recorded = checkpoint.get("base_parts_digest")
    everything = {name for name, _ in sam.named_parameters()}
    if recorded is None or recorded == _digest_without(sam, everything):
        return checkpoint.get("base_model_id") in (None, model_id)
    return base_parts_digest(sam, config) == recorded


def write_checkpoint(path: Path, sam: Sam, arch: SamArchitecture, config: TrainConfig, **extra):
    """Write a training checkpoint atomically; ``extra`` adds the keys listed in the module doc."""
    model_state, lora_state, complete = model_states(sam, config.checkpoint_trainable_only)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "architecture": arch.to_dict(),
        "model_state": model_state,
        "model_state_complete": complete,
        "lora_state": lora_state,
        "config": asdict(config),
        "preset": config.preset or "",
        "versions": versions(),
        **extra,
    }
    return atomic_torch_save(checkpoint, path)


def resolve_checkpoint(path: str | Path) -> Path:
    """The training checkpoint ``path`` names: the file itself, or for a run's folder (the
    ``out_dir`` of :func:`~napari_samtune.core.train.train`, or its ``checkpoints`` folder) its
    ``checkpoints/last.pt``, the checkpoint a run resumes from, as ``samtune train --resume``
    and the panel's Continue… take it. ``FileNotFoundError`` when there is no such file."""
    path = Path(path).expanduser()
    if path.is_dir():
        last, best = RunFiles.named_by(path).last, RunFiles.named_by(path).best
        if not last.is_file() and is_project_checkpoint(best):  # killed in its first epoch
            raise FileNotFoundError(
                f"{str(path)!r} holds a run that cannot be continued: {str(last)!r} does not "
                f"exist (the run ended before it wrote one), but {str(best)!r} holds the "
                f"weights of its best epoch: samtune export {shell_path(best)} -o model.pth "
                "makes a model of them, which a new run in another folder can finetune further"
            )
        running = None if last.is_file() else training_process(RunFiles.named_by(path).folder)
        if running is not None:
            raise FileNotFoundError(
                f"{str(path)!r} is the folder of a run still training (process {running}), "
                f"which has not written its first checkpoint yet ({str(last)!r}); wait for it "
                "to finish, or stop it (it then writes one)"
            )
        if not last.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is a folder without a training checkpoint: {str(last)!r} does "
                "not exist; give the folder of a run that trained at least one step, or a "
                "checkpoint file (last.pt or best.pt)"
            )
        return last
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def read_checkpoint(path: str | Path, settings_only: bool = False) -> dict:
    """Load a training checkpoint safely, from a file or a run's folder (its last.pt, see
    :func:`resolve_checkpoint`); ``ValueError`` when it is not one.

    ``settings_only``: for a look at its settings before the trainer reads it whole (the
    command line's checks of a resume): its tensors are mapped, not read, and the records'
    checksums are left to that read (a GB checkpoint was read and summed twice).
    """
    path = resolve_checkpoint(path)
    try:
        checkpoint = safe_torch_load(path, TRAINING_CHECKPOINT, mmap=settings_only)
        if not settings_only:
            check_records(path)  # (read at resume and export only)
    except ValueError as err:  # (an UnreadableFile stays one)
        instead = instead_of(path) if path.name in ("last.pt", "best.pt") else ""
        raise type(err)(f"{err}{instead}") from None
    if isinstance(checkpoint, dict) and any(
        isinstance(key, str) and key.startswith("image_encoder.") for key in checkpoint
    ):  # a plain SAM state dict: what export writes (a run's model.pth) or a download
        raise ValueError(
            f"{str(path)!r} is an exported SAM model (plain weights), not a training "
            "checkpoint: use it as a model as it is, or give its run's folder or the run's "
            "checkpoints/last.pt"
        )
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a napari-samtune checkpoint; expected {TRAINING_CHECKPOINT}"
            + whole_one_beside(path)
        )
    check_format_version(checkpoint, repr(str(path)))  # export and resume read it too
    if "config" not in checkpoint or "lora_state" not in checkpoint:
        raise ValueError(
            f"{str(path)!r} is a napari-samtune model checkpoint, not a training checkpoint; "
            "to finetune it further pass it as the model instead"
        )
    check_model_fields(checkpoint, path)  # export, resume and the run's files index them
    return checkpoint


def unexported_note(path: Path, epochs_done: int | None = None, run_id: str | None = None) -> str:
    """For the checkpoint of a run that was killed after its last epoch, before its model
    was exported and registered (summary.json is written after both): how to have it. With
    ``epochs_done``, the checkpoint's, also for a resumed session stopped so: the summary
    and model of an earlier session are there, older than the checkpoint."""
    from napari_samtune.core.train_export import earlier_registration

    run = RunFiles.named_by(path.parent)
    if path.parent != run.checkpoints:
        return ""
    if run.summary.exists():
        return _older_export_note(run, epochs_done)
    registered = None
    if run.model.is_file():  # registered by this run (``run_id``), not one moved away
        registered = earlier_registration(run.checkpoints.parent, run_id)
    if registered is not None:
        return (
            f". The run ended after exporting its model ({run.model}) and registering it as "
            f"{registered!r}, before writing {run.summary.name}: the model is there to use"
        )
    source = run.best if is_project_checkpoint(run.best) else path
    overwrite = " --overwrite" if run.model.exists() else ""  # exported, not registered
    return (
        f". The run ended before its model was exported and registered ({run.summary} is "
        f"missing): samtune export {shell_path(source)} -o {shell_path(run.model)}{overwrite} "
        "--register NAME does that"
    )


def _older_export_note(run: RunFiles, epochs_done: int | None) -> str:
    """How to export the weights of a run whose summary (and model.pth, and registered
    model) are of fewer epochs than ``epochs_done``: a resumed session stopped between its
    last epoch and its export; "" where they are not older, or cannot be read."""
    try:
        summary = json.loads(run.summary.read_text(encoding="utf-8"))
        exported_after = int(summary["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if epochs_done is None or exported_after >= epochs_done:
        return ""
    source = run.best if is_project_checkpoint(run.best) else run.last
    return (
        f". Its {run.model.name} (and the model it registered) are of its first "
        f"{exported_after} epoch(s): the session that trained on to epoch {epochs_done} "
        f"ended before exporting. samtune export {shell_path(source)} -o {shell_path(run.model)} "
        "--overwrite "
        "exports its newer weights (add --register NEW_NAME to use them by name)"
    )


def check_not_stopped_early(
    checkpoint: dict, patience: int | None, flat: int, path: str | Path
) -> None:
    """Refuse to resume a run that stopped early: with its best not bettered in the last
    ``flat`` epochs (as resumed: a best chosen anew counts from 0) and ``patience`` (the
    session's early stopping), it would train one more epoch and stop again."""
    if patience is None or flat < patience:
        return
    done = int(checkpoint.get("epoch", 0))
    raise ValueError(
        f"{str(path)!r} stopped early after {done} epoch(s), its best not bettered in the "
        f"last {flat} (early_stopping={patience}), so there is nothing left to train; set "
        f"early_stopping above {flat}, or to None, to continue the run"
        + unexported_note(Path(path), done, checkpoint.get("run_id"))
    )


def check_resumable(checkpoint: dict, config: TrainConfig, path: str | Path) -> None:
    """Refuse to resume with a config that changes the model or lacks optimizer state."""
    if "optimizer_state" not in checkpoint:
        last = Path(path).with_name("last.pt")  # a best.pt's run keeps it beside
        beside = last.is_file() and last != Path(path)
        resumable = last if beside else "the 'last.pt' checkpoint of the run"
        raise ValueError(
            f"{str(path)!r} holds weights only ({checkpoint.get('kind', '?')!r} checkpoint); "
            f"resume from {resumable}"
        )
    check_resume_fields(checkpoint, path)
    done = int(checkpoint.get("epoch", 0))
    if done >= config.epochs:
        raise ValueError(
            f"{str(path)!r} has done {done} epoch(s) and epochs={config.epochs}, so there is "
            f"nothing left to train; set epochs above {done} to continue the run"
            + unexported_note(Path(path), done, checkpoint.get("run_id"))
        )
    saved = TrainConfig.from_dict(checkpoint["config"])
    # a weights file named relative to another working directory is the same model
    saved = replace(saved, model=recorded_model(saved.model))
    config = replace(config, model=recorded_model(config.model))
    changed = [f for f in RESUME_MUST_MATCH if getattr(saved, f) != getattr(config, f)]
    if changed:
        pairs = ", ".join(f"{f}: {getattr(saved, f)!r} -> {getattr(config, f)!r}" for f in changed)
        raise ValueError(
            f"cannot resume {str(path)!r} with a different model setup ({pairs}); keep these "
            "settings as they were, or start a new run"
        )
    if config.checkpoint_trainable_only and checkpoint["model_state_complete"]:
        # its next checkpoints would need a base model it never needed: one removed since
        # (as whole checkpoints allow) left a run that could neither resume nor export
        raise ValueError(
            f"{str(path)!r} holds every weight of its run, which needs no base model; its "
            "next checkpoints, of trained weights only (checkpoint_trainable_only), would "
            f"need {saved.model!r} to complete them: leave checkpoint_trainable_only out (the "
            "run keeps whole checkpoints), or start a new run from the run's model.pth"
        )
