"""The files of a run besides checkpoints, and its end: export the model and register it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from napari_samtune.core.architectures import ARCHITECTURES
from napari_samtune.core.checkpoints import atomic_write, first_free
from napari_samtune.core.data import PreparedImage

EXPORT_FILENAME = "model.pth"


@dataclass(frozen=True)
class RunFiles:
    """Where a training run keeps its files, in its folder (``out_dir``)."""

    folder: Path

    @classmethod
    def named_by(cls, folder: str | Path) -> RunFiles:
        """The run a folder a user typed names: the run's own folder, or its checkpoints
        folder (where last.pt and best.pt are) given itself."""
        folder = Path(folder)
        if not cls(folder).checkpoints.is_dir() and cls(folder.parent).checkpoints == folder:
            return cls(folder.parent)
        return cls(folder)

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def last(self) -> Path:  # the checkpoint a run resumes from
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def config(self) -> Path:  # the effective TrainConfig, JSON
        return self.folder / "config.json"

    @property
    def metrics(self) -> Path:  # one JSON line per completed epoch
        return self.folder / "metrics.jsonl"

    @property
    def summary(self) -> Path:  # TrainingFinished, JSON
        return self.folder / "summary.json"

    @property
    def model(self) -> Path:  # the exported plain SAM state dict
        return self.folder / EXPORT_FILENAME


REGISTRATION_TRIES = 5  # names tried when others keep taking the free one first


def _name_taken(name: str) -> bool:
    from napari_samtune.core.registry import BUILTIN_MODELS, user_models_dir
    from napari_samtune.core.user_models import case_twin

    builtin = {spec.name for spec in BUILTIN_MODELS} | set(ARCHITECTURES)
    registered = (user_models_dir() / f"{name}.json").exists()
    return name in builtin or registered or case_twin(name) is not None


def check_registration(name: str | None, resumed_run: Path | None = None) -> str | None:
    """Refuse, before training starts, what registering its model at the end would refuse:
    the user-models folder (it cannot be written) or the name (:func:`check_model_name`)."""
    from napari_samtune.core.checkpoints import folder_problem
    from napari_samtune.core.registry import user_models_dir

    folder = user_models_dir()
    problem = folder_problem(folder)
    if problem:
        raise ValueError(
            f"the user models folder {str(folder)!r} {problem}, so the trained model could not "
            "be registered there; set SAMTUNE_MODELS_DIR to a folder you can write to"
        )
    return check_model_name(name, resumed_run)


def check_model_name(name: str | None, resumed_run: Path | None = None) -> str | None:
    """Refuse, before training starts, a model name that registration would refuse later;
    a run being resumed (its folder ``resumed_run``) may name the model it registered."""
    from napari_samtune.core.registry import (
        refuse_file_like_name,
        user_models_dir,
        validate_model_name,
    )

    if name is None:
        return None
    validate_model_name(name, "model_name")
    taken = _name_taken(name)  # (it lists the models folder)
    if not taken:
        refuse_file_like_name(name, "model_name")
    if taken and (resumed_run is None or name != earlier_registration(resumed_run)):
        from napari_samtune.core.user_models import case_twin, case_twin_problem

        twin = case_twin(name)  # by the names listed: on macOS, Run1B.json "exists" as run1b's
        listed = {path.stem for path in user_models_dir().glob("*.json")}
        if twin is not None and name not in listed:
            raise ValueError(f"model_name={name!r}: {case_twin_problem(name, twin)}")
        raise ValueError(
            f"model_name={name!r} is already a built-in or registered model; pick another name"
        )
    return name


def unique_model_name(base: str) -> str:
    """A free user-model name derived from ``base`` (e.g. the run folder's name)."""
    return first_free(model_stem(base), _name_taken)


def model_stem(base: str) -> str:
    """The model name ``base`` (e.g. the run folder's name) gives, before a free variant of
    it is taken: its letters outside a name's (``run_細胞``: ``run___``) as ``_``, without a
    weights file's suffix (``cells.pth``: ``cells``) and not a Windows device's name
    (``con``: ``con_``). Registration refused those only after the run had trained."""
    from napari_samtune.core.file_names import not_a_device
    from napari_samtune.core.registry import WEIGHT_SUFFIXES

    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", base).lstrip("._-")
    while stem.lower().endswith(WEIGHT_SUFFIXES):
        stem = stem.rsplit(".", 1)[0].rstrip("._-")
    return not_a_device(stem[:90] or "finetuned")


# the automatic name of a finetuned model, which a further round replaces (-2: made unique)
_FINETUNED_SUFFIX = re.compile(r"-finetuned-\d{8}-\d{4}(-\d+)?$")


def automatic_model_name(base: str, when: datetime) -> str:
    """``<base>-finetuned-<date>-<time>``; a model with such a name finetuned again (the
    loop's next round) gets a new time instead of a second suffix."""
    return f"{_FINETUNED_SUFFIX.sub('', base)}-finetuned-{when:%Y%m%d-%H%M}"


def _anew(name: str, earlier: str | None) -> dict:
    """How a run registers its model under ``name``: a continued run's registration
    (``earlier``) replaces its own model, which keeps the names it was renamed from."""
    again = name == earlier
    return {"overwrite": again, "keep_former_names": again}


def export_and_register(
    checkpoint: Path,
    out_dir: Path,
    model_name: str | None,
    metadata: dict,
    base=None,
    resumed: bool = True,
) -> tuple[Path, str]:
    """Export ``checkpoint`` to ``out_dir / model.pth`` and register it as a user model.

    Returns ``(exported file, registered name)``; ``load_model(name)`` then works.
    ``model_name`` was checked before training; taken since by another model (another
    window's run, a script), the model is registered under a free variant of it
    (``mine-2``) rather than fail the finished run, and the name returned says so.
    ``base``: the run's own model, which completes a checkpoint of only the trained weights
    (see :func:`~napari_samtune.core.checkpoint_models.restore_model`). A run not
    ``resumed`` registered nothing before: a model registered from its folder's model.pth
    is another run's (moved away), also one registered before runs had ids.
    """
    from napari_samtune.core.checkpoint_models import export_model
    from napari_samtune.core.user_models import ModelNameTaken, register_user_model

    exported, arch = export_model(checkpoint, RunFiles(out_dir).model, base)
    earlier = earlier_registration(out_dir, metadata.get("run_id")) if resumed else None
    if model_name is not None and model_name != earlier and _name_taken(model_name):
        model_name = unique_model_name(model_name)
    name = model_name or earlier or unique_model_name(out_dir.resolve().name)  # "." too
    for _ in range(REGISTRATION_TRIES - 1):
        try:
            register_user_model(exported, name, arch, metadata, **_anew(name, earlier))
            return exported, name
        except ModelNameTaken:  # taken meanwhile by a registration finishing first
            name = unique_model_name(name)
    register_user_model(exported, name, arch, metadata, **_anew(name, earlier))
    return exported, name


def name_asked_before(checkpoint: dict, out_dir: Path) -> str | None:
    """The model name a run was started with (its ``checkpoint``'s), where it registered no
    model yet: crashed or killed before its first export, it was registered under its
    folder's name when resumed. None where it registered one (a resume updates that), or
    was given no name."""
    from napari_samtune.core.registry import validate_model_name

    name = checkpoint.get("model_name")
    registered = earlier_registration(out_dir, checkpoint.get("run_id"))
    if not isinstance(name, str) or registered is not None:
        return None
    try:
        return validate_model_name(name)
    except ValueError:
        return None


def earlier_registration(out_dir: Path, run_id: str | None = None) -> str | None:
    """The user model that an earlier session of this run (before a resume) registered from
    ``out_dir / model.pth``, if it is still registered from there: a resumed run updates its
    model instead of adding a second one. With ``run_id`` (the run's, see
    :mod:`~napari_samtune.core.train_checkpoints`), not a model another run registered (a
    new run in the folder of a run moved away replaced the model that run registered);
    one whose description names no run (registered by an earlier version) may be this
    run's, as before."""
    from napari_samtune.core.registry import user_models_dir, validate_model_name

    try:
        summary = json.loads(RunFiles(out_dir).summary.read_text(encoding="utf-8"))
        name = validate_model_name(summary["registered_name"])
        sidecar = json.loads((user_models_dir() / f"{name}.json").read_text(encoding="utf-8"))
        source = Path(sidecar["registered_from"])
        theirs = _run_of(sidecar)
    except (OSError, ValueError, KeyError, TypeError):
        source = theirs = None
    model = RunFiles(out_dir).model.resolve()
    if source == model and _same_run(theirs, run_id):
        return name
    if run_id is not None and theirs == run_id and source is not None and not source.exists():
        return name  # this run's, its folder moved since (a copy would find its model.pth)
    # renamed (models --rename), maybe with its old name given to another model since
    return _registered_from(model, user_models_dir(), run_id)


def _registered_from(
    model: Path, folder: Path, run_id: str | None, since: float | None = None
) -> str | None:
    """The user model registered from ``model`` (a run's model.pth) by the run ``run_id``
    (see :func:`_same_run`), looked up in the descriptions in ``folder``: a run killed after
    registering its model, before its summary.json named it, registered a second model
    when resumed. With ``since`` (a time), only descriptions written since then count."""
    from napari_samtune.core.registry import validate_model_name

    names = []
    for sidecar in sorted(folder.glob("*.json")):
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            if Path(data["registered_from"]) != model or not _same_run(_run_of(data), run_id):
                continue
            if since is None or sidecar.stat().st_mtime >= since:
                names.append(validate_model_name(data["name"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return names[0] if len(names) == 1 else None


def registered_since_export(out_dir: Path) -> str | None:
    """The user model registered from ``out_dir``'s model.pth since that file was written
    (of several registered from that path over time, the one described after it): a run
    whose summary.json could not be written (a full disk) was called "not registered",
    and the command advised registered a copy."""
    from napari_samtune.core.registry import user_models_dir

    model = RunFiles(out_dir).model.resolve()
    try:
        exported = model.stat().st_mtime
    except OSError:
        return None
    return _registered_from(model, user_models_dir(), None, since=exported)


def _same_run(theirs: str | None, run_id: str | None) -> bool:
    """Whether a model registered by run ``theirs`` may be run ``run_id``'s: the same id,
    or either unknown (any run asked for, or a model registered before runs had ids)."""
    return None in (theirs, run_id) or theirs == run_id


def _run_of(sidecar: dict) -> str | None:
    """The id of the run that registered a user model (its description's), if it says."""
    run_id = (sidecar.get("metadata") or {}).get("run_id")
    return run_id if isinstance(run_id, str) else None


def jsonable(value):
    """JSON without NaN/Infinity (not JSON): they become null; paths become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def write_json(path: Path, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically (the folder is created)."""
    text = json.dumps(jsonable(data), indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def metrics_record(event) -> dict:
    """An ``EpochDone`` event as its metrics.jsonl record (the checkpoint path left out)."""
    return jsonable({k: v for k, v in asdict(event).items() if k != "checkpoint_path"})


def record_epoch(path: Path, record: dict | None) -> None:
    """Write ``record`` (a :func:`metrics_record`) as its epoch's line of metrics.jsonl,
    rewriting the file atomically, so that a kill leaves it whole. An epoch is trained
    again after a kill between its line and its last.pt: the lines of that epoch and later
    ones are replaced. A last line without its end (a kill while an earlier version
    appended) that is not JSON is dropped, as later lines would join it, and so are empty
    lines (an editor's), where readers of the file stop; any other line stays as it is.
    ``None``: only that tidying, for a checkpoint without a record."""
    lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
    lines = [line for line in lines if line.strip()]
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1:] = [lines[-1] + b"\n"] if _json_or_none(lines[-1]) is not None else []
    if record is not None:
        lines = [line for line in lines if not _epoch_from(line, record["epoch"])]
        lines.append(json.dumps(record).encode() + b"\n")
    text = b"".join(lines)
    if path.exists() and text == path.read_bytes():
        return
    atomic_write(path, lambda tmp: tmp.write_bytes(text))


def _epoch_from(line: bytes, epoch: int) -> bool:
    """``line`` is the record of ``epoch`` or a later epoch."""
    record = _json_or_none(line)
    found = record.get("epoch") if isinstance(record, dict) else None
    return isinstance(found, int) and found >= epoch


def _json_or_none(line: bytes):
    try:
        return json.loads(line)
    except ValueError:
        return None


def validation_fingerprint(image: PreparedImage) -> str:
    """A short hash of a prepared image's pixels and labels (see ``image_fingerprint``)."""
    from napari_samtune.core.label_files import image_fingerprint

    return image_fingerprint(image.rgb) + image_fingerprint(image.labels)


def data_summary(
    train_images: Sequence[PreparedImage],
    val_images: Sequence[PreparedImage],
    samples_per_epoch: int,
    world_size: int,
    left_out: Sequence[str] = (),
    duplicates: Sequence[tuple[str, str]] = (),
) -> dict:
    """What a run trained on, for its checkpoints (names and counts only); ``left_out``
    names the pairs without objects that were not used, ``duplicates`` the (left out, kept)
    names of the pairs that repeated another."""
    return {
        "train_images": [im.name for im in train_images],
        "val_images": [im.name for im in val_images],
        "left_out": list(left_out),
        "duplicates": [list(names) for names in duplicates],
        "n_train_objects": int(sum(im.object_areas.size for im in train_images)),
        "n_val_objects": int(sum(im.object_areas.size for im in val_images)),
        "samples_per_epoch": samples_per_epoch,
        "world_size": world_size,
    }
