"""A model by name: the built-in ones first, then the user's registered ones.

A module of its own because it needs both :mod:`~napari_samtune.core.registry` (built-in
models) and :mod:`~napari_samtune.core.user_models`, which builds on the registry: this way
the imports go one way.
"""

from __future__ import annotations

from pathlib import Path

from napari_samtune.core import registry
from napari_samtune.core.registry import ModelSpec, builtin_model
from napari_samtune.core.user_models import list_user_models, user_model_spec


def list_models() -> list[ModelSpec]:
    """Built-in models followed by the user's registered models."""
    # registry.BUILTIN_MODELS read when called, not imported: tests swap it for their own
    return [*registry.BUILTIN_MODELS, *list_user_models()]


def get_model_spec(name: str) -> ModelSpec:
    """The model called ``name`` (built-in or user); ValueError listing the choices otherwise."""
    spec = builtin_model(name)
    if spec is None:
        spec = user_model_spec(name)
    if spec is not None:
        return spec
    from napari_samtune.core.user_model_rename import renamed_note

    choices = [spec.name for spec in list_models()]
    raise ValueError(
        f"unknown model {name!r}; choose one of {choices!r} or give a file path"
        + renamed_note(name)
    )


def model_file(model: str) -> Path | None:
    """The weights file ``model``, a model's name or a file's path, is read from; None for
    "", ``random:<arch>`` and a name whose entry cannot be read."""
    from napari_samtune.core.model_source import RANDOM_PREFIX
    from napari_samtune.core.models import is_registered_name

    if not model or model.startswith(RANDOM_PREFIX):
        return None
    if is_registered_name(model):
        try:
            return get_model_spec(model).local_path()
        except (OSError, ValueError):
            return None
    return Path(model).expanduser()
