"""The user's own registered models: finetuned or imported SAM weights, used by name.

Each lives in :func:`~napari_samtune.core.registry.user_models_dir` as a plain SAM state
dict ``<name>.pt`` (``<name>.pth`` and back each time it is replaced) next to a JSON sidecar
``<name>.json`` that records the architecture, the file's size and sha256 hash, and
free-form metadata. The sidecars are the list of user models: a model is registered when
its sidecar is written, and gone when it is deleted.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from napari_samtune.core.architectures import ARCHITECTURES, SamArchitecture, as_architecture
from napari_samtune.core.checkpoints import atomic_write, remove_abandoned_writes
from napari_samtune.core.download import file_digest, stamp_path, write_stamp
from napari_samtune.core.registry import (
    USER_SOURCE,
    WEIGHTS_ID_PREFIX,
    ModelSpec,
    builtin_names,
    is_model_name,
    refuse_file_like_name,
    user_models_dir,
    validate_model_name,
)
from napari_samtune.core.user_model_weights import (
    WEIGHTS_SUFFIXES,
    new_weights_path,
    onto_own_stray,
    stray_note,
    weights_in_use,
    weights_named_by,
)

if TYPE_CHECKING:
    from napari_samtune.core.models import LoadedModel

SIDECAR_FORMAT = "napari-samtune-user-model"
SIDECAR_FORMAT_VERSION = 1
REGISTRATION_LOCK_NAME = ".samtune-register.lock"  # held while a registration writes
_registering = threading.Lock()  # the same within this process (napari's training threads)


class ModelNameTaken(ValueError):
    """A user model of that name exists, and replacing it was not asked for."""


def _spec_from_sidecar(path: Path, again: bool = True) -> ModelSpec:
    """The model a sidecar describes; ``ValueError`` etc. where it is broken. A model
    registered anew meanwhile (a continued run) writes its new description, then deletes
    the weights the old one named: a description read just before that is read ``again``
    (listings called such a model broken, "unregister it with samtune models --remove")."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"not a napari-samtune user model description (format {SIDECAR_FORMAT!r})")
    shape = SamArchitecture.from_dict(data["architecture"])
    known = shape.name in ARCHITECTURES and ARCHITECTURES[shape.name] == shape
    spec = ModelSpec(
        name=data["name"],
        architecture=shape.name if known else "custom",
        filename=data["filename"],
        file_hash=data.get("file_hash"),
        description=str(data.get("description", "")),
        source=USER_SOURCE,
        shape=None if known else shape,
        file_size=data.get("file_size"),  # absent in sidecars written before sizes were kept
        weights_id=_weights_id(data.get("model_id")),
    )
    if spec.name != path.stem:
        raise ValueError(f"it describes model {spec.name!r} but is named {path.name!r}")
    if spec.name in builtin_names():  # given to a built-in model since it was registered
        raise ValueError(f"{spec.name!r} is now the name of a built-in model, which takes it")
    if spec.local_path().suffix not in WEIGHTS_SUFFIXES:  # another model's description, say
        raise ValueError(f"it names {spec.filename!r}, which is no weights file (.pt or .pth)")
    if not spec.local_path().is_file():
        if again:
            return _spec_from_sidecar(path, again=False)
        raise ValueError(f"its weights file {spec.local_path()} is missing")
    return spec


def _weights_id(recorded: object) -> str | None:
    """The sidecar's ``model_id`` where it is a weights digest (what ``load_model`` computes
    for a file), else None: then the digest is computed at each load, as before."""
    digest = re.escape(WEIGHTS_ID_PREFIX) + "[0-9a-f]{64}"
    return recorded if isinstance(recorded, str) and re.fullmatch(digest, recorded) else None


def scan_user_models() -> tuple[list[ModelSpec], list[tuple[str, str]]]:
    """The user models described by ``<name>.json`` sidecars, and ``(name, reason)`` for
    each sidecar that is broken (unreadable, or its weights file is gone). A ``.json`` file
    that no model can be named after ('my notes.json'), or that holds other data
    (:func:`is_other_json`), is no sidecar and is left alone."""
    folder = user_models_dir()
    if not folder.is_dir():
        return [], []
    specs, broken = [], []
    # registering never writes such a file and --remove could not take its name
    sidecars = [path for path in folder.glob("*.json") if is_model_name(path.stem)]
    for sidecar in sorted(sidecars):
        try:
            specs.append(_spec_from_sidecar(sidecar))
        except (OSError, ValueError, TypeError, KeyError) as err:
            if not is_other_json(sidecar):  # (read again only here: no sidecar of ours)
                broken.append((sidecar.stem, f"{sidecar}: {err}"))
    return specs, broken


def is_other_json(path: Path) -> bool:
    """Whether ``path`` holds JSON that is no user model's description: no sidecar's format
    and no weights file named (``samtune evaluate --out`` into the folder wrote an
    evaluation.json, which was listed as a broken model, and ``samtune models --remove``
    deleted it). Unreadable JSON may be a description half written: not "other"."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return not isinstance(data, dict) or (
        data.get("format") != SIDECAR_FORMAT and "filename" not in data
    )


def list_user_models() -> list[ModelSpec]:
    """The usable user models; a broken one is skipped with a warning that says the fix."""
    specs, broken = scan_user_models()
    for name, reason in broken:
        warnings.warn(
            f"skipping user model {name!r} ({reason}); {broken_user_model_fix(name)}",
            stacklevel=2,
        )
    return specs


def broken_user_model_fix(name: str) -> str:
    """What to do about user model ``name`` whose files are missing or unreadable."""
    from napari_samtune.core.user_model_rename import rename_fix  # it imports this module

    renaming = rename_fix(name)
    return renaming or f"restore its files, or unregister it with: samtune models --remove {name}"


def damaged_user_model_fix(name: str) -> str:
    """What to do about user model ``name`` whose weights file no longer matches its record."""
    return (
        f"unregister it with: samtune models --remove {name} (then, to have it again, register "
        f"it anew from its training run: samtune export RUN/checkpoints/best.pt -o FILE "
        f"--register {name})"
    )


def user_model_spec(name: str) -> ModelSpec | None:
    """User model ``name`` as its sidecar describes it; None when there is no sidecar of
    that name, ValueError (saying the fix) when the model is broken."""
    sidecar = user_models_dir() / f"{name}.json"
    if not (is_model_name(name) and sidecar.is_file()):
        return None
    try:
        return _spec_from_sidecar(sidecar)
    except (OSError, ValueError, TypeError, KeyError) as err:
        if is_other_json(sidecar):  # a file of other data names no model: 'unknown model'
            return None
        raise ValueError(
            f"user model {name!r} is broken ({sidecar}): {err}; {broken_user_model_fix(name)}"
        ) from err


def register_user_model(
    state_dict_path: Path,
    name: str,
    architecture: SamArchitecture | str,
    metadata: dict | None = None,
    *,
    overwrite: bool = False,
    keep_former_names: bool = False,
) -> Path:
    """Store SAM weights as user model ``name`` and return the path of its weights file.

    ``state_dict_path`` may hold any weights :func:`~napari_samtune.core.models.load_model`
    reads (plain SAM state dict, project checkpoint, micro-sam export); they must fit
    ``architecture`` (or the architecture it names, e.g. ``"vit_b"``, as ``load_model`` takes
    it) exactly. The folder gets ``<name>.pt`` (a plain SAM state dict,
    written atomically), ``<name>.json`` (architecture, metadata, the file's size and
    sha256 hash) and the verification stamp of the new file. Built-in
    names are refused; an existing user model is replaced only with ``overwrite=True``,
    keeping the names ``samtune models --rename`` took from it with ``keep_former_names``
    (new weights of the same model: a continued run's; other weights under its name do not
    answer to them).
    Afterwards ``load_model(name)`` works and :func:`.model_lookup.list_models` lists it.
    """
    # models imports this module (through model_lookup): import late
    from napari_samtune.core import models

    _check_new_name(name, overwrite)
    # before any file is written: a name here failed at the sidecar ("'str' object has no
    # attribute 'to_dict'") and left <name>.pt in the folder, registered as nothing
    architecture = as_architecture(architecture)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata={metadata!r} must be a dict or None")
    from napari_samtune.core.train_export import jsonable

    try:  # an infinite or NaN number (a run stopped before its first score) as null
        metadata_json = json.loads(json.dumps(jsonable(metadata or {}), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {err}"
        ) from None
    state_dict_path = Path(state_dict_path).expanduser().resolve()  # one path for both
    loaded = models.load_model(state_dict_path, architecture=architecture)
    details = {  # the sidecar's fields that say where the weights came from
        "registered_from": str(state_dict_path),
        "description": str((metadata or {}).get("description", "")),
        "metadata": metadata_json,
    }
    with _registration_locked():
        _check_new_name(name, overwrite)  # again: another process may have taken it since
        return _store(loaded, name, architecture, details, keep_former_names)


def _store(
    loaded: LoadedModel, name: str, architecture: SamArchitecture, details: dict, keep_names: bool
) -> Path:
    """Write user model ``name``'s weights, sidecar (with ``details``, and the former names
    of the one it replaces where ``keep_names``) and stamp."""
    from napari_samtune.core import models

    # what a registration killed mid-write left (a model's size each), before writing more
    remove_abandoned_writes(user_models_dir(), ".*.tmp")
    sidecar_path = user_models_dir() / f"{name}.json"
    replaced = weights_named_by(sidecar_path) if sidecar_path.is_file() else None
    # a model registered anew under its name (a continued run) keeps the names it had:
    # runs trained from it and the widgets' remembered model still call it by them
    former = _former_names(sidecar_path) if replaced is not None and keep_names else []
    weights_path, strays = new_weights_path(name, replaced)
    models.export_sam_state_dict(loaded.sam, weights_path)
    weights_path = onto_own_stray(weights_path, strays)
    file_hash = "sha256:" + file_digest(weights_path, "sha256")
    for stray in strays:
        warnings.warn(stray_note(stray, name, weights_path), stacklevel=3)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "name": name,
        "filename": weights_path.name,
        "architecture": architecture.to_dict(),
        "file_hash": file_hash,
        "file_size": weights_path.stat().st_size,
        "model_id": loaded.model_id,
        "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **details,
        **({"former_names": former} if former else {}),
    }
    _write_json_atomically(sidecar_path, sidecar)
    write_stamp(weights_path, file_hash)  # just hashed: listing and loading need not hash again
    if replaced is not None and replaced != weights_path and replaced not in weights_in_use():
        replaced.unlink(missing_ok=True)
        stamp_path(replaced).unlink(missing_ok=True)
    return weights_path


def _former_names(sidecar_path: Path) -> list[str]:
    """The names a user model had before ``samtune models --rename`` gave it its own, as
    its description records them; none where it cannot be read."""
    try:
        former = json.loads(sidecar_path.read_text(encoding="utf-8")).get("former_names", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in former if isinstance(name, str)] if isinstance(former, list) else []


@contextmanager
def _registration_locked() -> Iterator[None]:
    """Hold the user-models folder while one registration checks its name and writes: two
    at once (two runs finishing, two scripts) both took a free name, and the later one's
    files replaced the other's model without a word. Waits for another process's
    registration; where the system offers no locks (Windows, some network file systems),
    only this process's registrations are kept apart."""
    with _registering:
        lock = _open_registration_lock()
        if lock is None:
            yield
            return
        with lock:
            import fcntl

            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # waits (a registration takes seconds)
            except OSError:  # no locks on this file system
                pass
            yield  # closing the file frees the lock


def _open_registration_lock():
    """The user-models folder's lock file, opened; None on Windows (no ``fcntl``) or where
    it cannot be made (a folder not writable: writing the model says so)."""
    try:
        import fcntl  # noqa: F401 (only its presence)
    except ImportError:
        return None
    folder = user_models_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / REGISTRATION_LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError:
        return None


def case_twin(name: str, besides: str | None = None) -> str | None:
    """The user model, other than ``besides``, whose name is ``name`` in another case
    (``Run1B`` for ``run1b``): on macOS and Windows the two would share their files."""
    folder = user_models_dir()
    try:
        stems = [path.stem for path in folder.glob("*.json")]  # as the disk spells them
    except OSError:
        return None
    for stem in stems:
        if stem not in (name, besides) and stem.casefold() == name.casefold():
            if not is_other_json(folder / f"{stem}.json"):
                return stem
    return None


def case_twin_problem(name: str, twin: str) -> str:
    return (
        f"user model {twin!r} differs from {name!r} only in case, and on macOS and Windows "
        "the two would be one file; pick another name"
    )


def _check_new_name(name: str, overwrite: bool) -> None:
    validate_model_name(name)
    if name in builtin_names() or name in ARCHITECTURES:
        raise ValueError(
            f"name={name!r} is a built-in model or architecture name; pick another name, "
            f"e.g. {name + '_finetuned'!r}"
        )
    twin = case_twin(name)
    if twin is not None:  # not even with overwrite: it is another model
        raise ModelNameTaken(f"name={name!r}: {case_twin_problem(name, twin)}")
    sidecar = user_models_dir() / f"{name}.json"
    if sidecar.is_file() and is_other_json(sidecar):  # not even with overwrite: it is not ours
        raise ModelNameTaken(
            f"name={name!r}: {sidecar} holds other data than a user model's description; "
            "move that file away or pick another name"
        )
    registered = sidecar.exists()
    if not registered:  # one registered before keeps its name (continued runs replace it)
        refuse_file_like_name(name)
    if registered and not overwrite:
        raise ModelNameTaken(
            f"a user model named {name!r} already exists in {user_models_dir()}; "
            "pass overwrite=True to replace it or pick another name"
        )


def _write_json_atomically(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
