"""Renaming a user model: its description ``<name>.json`` and its weights file take the new
name; the weights' bytes, hash, size and model id stay, so the hash check, the verification
stamp and the embedding caches (keyed by the weights, not the name) still hold.

It also mends a description renamed by hand: ``cells_v1.json``/``cells_v1.pt`` moved to
``cells_best.*`` describe model 'cells_v1' under the name 'cells_best' and name a weights
file that is gone; ``rename_user_model("cells_best", "cells_best")`` takes the file's name
as the model's and the weights renamed with it, once their recorded hash matches.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from napari_samtune.core.architectures import ARCHITECTURES
from napari_samtune.core.checkpoints import one_file
from napari_samtune.core.download import mismatched_digest, stamp_path
from napari_samtune.core.registry import (
    builtin_names,
    refuse_file_like_name,
    user_models_dir,
    validate_model_name,
)
from napari_samtune.core.user_model_weights import (
    WEIGHTS_SUFFIXES,
    is_stray,
    own_weights,
    stray_note,
    weights_in_use,
)
from napari_samtune.core.user_models import (
    SIDECAR_FORMAT,
    _registration_locked,
    _write_json_atomically,
    case_twin,
    case_twin_problem,
    is_other_json,
)


def rename_user_model(old_name: str, new_name: str) -> Path:
    """Give user model ``old_name`` the name ``new_name``; returns its weights file's path.

    ``<old_name>.json`` becomes ``<new_name>.json`` recording the new name, and its weights
    ``<new_name>.pt`` (``.pth`` where a ``.pt`` of that name is there already; no file is
    written over). ``new_name`` is refused where it is a built-in model's or an
    architecture's name, a user model's, ends like a weights file or is no valid name.
    ``new_name == old_name`` mends a description renamed by hand (see the module).
    The new description is written before the weights move and the old one is deleted
    last, so a crash at any point leaves the weights named by a description; it runs under
    the registration lock, so no registration takes either name meanwhile.
    """
    validate_model_name(old_name, "old_name")
    validate_model_name(new_name, "new_name")
    with _registration_locked():
        sidecar = user_models_dir() / f"{old_name}.json"
        data = _read_description(sidecar, old_name)
        _check_rename(old_name, new_name, data)
        weights = _current_weights(sidecar, data)
        target = _target_weights(old_name, new_name, weights)
        _move(sidecar, data, weights, target, new_name)
        in_use = weights_in_use()
        for stray in own_weights(new_name):  # a file of the new name there already
            if stray != target and is_stray(stray, in_use):
                warnings.warn(stray_note(stray, new_name, target), stacklevel=2)
        return target


def rename_fix(name: str) -> str | None:
    """The ``samtune models --rename`` that keeps broken user model ``name``'s weights, or
    None where renaming mends nothing. Files renamed by hand (``cells_v1.json``/``.pt`` as
    ``cells_best.*``) were told ``--remove cells_best``, which deleted the only weights."""
    sidecar = user_models_dir() / f"{name}.json"
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        described, named = str(data["name"]), user_models_dir() / Path(data["filename"]).name
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if name in builtin_names():
        return f"keep its weights under another name with: samtune models --rename {name} NEW"
    others = weights_in_use(besides=sidecar)
    size = data.get("file_size")
    found = [  # cheap: the rename itself checks the hash of what it takes
        path
        for path in (named, *own_weights(name))
        if path.is_file()
        and path not in others
        and path.suffix in WEIGHTS_SUFFIXES  # (another model's description is no weights)
        and size in (None, path.stat().st_size)
    ]
    if described == name or not found:
        return None
    return (
        f"keep its weights ({found[0].name}) under the file's name with: samtune models "
        f"--rename {name} {name} (or --rename {name} NEW to name it anew)"
    )


def renamed_to(name: str) -> str | None:
    """The name user model ``name`` has now where it was renamed (``samtune models
    --rename``), else None: runs trained from it, and the widgets' remembered model, still
    call it by its former name."""
    if not isinstance(name, str) or not name:
        return None
    folder = user_models_dir()
    for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            former, current = data.get("former_names", []), data["name"]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        if isinstance(former, list) and name in former and current == sidecar.stem != name:
            return current
    return None


def renamed_note(name: object) -> str:
    """``"; user model 'a' was renamed 'b' ..."`` for an error about unknown model ``name``
    where it was renamed, else ""."""
    new = renamed_to(name) if isinstance(name, str) else None
    if new is None:
        return ""
    return f"; user model {name!r} was renamed {new!r} (samtune models --rename): use {new!r}"


def _read_description(sidecar: Path, old_name: str) -> dict:
    """The description of user model ``old_name``; ValueError where there is none."""
    if not sidecar.is_file() and old_name in builtin_names():
        raise ValueError(
            f"old_name={old_name!r} is a built-in model; only your own user models can be "
            "renamed ('samtune models' lists them)"
        )
    if not sidecar.is_file():
        raise ValueError(
            f"old_name={old_name!r}: there is no user model of that name ({sidecar} does not "
            "exist); 'samtune models' lists them"
        )
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        if data.get("format") != SIDECAR_FORMAT or not isinstance(data["filename"], str):
            raise ValueError(f"not a napari-samtune user model description ({SIDECAR_FORMAT!r})")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(
            f"user model {old_name!r} cannot be renamed: its description {sidecar} cannot be "
            f"read ({err}); restore it, or register the weights anew under the new name"
        ) from err
    return data


def _check_rename(old_name: str, new_name: str, data: dict) -> None:
    """ValueError where user model ``old_name`` cannot take ``new_name``."""
    if new_name in builtin_names() or new_name in ARCHITECTURES:
        raise ValueError(
            f"new_name={new_name!r} is a built-in model or architecture name; give user model "
            f"{old_name!r} another name, e.g. {new_name + '_mine'!r}"
        )
    if new_name == old_name:
        if data.get("name") == old_name:
            raise ValueError(f"new_name={new_name!r} is already that user model's name")
        return  # mending a description renamed by hand
    taken = user_models_dir() / f"{new_name}.json"
    sidecar = user_models_dir() / f"{old_name}.json"
    # a case-only rename on macOS or Windows: Cells.json is cells.json, which was refused
    # as another model's, advising to remove it (the model's only description)
    if one_file(taken, sidecar):
        return
    twin = case_twin(new_name, besides=old_name)
    if twin is not None:
        raise ValueError(f"new_name={new_name!r}: {case_twin_problem(new_name, twin)}")
    if taken.exists() and is_other_json(taken):
        raise ValueError(
            f"new_name={new_name!r}: {taken} is a file of other data than a user model's "
            "description; move it away or pick another name"
        )
    if taken.exists():
        raise ValueError(
            f"new_name={new_name!r} is taken by another user model in {user_models_dir()}; "
            f"pick another name, or remove that one first (samtune models --remove {new_name})"
        )
    refuse_file_like_name(new_name, "new_name")


def _current_weights(sidecar: Path, data: dict) -> Path:
    """The weights file the model in ``sidecar`` has: the one it names where that is there
    and no other description's, else ``<name>.pt``/``.pth`` renamed or copied with it by hand
    where it holds the recorded weights (hash, else size)."""
    named = user_models_dir() / Path(data["filename"]).name
    others = weights_in_use(besides=sidecar)
    if named.is_file() and named not in others and named.suffix in WEIGHTS_SUFFIXES:
        return named
    for path in own_weights(sidecar.stem):
        if path.is_file() and path not in others and _holds_recorded_weights(path, data):
            return path
    if named in others:
        whose = "another model's description names it"
    elif named.suffix not in WEIGHTS_SUFFIXES:
        whose = "it is no weights file (.pt or .pth)"
    else:
        whose = "it is missing"
    raise ValueError(
        f"user model {sidecar.stem!r} cannot be renamed: its description {sidecar.name} names "
        f"the weights file {named} ({whose}), and no {sidecar.stem}.pt or .pth beside it holds "
        "the weights it records; restore its weights file first"
    )


def _holds_recorded_weights(path: Path, data: dict) -> bool:
    if data.get("file_hash") is not None:
        try:
            return mismatched_digest(path, data["file_hash"]) is None  # stamps it on a match
        except (TypeError, ValueError):  # a hash that is no hash: nothing to go by
            return False
    size = data.get("file_size")
    return size is None or size == path.stat().st_size


def _target_weights(old_name: str, new_name: str, weights: Path) -> Path:
    """Where the weights go: nowhere where the file already bears the new name, or when
    mending in place (a rewritten description is one atomic step, a move is another);
    else the first of ``<new_name>.pt``/``.pth`` that is no file yet."""
    own = own_weights(new_name)
    if weights in own or new_name == old_name:
        return weights
    for path in own:  # the same file under another case (a case-insensitive disk)
        if one_file(path, weights):
            return path
    for path in own:
        if not path.exists():
            return path
    raise ValueError(
        f"new_name={new_name!r}: {own[0]} and {own[1]} are files already (named by no user "
        "model); move them away or pick another name"
    )


def _move(sidecar: Path, data: dict, weights: Path, target: Path, new_name: str) -> None:
    """Write the new description, move the weights and stamp, delete the old description."""
    new_sidecar = sidecar.with_name(f"{new_name}.json")
    described = {**data, "name": new_name, "filename": target.name}
    if data.get("name") != new_name:  # what runs trained from it and settings call it
        former = [*data.get("former_names", []), data.get("name")]
        described["former_names"] = [name for name in former if isinstance(name, str)]
    _write_json_atomically(new_sidecar, described)
    if target != weights:
        try:
            os.rename(weights, target)
        except OSError as err:
            if new_sidecar != sidecar:  # the old description still names the weights
                new_sidecar.unlink(missing_ok=True)
            raise OSError(
                f"could not move {weights} to {target} ({err.strerror or err}) renaming user "
                f"model {sidecar.stem!r} to {new_name!r}; nothing was renamed. The user models "
                f"folder {sidecar.parent} must be writable"
            ) from err
        try:  # the stamp records size and mtime, which a move keeps: no hashing again
            os.replace(stamp_path(weights), stamp_path(target))
        except OSError:
            pass  # only costs hashing the file at its next check
    if new_sidecar != sidecar and not one_file(new_sidecar, sidecar):
        sidecar.unlink()
