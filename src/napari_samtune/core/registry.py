"""Which SAM models are built in, and where model files live.

Built-in models are downloaded on first use into ``cache_dir() / "models"``,
except packaged ones (the offline "nano" generalist), which ship inside the
package in ``packaged_weights_dir()`` and have no URL;
user models (finetuned or imported weights, :mod:`~napari_samtune.core.user_models`)
live in ``user_models_dir()``. Both folders can be moved with the environment variables
``SAMTUNE_CACHE_DIR`` and ``SAMTUNE_MODELS_DIR``. A model is looked up by name among
both kinds with :mod:`~napari_samtune.core.model_lookup`.

Published file hashes are written ``"<algorithm>:<hex>"``: ``sha256`` for the
official SAM and MobileSAM checkpoints, ``xxh128`` for micro-sam's models (the
algorithm micro-sam publishes them with).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs

from napari_samtune.core.architectures import ARCHITECTURES, SamArchitecture
from napari_samtune.core.file_names import is_device_name

APP_NAME = "napari-samtune"
USER_SOURCE = "user"
HASH_ALGORITHMS = {"sha256": 64, "xxh128": 32}  # algorithm -> length of its hex digest
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def cache_dir() -> Path:
    """Per-user cache folder (env ``SAMTUNE_CACHE_DIR``, ``~`` expanded, else the platform's
    cache dir)."""
    env = os.environ.get("SAMTUNE_CACHE_DIR")
    # expanded here: a "~" from a quoted or non-shell setting would be a folder named "~"
    return Path(env).expanduser() if env else platformdirs.user_cache_path(APP_NAME)


def models_cache_dir() -> Path:
    """Folder that downloaded built-in weights go to: ``cache_dir() / "models"``."""
    return cache_dir() / "models"


def packaged_weights_dir() -> Path:
    """Folder of the weights shipped inside the package (``napari_samtune/weights``)."""
    return Path(__file__).resolve().parent.parent / "weights"


def user_models_dir() -> Path:
    """Folder of user-registered models (env ``SAMTUNE_MODELS_DIR``, ``~`` expanded, else
    the user data dir)."""
    env = os.environ.get("SAMTUNE_MODELS_DIR")
    return Path(env).expanduser() if env else platformdirs.user_data_path(APP_NAME) / "models"


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


def file_model_id(file_hash: str) -> str:
    """The model id of a built-in model's weights, from their published hash:
    ``file-<algorithm>-<hex>`` (what a run records as its base, ``base_model_id``)."""
    algorithm, digest = parse_hash(file_hash)
    return f"file-{algorithm}-{digest}"


def is_model_name(name: object) -> bool:
    """Whether ``name`` is usable as a model name and a file name (on Windows too: not a
    device's name such as ``con``, whose ``con.pt`` Windows takes for the console)."""
    return (
        isinstance(name, str)
        and _NAME_PATTERN.fullmatch(name) is not None
        and not is_device_name(name)
    )


def validate_model_name(name: str, parameter: str | None = None) -> str:
    """Return ``name`` if it is usable as a model name and a file name, else raise ValueError
    (naming ``parameter``, e.g. ``"model_name"``, when given)."""
    if not is_model_name(name):
        subject = f"{parameter}={name!r}" if parameter else f"model name {name!r}"
        raise ValueError(
            f"{subject} is not allowed: use 1-100 ASCII letters (a-z, A-Z), digits, "
            "'_', '-' or '.', starting with a letter or digit (no spaces or path "
            "separators), and not a name Windows keeps for a device (CON, PRN, AUX, NUL, "
            "COM1-9, LPT1-9)"
        )
    return name


WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")  # of weights files


def refuse_file_like_name(name: str, parameter: str = "name") -> None:
    """``ValueError`` for a new model name ending like a weights file (``cells.pth``): the
    name would be taken before a file of that name, so ``--model cells.pth`` loaded the
    registered model while the file beside it held newer weights, unsaid."""
    if name.lower().endswith(WEIGHT_SUFFIXES):
        raise ValueError(
            f"{parameter}={name!r} ends like a weights file, and a file named so would be "
            f"passed over for the model: name it without the suffix, e.g. "
            f"{name.rsplit('.', 1)[0]!r}"
        )


WEIGHTS_ID_PREFIX = "weights-sha256-"  # model ids from the weights' digest (models.load_model)


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
    weights_id: str | None = None  # user models: the weights' digest id, taken at registration

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
NANO_SHA256 = "sha256:7e22a4e09afdf2e458f933fb9fd730c81f29ed20b48d4150da60cef3c6928c4e"

# Nano's earlier packaged weights (file in weights/, sha256), kept so that a checkpoint holding
# only the weights its run trained (checkpoint_trainable_only) on them is still completed
# once the package ships others; `benchmarks/train_nano.py --install` adds a line.
EARLIER_NANO: tuple[tuple[str, str], ...] = (
    ("nano-0f2c709a.pth", "sha256:0f2c709a0447ac7eb5bd7dbfe64dbc16ff39e9116839371318a7d8de575fc100"),  # noqa: E501
)  # fmt: skip

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


# Both read BUILTIN_MODELS when called, not when imported: tests swap it for their own models.
def builtin_model(name: str) -> ModelSpec | None:
    """The built-in model called ``name``, or None."""
    return next((spec for spec in BUILTIN_MODELS if spec.name == name), None)


def earlier_packaged(model: str) -> list[ModelSpec]:
    """The weights earlier versions of the package shipped as nano (:data:`EARLIER_NANO`),
    where ``model`` (a run's base, as its config names it) is nano: its name, or the path of
    its packaged file; else []."""
    current = builtin_model("nano")
    if current is None or not current.packaged:
        return []
    if model != "nano":
        try:
            if Path(model).resolve() != current.local_path().resolve():
                return []
        except (OSError, ValueError):  # not a path this system can resolve
            return []
    return [
        replace(current, filename=name, file_hash=file_hash) for name, file_hash in EARLIER_NANO
    ]


def builtin_names() -> set[str]:
    """The names of the built-in models."""
    return {spec.name for spec in BUILTIN_MODELS}
