"""Load SAM weights from a registry name or any supported file, safely; export plain state dicts.

Files are always read with ``torch.load(..., map_location="cpu", weights_only=True)``,
so a checkpoint can never run code. Understood layouts:

* a plain SAM state dict (official SAM, MobileSAM, micro-sam exports), keys as in
  ``Sam.state_dict()``;
* napari-samtune checkpoints ``{"format": CHECKPOINT_FORMAT, "architecture": ...,
  "model_state": ...}`` (see :mod:`napari_samtune.core.checkpoints`);
* wrappers ``{"model_state": ...}`` (micro-sam / torch_em, a ``"decoder_state"`` for
  micro-sam's instance decoder is ignored), ``{"model": ...}`` and ``{"state_dict": ...}``;
* keys prefixed by ``"module."`` (DistributedDataParallel), ``"sam."`` (torch_em's
  trainable SAM) or ``"_orig_mod."`` (``torch.compile``).

Weights are loaded with ``strict=True``; anything that does not fit is a ``ValueError``
naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from napari_samtune.core import registry
from napari_samtune.core.architectures import (
    SamArchitecture,
    as_architecture,
    infer_architecture,
    load_weights,
    sam_to_load,
)
from napari_samtune.core.checkpoints import (
    CHECKPOINT_FORMAT,
    atomic_torch_save,
    check_format_version,
    check_records,
    safe_torch_load,
)
from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.devices import resolve_device
from napari_samtune.core.download import ProgressCallback, ensure_model_file
from napari_samtune.core.model_lookup import get_model_spec
from napari_samtune.core.registry import (
    WEIGHTS_ID_PREFIX,
    ModelSpec,
    file_model_id,
    user_models_dir,
    validate_model_name,
)
from napari_samtune.core.user_models import list_user_models

WRAPPER_PREFIXES = ("module.", "sam.", "_orig_mod.")  # DDP, torch_em's TrainableSAM, compile
EXPECTED = "SAM weights: a state dict of tensors (.pth/.pt) or a napari-samtune checkpoint"


@dataclass(frozen=True)
class LoadedModel:
    """A SAM ready to use, with where it came from."""

    sam: Sam  # in eval mode, on the requested device
    architecture: SamArchitecture  # the shape it was built with
    name: str  # registry name, or the file's stem
    model_id: str  # stable content id of the weights: keys embedding caches
    path: Path | None  # file the weights were read from


def _unwrap_checkpoint(obj: object, path: Path) -> tuple[object, SamArchitecture | None]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds {kind_of(obj)}. Expected {EXPECTED}")
    if obj.get("format") == CHECKPOINT_FORMAT:
        check_format_version(obj, path)
        if "architecture" not in obj:
            raise ValueError(f"{path} has no 'architecture' entry. Expected {EXPECTED}")
        try:
            architecture = SamArchitecture.from_dict(obj["architecture"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path} has a broken 'architecture' entry: {err}") from None
        # checkpoint_trainable_only, or a training checkpoint that lost the flag saying so
        if obj.get("model_state_complete") is False or _lost_completeness(obj):
            return _completed_on_base(obj, path), architecture
        return obj.get("model_state"), architecture
    for key in ("model_state", "model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key], None
    return obj, None


def _lost_completeness(checkpoint: dict) -> bool:
    """A training checkpoint without ``model_state_complete``: its weights were loaded as a
    whole model, and a trained-only one's were refused as "does not fit architecture"."""
    training = "config" in checkpoint and "lora_state" in checkpoint
    return training and not isinstance(checkpoint.get("model_state_complete"), bool)


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def _completed_on_base(checkpoint: dict, path: Path) -> dict[str, torch.Tensor]:
    """The whole SAM state dict of a training checkpoint that holds only the weights its
    run trained (``checkpoint_trainable_only``): the run's base model with them loaded."""
    from napari_samtune.core.checkpoint_fields import DamagedCheckpoint, check_model_fields
    from napari_samtune.core.checkpoint_models import restore_model
    from napari_samtune.core.lora import merged_state_dict

    if "config" not in checkpoint or "lora_state" not in checkpoint:
        raise ValueError(f"{path} holds only some of a model's weights. Expected {EXPECTED}")
    check_model_fields(checkpoint, path)  # as reading it to export or resume does
    try:
        sam, _ = restore_model(checkpoint, path)
    except DamagedCheckpoint:  # names the file, and what to use instead
        raise
    except (OSError, ValueError) as err:  # BaseModelUnavailable says what is needed
        raise ValueError(f"{path}: {err}") from None
    return merged_state_dict(sam)


def read_sam_state_dict(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], SamArchitecture | None]:
    """Read any supported weights file: (SAM state dict on the CPU, stored architecture or None)."""
    path = Path(path)
    state, architecture = _unwrap_checkpoint(safe_torch_load(path, EXPECTED), path)
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no model weights. Expected {EXPECTED}")
    if not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path}: its keys are not parameter names. Expected {EXPECTED}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path}: entries {not_tensors[:3]!r} are not tensors. Expected {EXPECTED}"
        )
    _refuse_non_finite(state, path)
    return _strip_wrapper_prefixes(state), architecture


def _refuse_non_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """NaN or infinite weights (a diverged run's, a damaged file's) segment nothing and
    train nowhere, without an error of their own. A float32 sum per tensor finds them:
    0.1-0.2 s for vit_b's 94 M weights on 2 cores, where ``isfinite`` took 2.4-2.8 s."""
    floats = [(name, t) for name, t in state.items() if t.is_floating_point() and t.numel()]
    if not floats:
        return
    sums = torch.stack([t.float().sum() for _, t in floats]).tolist()
    # a sum of finite but huge weights (3e38) overflows too: those tensors are checked whole
    bad = [
        name
        for (name, t), total in zip(floats, sums, strict=True)
        if not math.isfinite(total) and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise ValueError(
            f"{path}: its weights are not all finite numbers ({len(bad)} tensor(s) hold NaN "
            f"or infinite values, e.g. {bad[0]!r}), as a training run that diverged or a "
            "damaged file leaves them, and would segment nothing; load another file (a run's "
            "best.pt keeps its best epoch) or the model it was trained from"
        )


def fit_problems(sam: Sam, state: dict[str, torch.Tensor], partial: bool = False) -> list[str]:
    """How ``state`` does not fit ``sam``: keys missing (unless ``partial``: some of its
    weights only), unexpected, or of another shape; [] where it fits."""
    expected = sam.state_dict()
    missing = [] if partial else [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", resized)):
        if keys:
            problems.append(f"{len(keys)} {what} (e.g. {keys[0]})")
    return problems


def build_and_load(
    state: dict[str, torch.Tensor],
    architecture: SamArchitecture,
    source: str | Path,
    given: bool = True,
) -> Sam:
    """Build ``architecture`` and load ``state`` strictly; ValueError when they do not fit.
    ``given``: the architecture was asked for (else recorded or inferred: the weights are
    then no SAM of a layout this reads, and there is no architecture to pass instead)."""
    sam = sam_to_load(architecture)
    problems = fit_problems(sam, state)
    if problems and given:
        raise ValueError(
            f"{source} does not fit architecture {architecture.name!r}: {'; '.join(problems)}. "
            "Pass the architecture the weights were trained with (architecture=...), "
            "or leave it out to infer it from the weights"
        )
    if problems:
        raise ValueError(
            f"{source} does not fit architecture {architecture.name!r}, the one its weights "
            f"or its record name: {'; '.join(problems)}. It is no Segment Anything model of "
            "a layout napari-samtune reads (SAM-HQ, for one, adds weights to the decoder), "
            "or it is damaged; use the plain SAM weights (e.g. an exported model.pth)"
        )
    try:
        load_weights(sam, state)
    except RuntimeError as err:
        raise ValueError(
            f"{source} could not be loaded into {architecture.name!r}: {err}"
        ) from None
    return sam.eval()


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 hex over sorted keys, dtypes, shapes and raw tensor bytes: a stable weights id."""
    hasher = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        header = f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode()
        hasher.update(header)
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()


def weights_id(loaded: LoadedModel) -> str:
    """The id of ``loaded``'s weights by their content, whatever their source: a built-in's
    ``model_id`` is its published file hash, so a copy of its file (whose id is the weights'
    digest) had another id for the same weights."""
    if loaded.model_id.startswith(WEIGHTS_ID_PREFIX):
        return loaded.model_id
    return WEIGHTS_ID_PREFIX + state_dict_digest(loaded.sam.state_dict())


def _resolve_source(
    name_or_path: str | os.PathLike, download: bool, progress: ProgressCallback | None
) -> tuple[Path, str, ModelSpec | None]:
    if isinstance(name_or_path, str) and is_registered_name(name_or_path):
        spec = get_model_spec(name_or_path)
        return ensure_model_file(spec, download=download, progress=progress), spec.name, spec
    if name_or_path is None:  # e.g. TrainingFinished.registered_name of a run stopped early
        raise TypeError(
            "name_or_path=None names no model: give a model name (see 'samtune models') or a "
            "weights file; a training run stopped before its first step registered none"
        )
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(f"name_or_path={name_or_path!r} must be a model name or a file path")
    if str(name_or_path) == "":  # Path('') is the current folder
        raise ValueError("name_or_path='' is empty; give a model name or a weights file")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is {folder_not_weights(path)}")
    if not path.is_file():
        raise neither_model_nor_file(name_or_path)
    return path, path.stem, None


SHOWN_USER_MODELS = 12  # of the user's models, named in an error; `samtune models` lists all


def neither_model_nor_file(name_or_path: str | os.PathLike) -> ValueError:
    """The error for a model that is neither a registered name nor an existing file: it
    names the built-in models and (some of) the user's; for a path (a name with a folder
    in it, which no registered name has) only that the file does not exist."""
    if Path(name_or_path).parent != Path(".") or str(name_or_path).startswith("~"):
        return ValueError(f"weights file {str(name_or_path)!r} does not exist")
    names = [spec.name for spec in registry.BUILTIN_MODELS]
    yours = [spec.name for spec in list_user_models()]
    more = len(yours) - SHOWN_USER_MODELS
    listed = f"yours: {yours[:SHOWN_USER_MODELS]!r}" + (
        f" and {more} more ('samtune models' lists them)" if more > 0 else ""
    )
    from napari_samtune.core.user_model_rename import renamed_note

    return ValueError(
        f"{str(name_or_path)!r} is neither a model name (built-in: {names!r}; "
        + (listed if yours else "none of yours is registered")
        + ") nor an existing file"
        + renamed_note(str(name_or_path))
    )


def is_registered_name(name: str) -> bool:
    """Whether ``name`` names a built-in model or has a user model description (which may be
    broken: loading it then says what is wrong), rather than being a file path."""
    if any(spec.name == name for spec in registry.BUILTIN_MODELS):
        return True
    try:
        validate_model_name(name)
    except ValueError:
        return False
    return (user_models_dir() / f"{name}.json").is_file()


def _pick_architecture(
    override: SamArchitecture | str | None,
    stored: SamArchitecture | None,
    spec: ModelSpec | None,
    state: dict[str, torch.Tensor],
    path: Path,
) -> SamArchitecture:
    if override is not None:
        return as_architecture(override)
    if stored is not None:
        return stored
    if spec is not None:
        return spec.resolve_architecture()
    try:
        return infer_architecture(state)
    except (ValueError, KeyError, IndexError) as err:
        raise ValueError(f"{path}: {err}. Expected {EXPECTED}") from None


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    download: bool = True,
    *,
    architecture: SamArchitecture | str | None = None,
    progress: ProgressCallback | None = None,
) -> LoadedModel:
    """Load a SAM by registry name (built-in or user model) or from a weights file.

    Built-in models are downloaded (``download=True``) and hash-checked first;
    ``progress(bytes_done, bytes_total)`` follows the download. The architecture
    comes from ``architecture`` if given, else from the checkpoint or registry,
    else it is inferred from the weights. ``model_id`` is the published file hash
    (``"file-<algorithm>-<hex>"``) for built-in models and the content digest
    ``"weights-sha256-<hex>"`` of the loaded state dict otherwise, so the same
    weights get the same id whatever file layout they came in (a user model's, whose file
    matched its registered hash, as its registration recorded it).
    """
    progress = _load_progress.get() if progress is None else progress
    token = _load_progress.set(progress)
    try:
        return _load(name_or_path, device, download, architecture, progress)
    finally:
        _load_progress.reset(token)


# The progress callback of the load_model call under way: a checkpoint of trained weights
# only loads its base model (restore_model -> load_base_model -> load_model), whose download
# then follows it, not a bar of its own (drawn whatever --no-progress said).
_load_progress: ContextVar[ProgressCallback | None] = ContextVar("load_progress", default=None)


def _load(name_or_path, device, download: bool, architecture, progress) -> LoadedModel:
    """:func:`load_model`, its progress callback decided."""
    torch_device = resolve_device(device)
    path, name, spec = _resolve_source(name_or_path, download, progress)
    state, stored = read_sam_state_dict(path)
    if spec is None:  # a file given by path: no hash of it is known, its records' CRCs are
        check_records(path)
    arch = _pick_architecture(architecture, stored, spec, state, path)
    sam = build_and_load(state, arch, path, given=architecture is not None)
    del state
    if spec is not None and spec.file_hash is not None and not spec.is_user_model:
        model_id = file_model_id(spec.file_hash)
    elif spec is not None and spec.weights_id is not None and spec.file_hash is not None:
        # the file matched its registered hash (ensure_model_file): its digest is the one
        # taken at registration (vit_h: 1.7 s saved per load)
        model_id = spec.weights_id
    else:
        model_id = WEIGHTS_ID_PREFIX + state_dict_digest(sam.state_dict())
    return LoadedModel(
        sam=sam.to(torch_device), architecture=arch, name=name, model_id=model_id, path=path
    )


def export_sam_state_dict(sam: Sam, path: str | Path) -> Path:
    """Write ``sam``'s weights as a plain state dict (keys as ``Sam.state_dict()``), atomically.

    The file holds only CPU tensors, so the official ``segment_anything`` loader
    (``sam.load_state_dict(torch.load(path))``) and any device can read it.
    """
    if not isinstance(sam, Sam):
        raise TypeError(f"sam must be a segment_anything Sam model, got {type(sam).__name__}")
    if not isinstance(path, (str, os.PathLike)) or str(path) in ("", "."):
        raise ValueError(  # Path('') is the current folder: "could not write ."
            f"path={path!r} names no file; give the weights file to write, e.g. 'model.pth'"
        )
    state = OrderedDict((k, v.detach().cpu()) for k, v in sam.state_dict().items())
    return atomic_torch_save(state, path)


def folder_not_weights(folder: Path) -> str:
    """Why a folder given as a model is not one, naming the file in it to give instead: a
    training run's exported model, else its weights file of the shortest name (the package's
    own folder: nano.pth, not the earlier weights kept beside it)."""
    from napari_samtune.core.train_export import EXPORT_FILENAME

    exported = folder / EXPORT_FILENAME
    found = (
        [exported]
        if exported.is_file()
        else sorted(folder.glob("*.pt*"), key=lambda path: (len(path.name), path.name))
    )
    weights = [
        path
        for path in found
        if path.suffix in (".pth", ".pt") and path.is_file() and path.stat().st_size > 0
    ]
    example = f", e.g. {weights[0]}" if weights else " (a .pth or .pt file)"
    return f"a folder; give the weights file inside it{example}"
