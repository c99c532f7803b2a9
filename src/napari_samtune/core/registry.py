"""Which SAM models exist, where their files live, and the user's own registered models.

Built-in models are downloaded on first use into ``cache_dir() / "models"``,
except packaged ones (the offline "nano" generalist), which ship inside the
package in ``packaged_weights_dir()`` and have no URL;
user models (finetuned or imported weights) live in ``user_models_dir()`` as a
plain SAM state dict ``<name>.pt`` next to a JSON sidecar ``<name>.json`` that
records the architecture, the file's size and sha256 hash, and free-form metadata.
Both folders can be moved with the environment variables ``SAMTUNE_CACHE_DIR`` and
``SAMTUNE_MODELS_DIR``.

Published file hashes are written ``"<algorithm>:<hex>"``: ``sha256`` for the
official SAM and MobileSAM checkpoints, ``xxh128`` for micro-sam's models (the
algorithm micro-sam publishes them with).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import platformdirs

from napari_samtune.core.architectures import ARCHITECTURES, SamArchitecture
from napari_samtune.core.checkpoints import atomic_write

APP_NAME = "napari-samtune"
USER_SOURCE = "user"
SIDECAR_FORMAT = "napari-samtune-user-model"
SIDECAR_FORMAT_VERSION = 1
HASH_ALGORITHMS = {"sha256": 64, "xxh128": 32}  # algorithm -> length of its hex digest
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def cache_dir() -> Path:
    """Per-user cache folder (env ``SAMTUNE_CACHE_DIR``, else the platform's cache dir)."""
    env = os.environ.get("SAMTUNE_CACHE_DIR")
    return Path(env) if env else platformdirs.user_cache_path(APP_NAME)


def models_cache_dir() -> Path:
    """Folder that downloaded built-in weights go to: ``cache_dir() / "models"``."""
    return cache_dir() / "models"


def packaged_weights_dir() -> Path:
    """Folder of the weights shipped inside the package (``napari_samtune/weights``)."""
    return Path(__file__).resolve().parent.parent / "weights"


def user_models_dir() -> Path:
    """Folder of user-registered models (env ``SAMTUNE_MODELS_DIR``, else user data dir)."""
    env = os.environ.get("SAMTUNE_MODELS_DIR")
    return Path(env) if env else platformdirs.user_data_path(APP_NAME) / "models"


def parse_hash(file_hash: str) -> tuple[str, str]:
    """Split ``"sha256:<hex>"``, ``"xxh128:<hex>"`` or a bare sha256 hex into (algorithm, hex)."""
    if not isinstance(file_hash, str):
        raise TypeError(f"file_hash={file_hash!r} must be a string like 'sha256:<hex>'")
    algorithm, _, digest = file_hash.rpartition(":")
    algorithm = algorithm.lower() or "sha256"
    digest = digest.lower()
    if algorithm not in HASH_ALGORITHMS:
        raise ValueError(
            f"file_hash={file_hash!r} uses algorithm {algorithm!r}; "
            f"supported: {sorted(HASH_ALGORITHMS)!r}"
        )
    if len(digest) != HASH_ALGORITHMS[algorithm] or not re.fullmatch(r"[0-9a-f]+", digest):
        raise ValueError(
            f"file_hash={file_hash!r} is not a {algorithm} digest: expected "
            f"{HASH_ALGORITHMS[algorithm]} hexadecimal characters after '{algorithm}:'"
        )
    return algorithm, digest


def validate_model_name(name: str, parameter: str | None = None) -> str:
    """Return ``name`` if it is usable as a model name and a file name, else raise ValueError
    (naming ``parameter``, e.g. ``"model_name"``, when given)."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        subject = f"{parameter}={name!r}" if parameter else f"model name {name!r}"
        raise ValueError(
            f"{subject} is not allowed: use 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (no spaces or path separators)"
        )
    return name


@dataclass(frozen=True)
class ModelSpec:
    """One model users can pick by name: where its weights come from and what shape it has."""

    name: str  # what users type, e.g. "vit_b_lm"
    architecture: str  # key of ARCHITECTURES, or "custom" for a user model of its own shape
    filename: str  # file name in models_cache_dir() (built-in) or user_models_dir() (user)
    url: str | None = None  # download address; None for user models
    file_hash: str | None = None  # published hash "sha256:<hex>" / "xxh128:<hex>"; None: unchecked
    description: str = ""  # one line for tables and tooltips
    source: str = USER_SOURCE  # "official SAM", "MobileSAM", "micro-sam generalist" or "user"
    shape: SamArchitecture | None = None  # full shape when architecture is "custom"
    packaged: bool = False  # weights ship inside the package (packaged_weights_dir), no URL
    file_size: int | None = None  # bytes of the file when registered (user models); None: unchecked

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        if self.architecture not in ARCHITECTURES and self.shape is None:
            raise ValueError(
                f"architecture={self.architecture!r} for model {self.name!r}; choose one of "
                f"{sorted(ARCHITECTURES)!r} or pass the full shape as shape=SamArchitecture(...)"
            )
        if Path(self.filename).name != self.filename or self.filename in ("", ".", ".."):
            raise ValueError(f"filename={self.filename!r} must be a bare file name, not a path")
        if self.file_hash is not None:
            parse_hash(self.file_hash)
        if self.file_size is not None and (type(self.file_size) is not int or self.file_size < 0):
            raise ValueError(
                f"file_size={self.file_size!r} for model {self.name!r} must be a number of "
                "bytes (an int >= 0) or None"
            )
        if self.packaged and (self.url is not None or self.is_user_model):
            raise ValueError(
                f"model {self.name!r}: packaged weights need url=None and a built-in source, "
                f"got url={self.url!r}, source={self.source!r}"
            )

    @property
    def is_user_model(self) -> bool:
        return self.source == USER_SOURCE

    def resolve_architecture(self) -> SamArchitecture:
        """The full :class:`SamArchitecture` of this model."""
        return self.shape if self.shape is not None else ARCHITECTURES[self.architecture]

    def local_path(self) -> Path:
        """Where the weights file is (or will be, once downloaded)."""
        if self.packaged:
            return packaged_weights_dir() / self.filename
        folder = user_models_dir() if self.is_user_model else models_cache_dir()
        return folder / self.filename


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_BIOIMAGEIO_URL = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_MICRO_SAM = "micro-sam generalist"

# sha256 of weights/nano.pth; `benchmarks/train_nano.py --install` rewrites the next line.
NANO_SHA256 = "sha256:0f2c709a0447ac7eb5bd7dbfe64dbc16ff39e9116839371318a7d8de575fc100"

# Hashes and addresses as published by the SAM / MobileSAM authors and by micro-sam
# (micro_sam/v1/util.py, models()). The test architecture "tiny" is deliberately absent.
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "vit_t", "vit_t", "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "sha256:6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        "MobileSAM: TinyViT encoder, fast on CPU (39 MB)", "MobileSAM",
    ),
    ModelSpec(
        "vit_b", "vit_b", "sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth",
        "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "Segment Anything ViT-B (375 MB)", "official SAM",
    ),
    ModelSpec(
        "vit_l", "vit_l", "sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth",
        "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "Segment Anything ViT-L (1.2 GB)", "official SAM",
    ),
    ModelSpec(
        "vit_h", "vit_h", "sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth",
        "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "Segment Anything ViT-H (2.6 GB)", "official SAM",
    ),
    ModelSpec(
        "vit_t_lm", "vit_t", "vit_t_lm.pt",
        _BIOIMAGEIO_URL + "faithful-chicken/1.1/files/vit_t.pt",
        "xxh128:72ec5074774761a6e5c05a08942f981e",
        "micro-sam light microscopy generalist, ViT-T", _MICRO_SAM,
    ),
    ModelSpec(
        "vit_b_lm", "vit_b", "vit_b_lm.pt",
        _BIOIMAGEIO_URL + "diplomatic-bug/1.2/files/vit_b.pt",
        "xxh128:fe9252a29f3f4ea53c15a06de471e186",
        "micro-sam light microscopy generalist, ViT-B", _MICRO_SAM,
    ),
    ModelSpec(
        "vit_l_lm", "vit_l", "vit_l_lm.pt",
        _BIOIMAGEIO_URL + "idealistic-rat/1.2/files/vit_l.pt",
        "xxh128:017f20677997d628426dec80a8018f9d",
        "micro-sam light microscopy generalist, ViT-L", _MICRO_SAM,
    ),
    ModelSpec(
        "vit_t_em_organelles", "vit_t", "vit_t_em_organelles.pt",
        _BIOIMAGEIO_URL + "greedy-whale/1/files/vit_t.pt",
        "xxh128:253474720c497cce605e57c9b1d18fd9",
        "micro-sam electron microscopy organelles generalist, ViT-T", _MICRO_SAM,
    ),
    ModelSpec(
        "vit_b_em_organelles", "vit_b", "vit_b_em_organelles.pt",
        _BIOIMAGEIO_URL + "noisy-ox/1.2/files/vit_b.pt",
        "xxh128:f3bf2ed83d691456bae2c3f9a05fb438",
        "micro-sam electron microscopy organelles generalist, ViT-B", _MICRO_SAM,
    ),
    ModelSpec(
        "vit_l_em_organelles", "vit_l", "vit_l_em_organelles.pt",
        _BIOIMAGEIO_URL + "humorous-crab/1.2/files/vit_l.pt",
        "xxh128:810b084b6e51acdbf760a993d8619f2d",
        "micro-sam electron microscopy organelles generalist, ViT-L", _MICRO_SAM,
    ),
    # Trained from scratch on generated images by benchmarks/train_nano.py; ships with the
    # package (fp16, ~4 MB) so demos and tests run offline. Not a replacement for vit_b.
    ModelSpec(
        "nano", "nano", "nano.pth", None, NANO_SHA256,
        "offline generalist for demos: 1.9 M params, 256 px, trained on synthetic "
        "fluorescence-like images", "napari-samtune (packaged)", packaged=True,
    ),
)  # fmt: skip


def _spec_from_sidecar(path: Path) -> ModelSpec:
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
    )
    if spec.name != path.stem:
        raise ValueError(f"it describes model {spec.name!r} but is named {path.name!r}")
    if spec.name in _builtin_names():
        raise ValueError(f"{spec.name!r} is the name of a built-in model; rename the files")
    if not spec.local_path().is_file():
        raise ValueError(f"its weights file {spec.local_path()} is missing")
    return spec


def scan_user_models() -> tuple[list[ModelSpec], list[tuple[str, str]]]:
    """The user models described by ``<name>.json`` sidecars, and ``(name, reason)`` for
    each sidecar that is broken (unreadable, or its weights file is gone)."""
    folder = user_models_dir()
    if not folder.is_dir():
        return [], []
    specs, broken = [], []
    for sidecar in sorted(folder.glob("*.json")):
        try:
            specs.append(_spec_from_sidecar(sidecar))
        except (OSError, ValueError, TypeError, KeyError) as err:
            broken.append((sidecar.stem, f"{sidecar}: {err}"))
    return specs, broken


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
    return f"restore its files, or unregister it with: samtune models --remove {name}"


def damaged_user_model_fix(name: str) -> str:
    """What to do about user model ``name`` whose weights file no longer matches its record."""
    return (
        f"unregister it with: samtune models --remove {name} (then, to have it again, register "
        f"it anew from its training run: samtune export RUN/checkpoints/best.pt -o FILE "
        f"--register {name})"
    )


def _builtin_names() -> set[str]:
    return {spec.name for spec in BUILTIN_MODELS}


def list_models() -> list[ModelSpec]:
    """Built-in models followed by the user's registered models."""
    return [*BUILTIN_MODELS, *list_user_models()]


def get_model_spec(name: str) -> ModelSpec:
    """The model called ``name`` (built-in or user); ValueError listing the choices otherwise."""
    for spec in BUILTIN_MODELS:
        if spec.name == name:
            return spec
    sidecar = user_models_dir() / f"{name}.json"
    if isinstance(name, str) and _NAME_PATTERN.fullmatch(name) and sidecar.is_file():
        try:
            return _spec_from_sidecar(sidecar)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"user model {name!r} is broken ({sidecar}): {err}; {broken_user_model_fix(name)}"
            ) from err
    choices = [spec.name for spec in list_models()]
    raise ValueError(f"unknown model {name!r}; choose one of {choices!r} or give a file path")


def register_user_model(
    state_dict_path: Path,
    name: str,
    architecture: SamArchitecture,
    metadata: dict | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Store SAM weights as user model ``name`` and return the path of its weights file.

    ``state_dict_path`` may hold any weights :func:`~napari_samtune.core.models.load_model`
    reads (plain SAM state dict, project checkpoint, micro-sam export); they must fit
    ``architecture`` exactly. The folder gets ``<name>.pt`` (a plain SAM state dict,
    written atomically), ``<name>.json`` (architecture, metadata, the file's size and
    sha256 hash) and the verification stamp of the new file. Built-in
    names are refused; an existing user model is replaced only with ``overwrite=True``.
    Afterwards ``load_model(name)`` works and :func:`list_models` lists it.
    """
    from napari_samtune.core import models  # models imports this module: import late
    from napari_samtune.core.download import file_digest, write_stamp

    _check_new_name(name, overwrite)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata={metadata!r} must be a dict or None")
    try:
        metadata_json = json.loads(json.dumps(metadata or {}))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {err}"
        ) from None
    loaded = models.load_model(Path(state_dict_path), architecture=architecture)
    weights_path = user_models_dir() / f"{name}.pt"
    models.export_sam_state_dict(loaded.sam, weights_path)
    file_hash = "sha256:" + file_digest(weights_path, "sha256")
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "name": name,
        "filename": weights_path.name,
        "architecture": architecture.to_dict(),
        "file_hash": file_hash,
        "file_size": weights_path.stat().st_size,
        "model_id": loaded.model_id,
        "registered_from": str(Path(state_dict_path).resolve()),
        "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "description": str((metadata or {}).get("description", "")),
        "metadata": metadata_json,
    }
    _write_json_atomically(user_models_dir() / f"{name}.json", sidecar)
    write_stamp(weights_path, file_hash)  # just hashed: listing and loading need not hash again
    return weights_path


def remove_user_model(name: str) -> list[Path]:
    """Unregister user model ``name`` and delete its files; returns the deleted paths.

    The description goes first, so a failure part-way leaves no half-listed model.
    The weights file's verification stamp goes too (not in the returned list).
    """
    from napari_samtune.core.download import stamp_path

    validate_model_name(name)
    _refuse_builtin_removal(name)
    sidecar = user_models_dir() / f"{name}.json"
    if not sidecar.is_file():
        users = [spec.name for spec in list_user_models()]
        raise ValueError(f"no user model named {name!r}; the user models are {users!r}")
    try:
        filename = json.loads(sidecar.read_text(encoding="utf-8"))["filename"]
        weights = user_models_dir() / Path(str(filename)).name
    except (OSError, ValueError, TypeError, KeyError):  # a broken description: its usual name
        weights = user_models_dir() / f"{name}.pt"
    deleted = []
    for path in (sidecar, weights):
        if path.is_file():
            path.unlink()
            deleted.append(path)
    stamp_path(weights).unlink(missing_ok=True)
    return deleted


def _refuse_builtin_removal(name: str) -> None:
    """ValueError saying why built-in model or architecture ``name`` cannot be removed."""
    spec = next((spec for spec in BUILTIN_MODELS if spec.name == name), None)
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


def _check_new_name(name: str, overwrite: bool) -> None:
    validate_model_name(name)
    if name in _builtin_names() or name in ARCHITECTURES:
        raise ValueError(
            f"name={name!r} is a built-in model or architecture name; pick another name, "
            f"e.g. {name + '_finetuned'!r}"
        )
    if (user_models_dir() / f"{name}.json").exists() and not overwrite:
        raise ValueError(
            f"a user model named {name!r} already exists in {user_models_dir()}; "
            "pass overwrite=True to replace it or pick another name"
        )


def _write_json_atomically(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
