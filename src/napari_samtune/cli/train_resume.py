"""Where ``samtune train --resume`` continues: the checkpoint it names (a run's folder,
its last.pt, a copied checkpoint), the run's folder when ``--out`` is not given, and the
device the run was trained on."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from napari_samtune.cli.console import torchrun_world_size
from napari_samtune.core.shell_words import shell_path


def resume_checkpoint(resume: str) -> Path:
    """The checkpoint ``--resume`` names: a run folder's ``checkpoints/last.pt`` (what the
    napari panel's Continue… takes), the ``last.pt`` in a run's checkpoints folder given
    itself, or the file given."""
    from napari_samtune.core.checkpoints import is_project_checkpoint
    from napari_samtune.core.train_checkpoints import resolve_checkpoint
    from napari_samtune.core.train_export import RunFiles

    path = Path(resume)
    if not path.is_dir():
        return path
    last = RunFiles.named_by(path).last
    if not last.is_file():
        if is_project_checkpoint(RunFiles.named_by(path).best):
            resolve_checkpoint(path)  # killed in its first epoch: says what its best.pt offers
        raise ValueError(
            f"--resume {resume} is a folder without a training checkpoint: {last} does not "
            "exist; give the --out folder of a run that trained at least one step, or its "
            "checkpoints/last.pt"
        )
    return last


def out_folder(args: argparse.Namespace) -> Path:
    """``--out``; without it, for ``--resume``, the folder of the run resumed: a resume
    continues that run where it is, as the napari panel's Continue… does."""
    if args.out is not None:
        return args.out
    if not args.resume:
        raise ValueError("--out is required: the folder for the run's checkpoints and model")
    from napari_samtune.core.checkpoints import folder_problem

    checkpoint = resume_checkpoint(args.resume)
    if checkpoint.parent.name != "checkpoints":  # a copied checkpoint: its run is not known
        _check_copied_checkpoint(args.resume, checkpoint)
        raise ValueError(
            f"--resume {args.resume} is not in a run's checkpoints folder, so the run's folder "
            "is not known; give --out DIR for the continued run (created if missing)"
        )
    run_folder = checkpoint.parent.parent
    problem = folder_problem(run_folder)
    if problem:
        raise ValueError(
            f"the run's folder {str(run_folder)!r} {problem}; continue it into another "
            "folder with --out DIR"
        )
    return run_folder


def _check_copied_checkpoint(resume: str, checkpoint: Path) -> None:
    """Before asking a checkpoint outside a run's checkpoints folder for ``--out``: say so
    when it is the file of a run (its exported model.pth) or no training checkpoint at all,
    where ``--out`` would not help. Reading it is cheap here: the command stops either way."""
    from napari_samtune.core.train_checkpoints import read_checkpoint
    from napari_samtune.core.train_export import RunFiles

    run = RunFiles.named_by(checkpoint.parent)
    if checkpoint == run.model and run.last.is_file():
        raise ValueError(
            f"--resume {resume} is the run's exported model, not a training checkpoint; to "
            f"continue the run give its folder: --resume {shell_path(checkpoint.parent)} (it "
            f"resumes from {run.last})"
        )
    read_checkpoint(checkpoint)  # one that does not exist, or is no checkpoint, is said so


def resumed_device(device: str) -> str:
    """The saved device, without the GPU index a torchrun run saved before its ranks'
    devices were recorded as "cuda" (torchrun gives each rank its own GPU, and refuses an
    index that is not it)."""
    if torchrun_world_size() > 1:
        return re.sub(r"^cuda:\d+$", "cuda", device)
    return device


def check_saved_device(device: str, checkpoint: str) -> None:
    """A run resumed on another machine may lack the device it was trained on."""
    from napari_samtune.core.devices import resolve_device

    try:
        resolve_device(device)
    except ValueError:
        raise ValueError(
            f"{checkpoint} was trained on {device}, which this machine does not offer; pass "
            "--device auto (or cpu) to continue it here"
        ) from None
