"""A run's folder as Continue… reads it: the config to continue it with, and its epochs so
far for the plot; what is missing or damaged there is named with what to do."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from napari_samtune.core.checkpoints import folder_problem
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.shell_words import shell_path
from napari_samtune.core.train_export import RunFiles
from napari_samtune.core.train_setup import continued_precision


@dataclass(frozen=True)
class PastEpoch:
    """What the plot shows of an epoch of a run on disk (a line of its metrics.jsonl)."""

    epoch: int  # 0-based
    train_loss: float  # NaN when the run wrote none (a diverged loss is saved as null)
    val_iou: float | None  # None without validation data


def continued_config(
    folder: Path, epochs: int, device: str
) -> tuple[TrainConfig, Path, list[PastEpoch]]:
    """The config to continue the run in ``folder`` until ``epochs`` on ``device`` (the
    run's own device may be another machine's), its last.pt and its epochs so far.

    The run's own config.json is read (not the checkpoint, which may be gigabytes); the
    core still checks the checkpoint against it. Raises ``ValueError`` naming the fix.
    """
    files = RunFiles(folder)
    if not files.last.is_file() or not files.config.is_file():
        raise ValueError(_missing_run_files(files))
    problem = folder_problem(folder)  # a colleague's run on a read-only share, say
    if problem:
        raise ValueError(
            f"the run in {str(folder)!r} cannot be continued in its folder, which {problem}: "
            "copy the folder to one you can write in and continue the copy"
        )
    config = _read_config(files.config)
    _check_base_weights(folder, config)
    history = past_epochs(folder)  # one record per completed epoch of this folder
    done = epochs_done(files, history)
    if epochs <= done:
        raise ValueError(
            f"the run in {str(folder)!r} has done {done} epochs; set epochs above that to "
            "continue it"
        )
    precision = continued_precision(config.mixed_precision, device)  # the widget sets none
    continued = replace(config, epochs=epochs, device=device, mixed_precision=precision)
    return continued, files.last, history


def epochs_done(files: RunFiles, history: list[PastEpoch]) -> int:
    """The epochs the run of ``files`` has done: its last epoch's number, and its
    summary.json's count, not only the lines of its metrics.jsonl (a run branched into its
    folder with ``--resume ... --out`` wrote only its new epochs there: one line after 5
    epochs, and "set epochs above 1" then failed as nothing left to train)."""
    done = max([len(history), *(past.epoch + 1 for past in history)])
    try:
        summary = json.loads(files.summary.read_text(encoding="utf-8"))
        return max(done, int(summary["epochs_done"]))
    except (OSError, ValueError, KeyError, TypeError):
        return done


def _missing_run_files(files: RunFiles) -> str:
    """Why the folder of ``files`` cannot be continued, for a folder that lacks config.json
    or checkpoints/last.pt: a run's folder that lost one of them is told what is left of
    it and how to go on from there, not to choose another folder."""
    folder = str(files.folder)
    if not files.config.is_file() and not files.last.is_file():
        return (
            f"{folder!r} holds no training run to continue (no config.json and "
            "checkpoints/last.pt); choose the folder of a run made by Start or samtune train"
        )
    if not files.config.is_file():
        return (
            f"the run in {folder!r} has lost its config.json, the settings Continue… reads; "
            f"continue it from a terminal, which reads them from its checkpoint: samtune "
            f"train --resume {shell_path(folder)} --images ... --labels ... (its training data)"
        )
    what = f"the run in {folder!r} cannot be continued: its last checkpoint ({files.last}), "
    what += "which Continue… resumes from, is missing"
    if files.model.is_file():
        return (
            f"{what}; its finetuned model ({files.model}) is there: choose it as the model "
            "(the run added it to the model list) and press Start to finetune it further "
            "in a new run"
        )
    if files.best.is_file():
        return (
            f"{what}; {files.best} holds the weights of its best epoch: samtune export "
            f"{shell_path(files.best)} -o model.pth makes a model of them, which Start can "
            "finetune further in a new run"
        )
    return f"{what}, and so is its best one; choose the folder of another run"


def _check_base_weights(folder: Path, config: TrainConfig) -> None:
    """``ValueError`` naming the file and the fix when the run in ``folder`` saved only its
    trained weights (``checkpoint_trainable_only``) and the weights file it started from,
    on which a continued run is rebuilt, is gone; a whole checkpoint needs no file."""
    base = Path(config.model)  # a weights file chosen by path: recorded absolute
    if not config.checkpoint_trainable_only or not base.is_absolute() or base.is_file():
        return
    raise ValueError(
        f"the run in {str(folder)!r} saved only its trained weights, which are continued on "
        f"the weights file it started from, {str(base)!r}, and that file does not exist any "
        "more: put it back there (moved or renamed, or a copy of it), or press Start for a "
        "new run"
    )


def _read_config(path: Path) -> TrainConfig:
    """A run's config.json; ``ValueError`` naming the file and the field when it is damaged."""
    data = _read_json(path)
    try:
        return TrainConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{str(path)!r} holds a training config that cannot be used: {err}; correct that "
            "field (or restore the file the run wrote), or continue another run"
        ) from None


def past_epochs(folder: Path) -> list[PastEpoch]:
    """The epochs recorded in the run's metrics.jsonl, oldest first; empty lines (the file
    saved in an editor) are skipped, and a line that is not JSON (a crash while writing it,
    before writes were atomic) ends the list. ``ValueError`` naming the file and the
    fix for a line that training did not write; no file: no epochs."""
    metrics = RunFiles(folder).metrics
    if not metrics.exists():
        return []
    fix = "restore the file the run wrote, or delete it to continue without the plot of "
    fix += "the earlier epochs"
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(metrics)!r} ({err}); {fix}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            break
        try:
            records.append(_past_epoch(record))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"line {number} of {str(metrics)!r} is not an epoch record of training "
                f"({err}); {fix}"
            ) from None
    return records


def _past_epoch(record) -> PastEpoch:
    """One metrics.jsonl record (``EpochDone`` fields, NaN written as null)."""
    if not isinstance(record, dict):
        raise ValueError(f"it holds {json.dumps(record)}, not a record")
    missing = [key for key in ("epoch", "train_loss") if key not in record]
    if missing:
        raise ValueError(f"it has no {' and no '.join(map(repr, missing))}")
    epoch, metrics = record["epoch"], record.get("val_metrics") or {}
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"epoch={epoch!r} is not an epoch number")
    if not isinstance(metrics, dict):
        raise ValueError(f"val_metrics={metrics!r} is not a record of metrics")
    loss, val_iou = _number(record, "train_loss"), _number(metrics, "val_iou")
    return PastEpoch(epoch, math.nan if loss is None else loss, val_iou)


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{key}={value!r} is not a number")
    return None if value is None else float(value)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} is not a training run's JSON record")
    return data
