"""Removing the user's own models: their description, then the weights no other
description names (see :mod:`~napari_samtune.core.user_models` for how they are stored)."""

from __future__ import annotations

from pathlib import Path

from napari_samtune.core.architectures import ARCHITECTURES
from napari_samtune.core.download import stamp_path
from napari_samtune.core.registry import builtin_model, user_models_dir, validate_model_name
from napari_samtune.core.user_model_weights import (
    named_weights,
    own_weights,
    weights_in_use,
)
from napari_samtune.core.user_models import (
    _registration_locked,
    is_other_json,
    list_user_models,
)


def remove_user_model(name: str) -> list[Path]:
    """Unregister user model ``name`` and delete its files; returns the deleted paths.

    The description goes first, so a failure part-way leaves no half-listed model.
    The weights file's verification stamp goes too (not in the returned list). Only the
    weights file the description names is deleted, and not where another description
    names it: a description copied or renamed by hand (``a.json`` as ``b.json``) still
    names ``a.pt``, model ``a``'s weights, and ``b.pt`` beside it may be their only copy
    (:func:`weights_kept_on_removal` says which files stay).
    """
    validate_model_name(name)
    with _registration_locked():  # a registration meanwhile: "no user model named 'a'; the
        return _remove(name)  # user models are ['a']"


def _remove(name: str) -> list[Path]:
    sidecar = user_models_dir() / f"{name}.json"
    if sidecar.is_file() and is_other_json(sidecar):
        raise ValueError(
            f"{sidecar} holds other data than a user model's description; no user model is "
            f"named {name!r}, and the file is left as it is"
        )
    if not sidecar.is_file():  # a user model named so before a built-in one: removable
        _refuse_builtin_removal(name)
        users = [spec.name for spec in list_user_models()]
        which = f"the user models are {users!r}" if users else "there are no user models"
        raise ValueError(f"no user model named {name!r}; {which}")
    weights = {named_weights(sidecar)} - {None} - weights_in_use(besides=sidecar)
    deleted = []
    for path in (sidecar, *sorted(weights)):
        if path.is_file():
            _delete(path, name, deleted)
            deleted.append(path)
        if path != sidecar:
            stamp_path(path).unlink(missing_ok=True)
    return deleted


def _delete(path: Path, name: str, deleted: list[Path]) -> None:
    """Delete a file of user model ``name``; an ``OSError`` naming it, what was deleted
    before it and the fix (a read-only folder said only "[Errno 30] Read-only file system")."""
    try:
        path.unlink()
    except OSError as err:
        done = ", ".join(p.name for p in deleted) if deleted else "nothing"
        raise OSError(
            f"could not delete {path} ({err.strerror or err}) while removing user model "
            f"{name!r}; deleted before it: {done}. The user models folder {path.parent} must "
            "be writable: fix its permissions, or delete the files by hand"
        ) from err


def weights_kept_on_removal(name: str) -> list[tuple[Path, str]]:
    """The weights files of user model ``name`` that :func:`remove_user_model` leaves, each
    with why (and what to do): its own, named by another description too (kept for that
    model), or ``<name>.pt``/``.pth`` named by no description (to delete by hand if not
    needed). Another model's file that is named like ``name``'s (``mine-2.pt`` of model
    "mine") is not ``name``'s: it was listed, to be deleted by hand, which broke "mine"."""
    sidecar = user_models_dir() / f"{name}.json"
    named, others = named_weights(sidecar), weights_in_use(besides=sidecar)
    kept = []
    for path in sorted({named, *own_weights(name)} - {None}):
        if not path.is_file() or (path in others and path != named):
            continue
        if path in others:
            kept.append((path, "another model uses it too: kept for that model"))
        elif path != named:
            kept.append((path, f"{sidecar.name} does not name it; delete it by hand if not needed"))
    return kept


def _refuse_builtin_removal(name: str) -> None:
    """ValueError saying why built-in model or architecture ``name`` cannot be removed."""
    spec = builtin_model(name)
    if spec is None:
        if name in ARCHITECTURES:
            raise ValueError(f"{name!r} is an architecture name, not a model: nothing to remove")
        return
    path = spec.local_path()
    if spec.packaged:
        why = (
            f"it is built into napari-samtune ({path} ships inside the package): nothing to delete"
        )
    elif path.is_file():
        why = f"to free its disk space delete its downloaded file {path} (fetched again when used)"
    else:
        why = f"it is not downloaded ({path} does not exist): nothing to delete"
    raise ValueError(
        f"{name!r} is a built-in model, not a user model, and cannot be removed; {why}"
    )
