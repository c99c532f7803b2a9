"""Atomic writes and the project's self-describing checkpoint format.

A project checkpoint is a plain dict that ``torch.load(..., weights_only=True)``
reads: ``{"format": CHECKPOINT_FORMAT, "format_version": int,
"architecture": SamArchitecture.to_dict(), "model_state": Sam state dict, ...}``
plus, for training checkpoints, optimizer/scheduler state, config, epoch and
metrics. Everything is written to a temporary file in the target folder and
renamed over the target, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import stat
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.run_lock import ABANDONED_WRITE_SECONDS

CHECKPOINT_FORMAT = "napari-samtune-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def check_format_version(checkpoint: dict, path: str | os.PathLike) -> None:
    """``ValueError`` for a project checkpoint of a format newer than this version reads
    (its new keys would be ignored, and a resumed run would write it back without them)."""
    version = checkpoint.get("format_version", CHECKPOINT_FORMAT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path} is a napari-samtune checkpoint of format_version {version!r}; this "
            f"version reads up to {CHECKPOINT_FORMAT_VERSION}: update napari-samtune"
        )


def _is_special_file(path: Path) -> bool:
    """Whether ``path`` is a device, pipe or socket: one ``stat``, so a file deleted by
    another process meanwhile (``samtune cache --clear``) is missing, not "a device" (as
    it was between an exists and an isfile check). False where it cannot be looked at (a
    folder above that cannot be entered: the worded error of the write says so)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``.

    The temporary file lives in the destination folder (same file system), so the final
    ``os.replace`` is atomic; on any error the temporary file is removed and ``path`` is
    left as it was (``ValueError`` where it is a device, pipe or socket). An ``OSError`` of
    making the folder or writing the file (a full disk, a read-only folder) is raised as
    one that names ``path``, not the temporary file, and says what to do.
    """
    path = Path(path)
    if _is_special_file(path):
        raise ValueError(  # the rename put a file in place of /dev/null, run as root
            f"{path} is not a file but a device, pipe or socket, which writing there would "
            "replace; give a file name of its own"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except OSError as err:
        if not _is_write_failure(err, tmp, path):  # e.g. a download's network error
            raise
        raise write_error(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


# errno values that mean the destination cannot take the file
_WRITE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "EIO")
    if hasattr(errno, name)
)
_FULL_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(errno, n))
_NEARLY_FULL_BYTES = 16 * 2**20  # less free space than this, after a failed write: full


def _is_write_failure(err: OSError, tmp: Path, path: Path) -> bool:
    named = {str(tmp), str(path)}
    return err.errno in _WRITE_ERRNOS or err.filename in named or err.filename2 in named


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def write_error(path: Path, err: OSError) -> OSError:
    """``err`` as an ``OSError`` (same type and errno) that names ``path`` and the fix."""
    folder = path.parent
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = err.strerror or "not writable"
        # a folder that could not be made: the existing one it was to go in refused it
        folder = next((p for p in (folder, *folder.parents) if os.path.exists(p)), folder)
        fix = f"folder {folder} cannot be written to ({reason}); choose a folder you can write to"
    elif err.errno in (errno.EEXIST, errno.ENOTDIR):
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), folder)
        fix = f"{blocking} is a file, not a folder; choose another folder"
    elif err.errno in _FULL_ERRNOS or _disk_full(folder):
        fix = f"no space left on the device holding {folder}; free space or choose another folder"
    else:
        fix = err.strerror or str(err)
    message = f"could not write {path}: {fix}"
    builtin = type(err).__module__ == "builtins"  # PermissionError, FileExistsError, ...
    worded = type(err)(message) if builtin else OSError(message)
    worded.errno = err.errno
    return worded


_UMASK: list[int] = []  # the process's umask, once read
_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process's umask, read once: reading it sets it (``os.umask``), and two threads
    saving at once (autosave, training, the embedding cache) could leave it 0 for good,
    every later file and folder writable by all."""
    with _UMASK_LOCK:
        if not _UMASK:
            mask = os.umask(0)
            os.umask(mask)
            _UMASK.append(mask)
        return _UMASK[0]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a partial file at ``path``; a failed write (e.g. a
    full disk, which torch reports as a ``RuntimeError``) is an ``OSError`` naming ``path``."""
    return atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def first_line(text: str, limit: int = 150) -> str:
    """The first line of an error's ``text``, at most ``limit`` characters: what a message
    can quote of a library's error (tracebacks and dumps follow on the next lines). A longer
    line ends at its last sentence that fits, else at a word, with "…": never mid-word."""
    line = (text.splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    cut = line[: limit + 1]
    sentence_end = cut.rfind(". ")
    if sentence_end > 0:
        return cut[: sentence_end + 1]
    return cut[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"


def _torch_save(obj: Any, tmp: Path) -> None:
    try:
        torch.save(obj, tmp)
    except RuntimeError as err:
        # torch's writer reports a failed write as e.g. "[enforce fail at inline_container.cc:672]
        # . unexpected pos 576 vs 534" or "PytorchStreamWriter failed writing file"
        text = str(err)
        if not (
            re.search(r"inline_container|PytorchStreamWriter|write", text) or _disk_full(tmp.parent)
        ):
            raise
        raise OSError(errno.EIO, f"torch.save failed ({first_line(text)})", str(tmp)) from err


def is_project_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file in the project's checkpoint format (a training run's
    last.pt or best.pt, a saved model). Cheap even for GBs: only the pickle of torch's zip
    archive is read, which names the format; the tensors are not."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl"]
            if len(pickles) != 1:
                return False
            with archive.open(pickles[0]) as pickled:
                return CHECKPOINT_FORMAT.encode() in pickled.read()
    except (OSError, zipfile.BadZipFile):
        return False


def check_output_folder(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path; ``ValueError`` if it names an existing file or cannot be made or
    written to (see :func:`folder_problem`; a missing folder is fine: it is created when
    written to). ``what`` names it in the message, e.g. "out_dir". ``''`` (a script's unset
    variable) is refused: Path('') is the current folder, which would be written unsaid.
    A leading ``~`` is the home folder, as in input paths."""
    named = f"{what} " if what else ""
    if not isinstance(path, (str, os.PathLike)):  # pathlib's own error named no argument
        raise TypeError(
            f"{what or 'folder'}={path!r} is {kind_of(path)}; give a folder path "
            "(str or pathlib.Path, created if missing)"
        )
    if path == "":
        raise ValueError(
            f"{named}'' is an empty path; give a folder (created if missing), or '.' for the "
            "current folder"
        )
    path = Path(path).expanduser()  # '~/run' (quoted, or from Python) was ./~/run
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{named}{str(path)!r} is a file; give a folder (created if missing), "
            f"e.g. {path.with_name(f'{path.stem}-out')}"  # beside it, where it was meant
        )
    problem = folder_problem(path)
    if problem:
        raise ValueError(f"{named}{str(path)!r} {problem}; give a folder (created if missing)")
    return path


def first_free(stem: str, taken: Callable[[str], bool]) -> str:
    """``stem``, or the first of ``stem-2``, ``stem-3``, ... that is not ``taken``: a new
    run, result or name beside earlier ones, which are never replaced."""
    name, n = stem, 1
    while taken(name):
        n += 1
        name = f"{stem}-{n}"
    return name


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``folder`` (made when missing), or None: "cannot be
    made: ..." when a file is where one of its folders should be, "cannot be written: ..."
    when the nearest existing folder is not writable or a file cannot be made in it."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        return f"cannot be made: {str(existing)!r} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {str(existing)!r} is read-only or not yours to write in"
    # access() says yes where writing still fails: to root on an NFS share with root_squash,
    # on FUSE and sysfs mounts. A nameless file (O_TMPFILE) tells, and leaves nothing behind.
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = f" ({err.strerror})" if err.strerror else ""
        return f"cannot be written: a file could not be made in {str(existing)!r}{reason}"
    return None


class UnreadableFile(ValueError):
    """A file :func:`safe_torch_load` could not load safely (truncated, corrupt, another
    format, or Python objects besides tensors)."""


def _resave_advice(found: str) -> str:
    """How to get plain weights out of a file holding the Python object ``found``: a
    micro-sam / torch_em training checkpoint (its datasets pickled beside the weights) has
    them under "model_state", and micro-sam exports them itself."""
    if found.split(".", 1)[0] in ("torch_em", "micro_sam"):
        return (
            "It is a micro-sam training checkpoint: export its model with micro-sam "
            "(its export_custom_sam_model), or, if you trust the file, re-save "
            "its weights: torch.save(torch.load(path, weights_only=False)['model_state'], "
            "'model.pth')"
        )
    return "If you trust the file, re-save only its weights with torch.save(state_dict)"


def safe_torch_load(path: str | os.PathLike, expected: str, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with a ``ValueError`` that names
    the file and ``expected`` (what it should hold) when the file is not a safe PyTorch file:
    text, garbage, a truncated download, or a pickle that needs code to load. ``mmap``: the
    tensors are mapped, read only where used (torch's zip format only; others are read)."""
    try:
        with warnings.catch_warnings():  # torch's note on old pickle protocols is noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            mmap = mmap and zipfile.is_zipfile(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as err:
        if err.filename is not None:  # opening it failed: not found, not allowed, ...
            raise
        # torch's zip reader says only "[Errno 22] Invalid argument" of some truncated files
        raise _unreadable(path, err, expected) from None
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise UnreadableFile(
                f"{path} contains Python objects ({found.group(1)}) besides tensors, which "
                f"safe loading (weights_only=True) refuses to run. Expected {expected}. "
                f"{_resave_advice(found.group(1))}"
            ) from None
        raise UnreadableFile(
            f"{path} is not a PyTorch weights file (safe unpickling failed). Expected {expected}"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on garbage
        raise _unreadable(path, err, expected) from None


def check_records(path: str | os.PathLike) -> None:
    """``UnreadableFile`` where a record of the PyTorch file ``path`` does not match the
    CRC-32 that ``torch.save`` wrote with it: a disk or copy error that ``torch.load`` does
    not see (a checkpoint with 64 bytes changed loaded, was exported with weights of 1e28,
    and its resume was said to have diverged). Reads the whole file once. The file is of
    the right kind: the message asked for "a training checkpoint" of a damaged best.pt."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError):  # torch read it: its legacy format, no records
        return
    if damaged is not None:
        raise UnreadableFile(
            f"{path} is damaged: its record {damaged!r} does not match the checksum written "
            "with it (a disk or copy error), so its numbers cannot be trusted"
        )


def _unreadable(path: str | os.PathLike, err: Exception, expected: str) -> UnreadableFile:
    return UnreadableFile(
        f"{path} is not a readable PyTorch weights file ({type(err).__name__}: "
        f"{first_line(str(err))}); "
        f"it may be truncated, corrupt or of another format. Expected {expected}"
    )


def remove_abandoned_writes(
    folder: Path, pattern: str, max_age_s: float = ABANDONED_WRITE_SECONDS
) -> list[Path]:
    """Delete ``atomic_write``'s temporary files in ``folder`` (those its glob ``pattern``
    matches) untouched for ``max_age_s``: their process died mid-write, which skips their
    clean-up. Younger ones may be another process's write in progress. Returns them."""
    deleted = []
    for path in Path(folder).glob(pattern):
        try:
            if time.time() - path.stat().st_mtime > max_age_s:
                path.unlink()
                deleted.append(path)
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    return deleted


def one_file(path: str | os.PathLike, other: str | os.PathLike) -> bool:
    """Whether ``path`` and ``other`` are one file (two names of it: another case on macOS
    or Windows, a hard link, a relative and a whole path); False where either is missing."""
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False
