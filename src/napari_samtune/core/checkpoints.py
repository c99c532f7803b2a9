"""Atomic writes and the project's self-describing checkpoint format.

A project checkpoint is a plain dict that ``torch.load(..., weights_only=True)``
reads: ``{"format": CHECKPOINT_FORMAT, "format_version": int,
"architecture": SamArchitecture.to_dict(), "model_state": Sam state dict, ...}``
plus, for training checkpoints, optimizer/scheduler state, config, epoch and
metrics. Everything is written to a temporary file in the target folder and
renamed over the target, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "napari-samtune-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``.

    The temporary file lives in the destination folder (same file system), so
    the final ``os.replace`` is atomic; on any error the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a partial file at ``path``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def check_output_folder(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path; ``ValueError`` if it names an existing file or cannot be made or
    written to (see :func:`folder_problem`; a missing folder is fine: it is created when
    written to). ``what`` names it in the message, e.g. "out_dir"."""
    path = Path(path)
    named = f"{what} " if what else ""
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{named}{str(path)!r} is a file; give a folder (created if missing), "
            f"e.g. {path.stem}-out"
        )
    problem = folder_problem(path)
    if problem:
        raise ValueError(f"{named}{str(path)!r} {problem}; give a folder (created if missing)")
    return path


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``folder`` (made when missing), or None: "cannot be
    made: ..." when a file is where one of its folders should be, "cannot be written: ..."
    when the nearest existing folder is not writable."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        return f"cannot be made: {str(existing)!r} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {str(existing)!r} is read-only or not yours to write in"
    return None


def safe_torch_load(path: str | os.PathLike, expected: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with a ``ValueError`` that names
    the file and ``expected`` (what it should hold) when the file is not a safe PyTorch file:
    text, garbage, a truncated download, or a pickle that needs code to load."""
    try:
        with warnings.catch_warnings():  # torch's note on old pickle protocols is noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise ValueError(
                f"{path} contains Python objects ({found.group(1)}) besides tensors, which "
                f"safe loading (weights_only=True) refuses to run. Expected {expected}. "
                "If you trust the file, re-save only its weights with torch.save(state_dict)"
            ) from None
        raise ValueError(
            f"{path} is not a PyTorch weights file (safe unpickling failed). Expected {expected}"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on garbage
        detail = (str(err).splitlines() or [""])[0][:150]
        raise ValueError(
            f"{path} is not a readable PyTorch weights file ({type(err).__name__}: {detail}); "
            f"it may be truncated, corrupt or of another format. Expected {expected}"
        ) from None
