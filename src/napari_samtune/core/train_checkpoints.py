"""Training checkpoints (best / last), resuming from them, and exporting a plain SAM model.

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

from napari_samtune.core.architectures import SamArchitecture, load_weights, sam_to_load
from napari_samtune.core.checkpoint_fields import (
    RESUME_MUST_MATCH,
    check_model_fields,
    check_resume_fields,
    damaged,
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
from napari_samtune.core.lora import adapter_state_dict, apply_lora, merged_state_dict
from napari_samtune.core.model_source import recorded_model
from napari_samtune.core.models import is_registered_name
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.run_lock import training_process
from napari_samtune.core.shell_words import shell_path
from napari_samtune.core.train_export import RunFiles
from napari_samtune.core.train_setup import build_training_model, trainable_names
from napari_samtune.core.user_model_rename import renamed_to

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


def _recorded_parts_match(checkpoint: dict, sam: Sam, config: TrainConfig, model_id: str) -> bool:
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


class BaseModelUnavailable(ValueError):
    """A checkpoint of only the weights its run trained, whose base model cannot be loaded as
    the run had it (gone, moved, unregistered, or replaced by other weights)."""


BASE_MODEL_FIX = (
    "put the base model back as the run had it (the file at that path, or registered again "
    "under that name, with the same weights), then try again; or use the run's model.pth, "
    "where it has one, which holds every weight (finetune it further with --model "
    "RUN/model.pth); runs that must outlive their base model write whole checkpoints "
    "(samtune train --whole-checkpoints)"
)


def restore_model(
    checkpoint: dict, path: str | Path = "the checkpoint", base: Sam | None = None
) -> tuple[Sam, SamArchitecture]:
    """The training model (LoRA adapters unmerged) of a checkpoint (read from ``path``, which
    errors name, and checked by :func:`check_model_fields`), on the CPU.

    ``base``: the model that completes a checkpoint of only the trained weights, instead of
    its base model loaded anew (a run exporting at its end: its own model, whose other
    weights are the base's, also where that was removed or replaced while it trained).

    :class:`BaseModelUnavailable` where the checkpoint holds only the trained weights and
    its base model cannot be loaded as it was; ``DamagedCheckpoint`` where its weights do
    not fit its recorded architecture."""
    config = TrainConfig.from_dict(checkpoint["config"])
    arch = SamArchitecture.from_dict(checkpoint["architecture"])
    state = {**checkpoint["model_state"], **checkpoint["lora_state"]}
    if checkpoint["model_state_complete"]:
        sam = sam_to_load(arch)
        if config.lora_rank:
            apply_lora(sam.image_encoder, config.lora_rank, config.lora_alpha)
        _check_weights_fit(sam, state, arch, path, partial=False)
        return load_weights(sam, state), arch
    if base is not None:
        sam, base_arch = _copy_of(base, arch, config), arch
    else:
        sam, base_arch = _base_model_of(checkpoint, config, path)
    if base_arch != arch:  # the base's weights are the ones recorded: the entry is wrong
        ours, theirs = arch.to_dict(), base_arch.to_dict()
        differ = ", ".join(f"{k} {v!r} vs {theirs[k]!r}" for k, v in ours.items() if v != theirs[k])
        raise damaged(
            path,
            f"its 'architecture' entry is not that of its base model {config.model!r}, "
            f"whose weights it was trained with ({differ})",
        )
    _check_weights_fit(sam, state, arch, path, partial=True)
    sam.load_state_dict(state, strict=False)
    return sam, arch


def _copy_of(model: Sam, arch: SamArchitecture, config: TrainConfig) -> Sam:
    """A CPU copy of a training ``model`` (of ``arch``, with the LoRA adapters of ``config``)."""
    sam = sam_to_load(arch)
    if config.lora_rank:
        apply_lora(sam.image_encoder, config.lora_rank, config.lora_alpha)
    return load_weights(sam, {k: v.detach().cpu() for k, v in model.state_dict().items()})


def _check_weights_fit(
    sam: Sam, state: dict, arch: SamArchitecture, path: str | Path, partial: bool
) -> None:
    """``DamagedCheckpoint`` where ``state`` does not fit ``sam`` (built as ``arch``, the
    checkpoint's architecture entry), checked before loading: torch's RuntimeError dumps
    every tensor and names neither the file nor what to do."""
    from napari_samtune.core.models import fit_problems

    problems = fit_problems(sam, state, partial=partial)
    if problems:
        raise damaged(
            path,
            f"its weights do not fit its 'architecture' entry ({arch.name!r}: "
            f"{'; '.join(problems)}): one of the two was changed or lost",
        )


def _base_model_of(
    checkpoint: dict, config: TrainConfig, path: str | Path
) -> tuple[Sam, SamArchitecture]:
    """(model, architecture) of the base model a checkpoint of only the weights its run
    trained completes on, checked to have the weights it takes from it."""
    only_trained = (
        "this checkpoint holds only the weights its run trained, which complete its base "
        f"model {config.model!r}"
    )
    renamed = None if is_registered_name(config.model) else renamed_to(config.model)
    if renamed is not None:  # samtune models --rename: the same weights (checked below)
        config = replace(config, model=renamed)
    try:
        sam, base_arch, model_id = build_training_model(config)
    except (OSError, ValueError) as err:
        raise BaseModelUnavailable(
            f"{only_trained}, and that cannot be loaded now: {err}. To fix: {BASE_MODEL_FIX}"
        ) from None
    if _recorded_parts_match(checkpoint, sam, config, model_id):
        return sam, base_arch
    from napari_samtune.core.earlier_nano import earlier_nano_base

    earlier = earlier_nano_base(checkpoint, config, path)
    if earlier is not None:  # nano as the package shipped it when the run began
        return earlier
    # The very model it was trained from: the checkpoint's record is wrong, not the base
    # (this read "as it was (X), but that model now has different weights (X)").
    if checkpoint.get("base_model_id") == model_id:
        raise damaged(
            path,
            f"the parts it takes from its base model {config.model!r} ({model_id}, the "
            "model it was trained from) do not match its 'base_parts_digest', taken over "
            "the parts its 'config' leaves untrained: one of those entries was changed",
        )
    raise BaseModelUnavailable(
        f"{only_trained} as it was ({checkpoint.get('base_model_id')}), but that model "
        f"now has different weights ({model_id}) in the parts this checkpoint takes from "
        f"it. To fix: {BASE_MODEL_FIX}"
    )


def export_model(
    checkpoint_path: str | Path, out_path: str | Path, base: Sam | None = None
) -> tuple[Path, SamArchitecture]:
    """Write the checkpoint's model as a plain SAM state dict (LoRA merged).

    The file loads with strict loading into an unmodified ``segment_anything``
    model of the checkpoint's architecture (checked here before writing). ``out_path`` is a
    file name; a folder, or a training checkpoint (the one exported included), is refused.
    ``base``: see :func:`restore_model`.
    """
    from napari_samtune.core.models import export_sam_state_dict

    _check_export_path(Path(checkpoint_path), Path(out_path))
    sam, arch = restore_model(read_checkpoint(checkpoint_path), checkpoint_path, base)
    merged = merged_state_dict(sam)
    _refuse_non_finite(merged, Path(checkpoint_path))
    plain = load_weights(sam_to_load(arch), merged)
    return export_sam_state_dict(plain, out_path), arch


def _refuse_non_finite(state: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """A checkpoint whose weights hold NaN or inf (saved by a run that diverged, before
    runs checked their weights) is no model: exported, it segmented nothing, unsaid."""
    broken = [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if broken:
        raise ValueError(
            f"{str(checkpoint)!r} holds weights that are not finite (NaN or inf) in "
            f"{len(broken)} tensor(s), e.g. {broken[0]!r}: the run that saved it had "
            "diverged. Export an earlier checkpoint, or train again from the start with a "
            "lower learning rate"
        )


def _check_export_path(checkpoint: Path, out_path: Path) -> None:
    """Refuse an ``out_path`` the export cannot or must not write: a folder (which gave a
    bare IsADirectoryError), or a training checkpoint, ``checkpoint`` itself included,
    which the plain weights silently replaced, so its run could no longer be resumed."""
    suggestion = checkpoint.with_name(f"{checkpoint.stem}-model.pth")
    if out_path.is_dir():
        raise ValueError(
            f"out_path {str(out_path)!r} is a folder; give the exported model a file name, "
            f"e.g. {str(out_path / 'model.pth')!r}"
        )
    if out_path.is_file() and is_project_checkpoint(out_path):
        which = (
            "the checkpoint being exported"
            if out_path.samefile(checkpoint)
            else ("a napari-samtune training checkpoint")
        )
        raise ValueError(
            f"out_path {str(out_path)!r} is {which}; the plain model would replace it, and "
            "its run could no longer be resumed or exported from it. Give another file name, "
            f"e.g. {str(suggestion)!r}"
        )
