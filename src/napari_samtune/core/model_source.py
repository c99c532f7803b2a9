"""Where the model to finetune comes from: a registry name, a weights file, or random weights.

``TrainConfig.model`` is one of

* a registry name (built-in such as ``"vit_b_lm"`` or a registered user model),
* a path to weights (plain SAM state dict or napari-samtune checkpoint),
* ``"random:<architecture>"`` (e.g. ``"random:tiny"``): randomly initialised
  weights of that architecture, seeded by ``TrainConfig.seed``. Used by tests
  and benchmarks, and to train from scratch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling import Sam

from napari_samtune.core.architectures import ARCHITECTURES, SamArchitecture, build_sam

RANDOM_PREFIX = "random:"


def _random_architecture(model: str) -> SamArchitecture:
    name = model[len(RANDOM_PREFIX) :]
    if name not in ARCHITECTURES:
        raise ValueError(
            f"model={model!r}: unknown architecture {name!r}; use one of "
            f"{[RANDOM_PREFIX + a for a in sorted(ARCHITECTURES)]!r}"
        )
    return ARCHITECTURES[name]


def architecture_of(model: str) -> SamArchitecture:
    """The architecture of ``model`` (registry name, weights file or ``random:<arch>``)."""
    from napari_samtune.core import model_lookup, models

    if model.startswith(RANDOM_PREFIX):
        return _random_architecture(model)
    if models.is_registered_name(model):  # a broken user model says what is wrong with it
        return model_lookup.get_model_spec(model).resolve_architecture()
    path = Path(model).expanduser()
    if not path.is_file():
        from napari_samtune.core.user_model_rename import renamed_note

        names = [spec.name for spec in model_lookup.list_models()]
        raise ValueError(
            f"model={model!r} is neither a model name ({names!r}), a weights file, nor "
            f"'{RANDOM_PREFIX}<architecture>'{renamed_note(model)}"
        )
    state, stored = models.read_sam_state_dict(path)
    if stored is not None:
        return stored
    from napari_samtune.core.architectures import infer_architecture

    try:
        return infer_architecture(state)
    except ValueError as err:  # as load_model words it: the file first
        raise ValueError(f"{path}: {err}") from None


def recorded_model(model: str) -> str:
    """``model`` as a run records it: a weights file by its absolute path, so that the run's
    checkpoints (a resume, an export, a trainable-only checkpoint rebuilt on its base) find
    it from any working directory; names and ``random:<arch>`` stay as they are."""
    from napari_samtune.core import models

    if model.startswith(RANDOM_PREFIX) or models.is_registered_name(model):
        return model
    path = Path(model).expanduser()
    return str(path.absolute()) if path.is_file() else model


def load_base_model(model: str, seed: int = 0) -> tuple[Sam, SamArchitecture, str]:
    """Build or load ``model`` on the CPU: ``(sam in eval mode, architecture, model_id)``.

    Random weights come from a private generator seeded with ``seed``, so the
    same config always starts from the same weights and the global RNG is untouched.
    """
    if model.startswith(RANDOM_PREFIX):
        arch = _random_architecture(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = build_sam(arch)
        return sam, arch, f"{model}-seed{seed}"
    from napari_samtune.core.models import load_model

    loaded = load_model(model, device="cpu")
    return loaded.sam, loaded.architecture, loaded.model_id
