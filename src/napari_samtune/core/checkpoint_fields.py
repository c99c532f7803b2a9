"""What a training checkpoint must hold to be exported, loaded or resumed.

A damaged checkpoint (a field lost, or of the wrong kind) or one written by another
napari-samtune version (config fields unknown here) is refused up front, naming the file,
the field and what to use instead, where a bare ``KeyError`` or torch's state-dict dump
came from deep in the restore. :func:`check_model_fields` runs where checkpoints are read
(:func:`~napari_samtune.core.train_checkpoints.read_checkpoint`, and loading one as a
model); :func:`check_resume_fields` where a resume is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import fields
from pathlib import Path

import torch

from napari_samtune.core.architectures import SamArchitecture
from napari_samtune.core.checkpoints import UnreadableFile, check_records, is_project_checkpoint
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.shell_words import shell_path
from napari_samtune.core.train_events import Progress

# Fields that change the model's structure or weights' meaning: a resume must keep them,
# so a resume, or a checkpoint of only the trained weights, needs them in its config (a
# default put in their place completed a frozen-encoder checkpoint on other parts of its
# base model); whole weights export without them. How its checkpoints are written may
# change (--whole-checkpoints for a run that must outlive its base model was refused as
# "a different model setup").
RESUME_MUST_MATCH = ("model", "lora_rank", "lora_alpha", "freeze")

# Where a resumed run stands; the other Progress fields have defaults that hold for them.
PROGRESS_MUST_HAVE = ("epoch", "step_in_epoch", "global_step")


class DamagedCheckpoint(ValueError):
    """A training checkpoint lacking a field, or holding a broken one; the message names
    the file and says what to use instead."""


_EXPORTING_TO: ContextVar[Path | None] = ContextVar("exporting_to", default=None)


@contextmanager
def exporting_to(output: Path) -> Iterator[None]:
    """While a checkpoint is read to be exported to ``output``: the advice for a damaged
    one exports the other beside it there (it wrote to ./model.pth, with advice on
    training further that the export did not ask for)."""
    token = _EXPORTING_TO.set(output)
    try:
        yield
    finally:
        _EXPORTING_TO.reset(token)


def whole_one_beside(path: Path) -> str:
    """For a run's damaged last.pt or best.pt, what the other one beside it still offers:
    else a run's folder, which holds the run, refuses a new run and points back here."""
    others = {"last.pt": "best.pt", "best.pt": "last.pt"}
    if path.name not in others:
        return ""
    beside = path.with_name(others[path.name])
    if not is_project_checkpoint(beside):
        return ""
    try:  # both damaged, each was said to load "beside" the other
        check_records(beside)
    except UnreadableFile:
        return ""
    output = _EXPORTING_TO.get()
    if output is not None:
        which = "latest epoch, not of its best" if path.name == "best.pt" else "best epoch"
        return (
            f". {beside} beside it loads: samtune export {shell_path(beside)} -o "
            f"{shell_path(output)} exports its weights instead (those of the run's {which})"
        )
    offers = (
        f". {beside} beside it loads: samtune export {shell_path(beside)} -o model.pth makes a "
        "model "
        "of its weights, which a new run in another folder can finetune further"
    )
    if path.name == "last.pt":
        return offers + "; the run itself continues only from a whole last.pt (from a backup)"
    return offers + " (the weights of the run's latest epoch, not of its best)"


def instead_of(path: str | Path) -> str:
    """What to use instead of the damaged checkpoint ``path``: the whole one beside it, else
    the run's exported model."""
    return whole_one_beside(Path(path)) or (
        ". Use the run's model.pth where it has one (exported when the run ended), or "
        "start a new run"
    )


def damaged(path: str | Path, what: str) -> DamagedCheckpoint:
    """The error for a checkpoint at ``path`` whose model cannot be rebuilt (``what``:
    which field, and how it is broken), with what to use instead."""
    return DamagedCheckpoint(
        f"{str(path)!r} is a damaged training checkpoint: {what}{instead_of(path)}"
    )


def check_model_fields(checkpoint: dict, path: str | Path) -> TrainConfig:
    """``DamagedCheckpoint`` unless the training checkpoint ``checkpoint`` (read from
    ``path``) holds what its model is rebuilt from: its architecture, weights and config;
    ``ValueError`` for a config of another napari-samtune version. Its config."""
    kinds = {
        "architecture": dict,
        "model_state": dict,
        "model_state_complete": bool,
        "lora_state": dict,
        "config": dict,
    }
    for field, kind in kinds.items():
        if field not in checkpoint:
            raise damaged(path, f"it has no {field!r} entry")
        if not isinstance(checkpoint[field], kind):
            found = type(checkpoint[field]).__name__
            raise damaged(path, f"its {field!r} entry is a {found}, not a {kind.__name__}")
    try:
        SamArchitecture.from_dict(checkpoint["architecture"])
    except (TypeError, ValueError) as err:
        raise damaged(path, f"its 'architecture' entry is broken ({err})") from None
    for field in ("model_state", "lora_state"):
        state = checkpoint[field]
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise damaged(path, f"its {field!r} entry holds other things than named tensors")
    needed = () if checkpoint["model_state_complete"] else RESUME_MUST_MATCH
    return check_config(checkpoint, path, needed)


def check_config(checkpoint: dict, path: str | Path, needed: tuple[str, ...]) -> TrainConfig:
    """The checkpoint's training config; a ``ValueError`` naming ``path`` for fields this
    version does not know (a newer version's), a field of ``needed`` missing, or a value
    it refuses."""
    saved = checkpoint["config"]
    unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)}, key=str)
    if unknown:
        import napari_samtune

        ours = napari_samtune.__version__
        versions = checkpoint.get("versions")
        theirs = versions.get("napari_samtune") if isinstance(versions, dict) else None
        by = f"napari-samtune {theirs}" if theirs not in (None, ours) else "another version"
        raise ValueError(
            f"{str(path)!r} was written by {by} (config fields {unknown!r} unknown to "
            f"napari-samtune {ours}): update napari-samtune, or use the run's model.pth, "
            "which any version loads"
        )
    lost = [field for field in needed if field not in saved]
    if lost:
        raise damaged(path, f"its 'config' entry has no {lost!r}, which its model needs")
    try:
        return TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as err:
        raise damaged(path, f"its 'config' entry is broken ({err})") from None


def check_resume_fields(checkpoint: dict, path: str | Path) -> None:
    """``ValueError`` naming ``path`` unless a checkpoint with optimizer state holds the rest
    a run continues from: its model setup (config), the scheduler's state, where the run
    stands, the random state. Its weights may still be whole, so the error says how to
    make a model of them."""
    lost = [field for field in RESUME_MUST_MATCH if field not in checkpoint["config"]]
    problem = f"its 'config' entry has no {lost!r}" if lost else _resume_problem(checkpoint)
    if problem:
        raise not_resumable(path, problem)


def not_resumable(path: str | Path, problem: str) -> DamagedCheckpoint:
    """The error for a checkpoint at ``path`` whose run cannot go on (``problem``: what is
    wrong with it), saying how to make a model of its weights instead."""
    return DamagedCheckpoint(
        f"{str(path)!r} is a damaged training checkpoint: {problem}, so its run cannot be "
        f"continued from it. samtune export {shell_path(path)} -o model.pth makes a model of its "
        "weights, "
        "which a new run in another folder can finetune further"
    )


def epochs_done(checkpoint: dict, path: str | Path) -> int:
    """The epochs a run's ``checkpoint`` (read from ``path``) has done; ``DamagedCheckpoint``
    where that is no count ("invalid literal for int() with base 10: 'x'" named no file)."""
    problem = _epoch_problem(checkpoint)
    if problem:
        raise not_resumable(path, problem)
    return checkpoint.get("epoch", 0)


def _epoch_problem(checkpoint: dict) -> str:
    epoch = checkpoint.get("epoch", 0)  # (the epochs done: where the run goes on)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"its 'epoch' entry is {epoch!r:.40}, not a count of epochs"
    return ""


def _resume_problem(checkpoint: dict) -> str:
    """What a resume lacks in ``checkpoint``, or ''."""
    for field in ("optimizer_state", "scheduler_state", "progress", "rng_state"):
        if not isinstance(checkpoint.get(field), dict):
            return f"its {field!r} entry is missing or not a dict"
    epoch_problem = _epoch_problem(checkpoint)
    if epoch_problem:
        return epoch_problem
    progress = checkpoint["progress"]
    lost = [field for field in PROGRESS_MUST_HAVE if field not in progress]
    if lost:  # a default put in its place resumed the run from its first epoch, unsaid
        return f"its 'progress' entry has no {lost!r}"
    unknown = sorted(set(progress) - {f.name for f in fields(Progress)}, key=str)
    if unknown:
        return f"its 'progress' entry has fields unknown to this version {unknown!r}"
    if not all(isinstance(progress[field], int) for field in PROGRESS_MUST_HAVE):
        return f"its 'progress' counters are not whole numbers ({progress!r})"
    torch_rng = checkpoint["rng_state"].get("torch")
    if not isinstance(torch_rng, torch.Tensor) or torch_rng.dtype != torch.uint8:
        return "its 'rng_state' entry has no torch random state (a uint8 tensor)"
    return ""
