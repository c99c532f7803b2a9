"""A training checkpoint's model: restored for resuming or loading (:func:`restore_model`,
completing a checkpoint of only the trained weights with its base model) and exported as a
plain SAM state dict (:func:`export_model`) that ``segment_anything`` loads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from napari_samtune.core.architectures import SamArchitecture, load_weights, sam_to_load
from napari_samtune.core.checkpoint_fields import damaged
from napari_samtune.core.checkpoints import is_project_checkpoint
from napari_samtune.core.lora import apply_lora, merged_state_dict
from napari_samtune.core.models import is_registered_name
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train_checkpoints import read_checkpoint, recorded_parts_match
from napari_samtune.core.train_setup import build_training_model
from napari_samtune.core.user_model_rename import renamed_to


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
    if recorded_parts_match(checkpoint, sam, config, model_id):
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
