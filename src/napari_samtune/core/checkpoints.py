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
import tempfile
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
