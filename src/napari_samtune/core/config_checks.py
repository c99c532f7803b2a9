"""What each field of :class:`~napari_samtune.core.presets.TrainConfig` may hold, and the checks.

:func:`check_train_config` is ``TrainConfig.__post_init__``: it raises
``TypeError`` for a field of the wrong type and ``ValueError`` for a value out
of range or a contradiction between fields, each message naming the field,
showing the value and saying what is allowed.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_samtune.core.architectures import SamArchitecture
    from napari_samtune.core.train_config import TrainConfig

MODEL_PARTS: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")
# the device names resolve_device takes (whether the machine has one is the run's check)
DEVICE_NAME = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")
MIXED_PRECISION_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "no")
MASK_LOSSES: tuple[str, ...] = ("dice_bce", "dice_focal")
NO_FREEZE = "none"  # the command line's word for "freeze nothing"; never a config value
# Each corrective click is one more decoder pass whose activations stay in memory until the
# backward pass. SAM's paper and micro-sam train with 8 sampled clicks; twice that is the limit.
MAX_ITERATIVE_PROMPTS = 16

_WHOLE = (
    "epochs", "n_objects_per_batch", "batch_size", "patch_size", "lora_rank", "early_stopping",
    "min_samples_per_epoch", "n_iterative_prompts", "seed", "grad_accumulation",
    "embedding_cache_size", "min_object_area", "scheduler_patience",
)  # fmt: skip
_REAL = ("learning_rate", "lora_alpha", "val_fraction", "box_jitter", "scheduler_factor")
_FLAGS = ("fast_attention", "checkpoint_trainable_only")
_OPTIONAL = ("patch_size", "lora_alpha", "early_stopping")  # None allowed


MAX_SEED = 2**63 - 1  # the largest seed every generator the run seeds (torch, numpy) takes


def _check_device_name(device: object) -> None:
    if not isinstance(device, str):  # a torch.device: the config is saved as JSON
        raise TypeError(
            f"device={device!r} is {kind_of(device)}; give the device as a string, "
            f"e.g. {str(device)!r}"
        )
    if not DEVICE_NAME.fullmatch(device.strip().lower()):
        raise ValueError(
            f"device={device!r} is not a device; choose one of 'auto', 'cpu', 'cuda', "
            "'cuda:N' or 'mps'"
        )


def check_train_config(config: TrainConfig) -> None:
    """Check every field of ``config``; lists from JSON and numpy numbers become plain values."""
    if not isinstance(config.freeze, (list, tuple)) or not all(
        isinstance(part, str) for part in config.freeze
    ):
        raise ValueError(
            f"freeze={config.freeze!r}; give a list of distinct parts from "
            f'{list(MODEL_PARTS)!r}, e.g. ["image_encoder"], or [] to train all parts'
        )
    object.__setattr__(config, "freeze", tuple(config.freeze))  # lists arrive from JSON
    if isinstance(config.model, os.PathLike):  # a weights file as load_model takes it
        object.__setattr__(config, "model", os.fspath(config.model))
    _check_types(config)
    _check_device_name(config.device)  # "gpu" passed here and failed when the run started
    _check_positive(config, ("epochs", "n_objects_per_batch", "batch_size"))
    _check_positive(config, ("min_samples_per_epoch", "grad_accumulation", "min_object_area"))
    if not config.model or not isinstance(config.model, str):
        raise ValueError(f"model={config.model!r}; give a model name or a weights file path")
    if not 0 < config.learning_rate < math.inf:
        raise ValueError(f"learning_rate={config.learning_rate!r}; use a positive number")
    if not 0 <= config.seed <= MAX_SEED:  # torch.manual_seed overflowed past 2**64 - 1
        raise ValueError(f"seed={config.seed!r}; use a whole number from 0 to {MAX_SEED}")
    if config.patch_size is not None and config.patch_size < 32:
        raise ValueError(f"patch_size={config.patch_size!r}; use at least 32 pixels, or None")
    _check_parts(config)
    _check_lora(config)
    if config.early_stopping is not None and config.early_stopping < 1:
        raise ValueError(f"early_stopping={config.early_stopping!r}; use >= 1 or None")
    if not 0 <= config.n_iterative_prompts <= MAX_ITERATIVE_PROMPTS:
        raise ValueError(
            f"n_iterative_prompts={config.n_iterative_prompts!r}; use 0 to "
            f"{MAX_ITERATIVE_PROMPTS} corrective clicks (SAM and micro-sam train with 8): each "
            "one more decoder pass per object, held in memory until the backward pass"
        )
    if config.embedding_cache_size < 0:
        raise ValueError(
            f"embedding_cache_size={config.embedding_cache_size!r}; use 0 (no cache) or more"
        )
    _check_choices(config)


def _check_lora(config: TrainConfig) -> None:
    if config.lora_rank < 0:
        raise ValueError(f"lora_rank={config.lora_rank!r}; use 0 (no LoRA) or a positive rank")
    if config.lora_alpha is None:
        return
    if not 0 < config.lora_alpha < math.inf:
        raise ValueError(
            f"lora_alpha={config.lora_alpha!r}; use a positive number, or leave lora_alpha "
            "out (it then equals lora_rank)"
        )
    if not config.lora_rank:
        raise ValueError(
            f"lora_alpha={config.lora_alpha!r} scales LoRA adapters, but lora_rank=0 adds "
            "none; set lora_rank too (e.g. 4), or leave lora_alpha out"
        )


def _check_parts(config: TrainConfig) -> None:
    if NO_FREEZE in config.freeze:
        raise ValueError(
            f"freeze={config.freeze!r}; {NO_FREEZE!r} is no part: give freeze=() to train "
            f"every part, or distinct parts from {MODEL_PARTS!r}"
        )
    unknown = [p for p in config.freeze if p not in MODEL_PARTS]
    if unknown or len(set(config.freeze)) != len(config.freeze):
        raise ValueError(f"freeze={config.freeze!r}; use distinct parts from {MODEL_PARTS!r}")
    if config.lora_rank and "image_encoder" in config.freeze:
        raise ValueError(
            f"lora_rank={config.lora_rank!r} trains adapters inside the image encoder, which "
            "freeze also lists; remove 'image_encoder' from freeze or set lora_rank=0"
        )
    if set(config.freeze) == set(MODEL_PARTS):
        raise ValueError(f"freeze={config.freeze!r} leaves nothing to train; unfreeze a part")


def _check_choices(config: TrainConfig) -> None:
    if config.mixed_precision not in MIXED_PRECISION_MODES:
        raise ValueError(
            f"mixed_precision={config.mixed_precision!r}; choose from {MIXED_PRECISION_MODES!r}"
        )
    if config.mask_loss not in MASK_LOSSES:
        raise ValueError(f"mask_loss={config.mask_loss!r}; choose from {MASK_LOSSES!r}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ValueError(f"val_fraction={config.val_fraction!r}; use a fraction in [0, 1)")
    if not 0.0 <= config.box_jitter < 1.0:
        raise ValueError(f"box_jitter={config.box_jitter!r}; use a fraction in [0, 1)")
    if not 0.0 < config.scheduler_factor < 1.0:  # each on its own: a good one was blamed too
        raise ValueError(
            f"scheduler_factor={config.scheduler_factor!r}; use a factor in (0, 1), e.g. 0.5"
        )
    if config.scheduler_patience < 0:
        raise ValueError(
            f"scheduler_patience={config.scheduler_patience!r}; use a whole number >= 0"
        )


def _check_positive(config: TrainConfig, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"{name}={value!r}; use a whole number >= 1")


def _check_types(config: TrainConfig) -> None:
    """``TypeError`` naming a numeric field that is not a number (text, a bool: ``epochs=True``
    is no count) or a whole-number field that is not whole, and a flag that is not a bool.
    numpy numbers become Python numbers, which checkpoints (``weights_only``) can load."""
    for name in (*_WHOLE, *_REAL, *_FLAGS):
        value = getattr(config, name)
        if value is None and name in _OPTIONAL:
            continue
        if name in _FLAGS:
            kind, fits = "True or False", isinstance(value, bool)
        else:
            kind = "a whole number" if name in _WHOLE else "a number"
            number = numbers.Integral if name in _WHOLE else numbers.Real
            fits = isinstance(value, number) and not isinstance(value, bool)  # np.bool_ is not
            if fits and type(value) not in (int, float):  # numpy's
                object.__setattr__(config, name, (int if name in _WHOLE else float)(value))
        if not fits:
            what = kind_of(value)
            none = " or None" if name in _OPTIONAL else ""
            raise TypeError(f"{name}={value!r} is {what}; use {kind}{none}")


def kind_of(value: object) -> str:
    """What ``value`` is, in words, for the messages that refuse it: "text", "None",
    "a bool" (numpy's too), "an int", "a float", "a uint8", "a dict"..."""
    if isinstance(value, str):
        return "text"
    if value is None:
        return "None"
    name = type(value).__name__.rstrip("_")  # numpy's bool_, str_
    return f"an {name}" if name[:1] in "aeio" else f"a {name}"  # (a uint8)


def freeze_from_choices(choices: Sequence[str], option: str = "--freeze") -> tuple[str, ...]:
    """``TrainConfig.freeze`` from repeated choices of ``option``: parts, or "none" alone.

    Repeated parts count once. "none" together with a part contradicts itself:
    ``ValueError`` naming ``option`` and both.
    """
    chosen = tuple(dict.fromkeys(choices))
    parts = tuple(c for c in chosen if c != NO_FREEZE)
    if parts and len(parts) < len(chosen):
        named = " ".join(f"{option} {part}" for part in parts)
        raise ValueError(
            f"{option} {NO_FREEZE} trains every part, but {named} freezes "
            f"{'it' if len(parts) == 1 else 'them'}; give either {option} {NO_FREEZE} or the "
            "parts to freeze"
        )
    return parts


def max_lora_rank(arch: SamArchitecture) -> int:
    """Width of ``arch``'s narrowest attention layer, the most a LoRA rank can use there.

    A ViT's blocks all have ``embed_dim``; TinyViT's first stage is convolutional, its
    attention stages have ``tinyvit_embed_dims[1:]``.
    """
    if arch.encoder == "tiny_vit":
        return min(arch.tinyvit_embed_dims[1:])
    return arch.embed_dim


def check_lora_rank(lora_rank: int, arch: SamArchitecture) -> None:
    """``ValueError`` when ``lora_rank`` exceeds what ``arch``'s attention layers can use:
    above their width an adapter has more parameters than a full update, and no more rank."""
    limit = max_lora_rank(arch)
    if lora_rank > limit:
        raise ValueError(
            f"lora_rank={lora_rank!r} is above {limit}, the width of the narrowest attention "
            f"layer of {arch.name}'s image encoder; use a rank of 1 to {limit} (LoRA typically "
            "uses 4 to 64)"
        )


# The fields `samtune train` sets under shorter option names (--lr, --n-objects, ...), which
# a script following the command line may pass as overrides.
_FIELDS_OF_OPTIONS: dict[str, str] = {
    "lr": "learning_rate",
    "n_objects": "n_objects_per_batch",
    "min_samples": "min_samples_per_epoch",
    "iterative_prompts": "n_iterative_prompts",
    "embedding_cache": "embedding_cache_size",
    "loss": "mask_loss",
    "trainable_only": "checkpoint_trainable_only",
}


def check_override_names(overrides: dict, names: Sequence[str]) -> None:
    """``TypeError`` naming each override that is no ``TrainConfig`` field (``names``), the
    field it likely means (``epoch`` -> ``epochs``, the CLI's ``lr`` -> ``learning_rate``)
    and all the fields."""
    unknown = sorted(set(overrides) - set(names))
    if not unknown:
        return
    problems = []
    for name in unknown:
        meant = _FIELDS_OF_OPTIONS.get(name) or next(
            iter(difflib.get_close_matches(name, names, n=1)), None
        )
        hint = f" (did you mean {meant}={overrides[name]!r}?)" if meant else ""
        problems.append(f"{name}={overrides[name]!r}{hint}")
    raise TypeError(
        f"unknown override(s) {', '.join(problems)}; the TrainConfig fields are {', '.join(names)}"
    )
