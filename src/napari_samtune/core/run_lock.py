"""A training run's hold on its folder: a second run into it (another terminal, a job started
twice, a resume while the run still trains) is refused instead of writing over the first
run's checkpoints; and the advisory file locks it is made of (also used by downloads).
Where the system offers no locks (Windows, some network file systems) runs are not kept
apart.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TRAINING_LOCK_NAME = ".samtune-train.lock"  # in a run's folder while it trains: its process id
# :func:`training_process` holds the lock for an instant to look: a run starting then was
# refused as "in use by another training run (process ?)"; it tries again for this long
A_LOOK_S = 0.25


@dataclass(frozen=True)
class InUseWords:
    """How a refusal of a folder another run trains in words it, for who reads it."""

    name: str = "out_dir"  # what gave the folder: an option, a field
    fix: str = "wait for it to finish, or choose another folder"  # what to do
    here: str = ""  # who the holder is when it is this process (another panel); "": unsaid


@contextmanager
def training_lock(out_dir: Path, words: InUseWords = InUseWords()) -> Iterator[None]:
    """Hold ``out_dir`` for the training run in this process: a second run into it (another
    terminal, a job started twice, a resume while the run still trains) is refused with a
    ``ValueError``, instead of writing over this run's checkpoints and model. An
    advisory lock, freed when the run ends or its process dies; where the system offers
    none (Windows, some network file systems), runs are not kept apart. ``words``: how
    the refusal names the folder and the fix."""
    out_dir = Path(out_dir)
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(out_dir / TRAINING_LOCK_NAME, out_dir, words), _held_here(out_dir):
            yield
    finally:  # a run refused, failed or stopped before its first step leaves nothing
        if made and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def training_process(out_dir: str | os.PathLike) -> str | None:
    """The process id of another process's run training in ``out_dir`` (holding its
    :func:`training_lock`), or None where none does (or the system offers no locks)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        lock = open(Path(out_dir) / TRAINING_LOCK_NAME, encoding="utf-8")  # noqa: SIM115
    except OSError:  # no lock file: no run there
        return None
    with lock:
        held = try_lock(fcntl, lock)
        if held is not False:  # free (the lock ends as the file closes), or no locks
            return None
        return lock.read().strip() or "?"


def _write_holder(lock, path: Path) -> None:
    """Write this process's id into the held lock file ``path``; an ``OSError`` naming it and
    the fix (a full disk said only "[Errno 28] No space left on device")."""
    from napari_samtune.core.checkpoints import write_error

    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
    except OSError as err:
        raise write_error(path, err) from err


def check_not_in_use(out_dir: Path, words: InUseWords = InUseWords()) -> None:
    """``ValueError`` when another run holds ``out_dir``: asked before a run begins, only
    reading, so that a refusal writes nothing (taking the lock wrote the holder's id, and
    on a full disk that write failed instead)."""
    holder = training_process(out_dir)
    if holder is not None:
        raise ValueError(in_use_message(out_dir, holder, words))


def in_use_message(out_dir: Path, holder: str, words: InUseWords = InUseWords()) -> str:
    """What refuses folder ``out_dir`` that process ``holder`` trains in."""
    if words.here and holder == str(os.getpid()):
        holder = f"{holder}: {words.here}"
    return (
        f"{words.name} {str(out_dir)!r} is in use by another training run (process "
        f"{holder}), which is still going; {words.fix}"
    )


_held_folders: list[Path] = []  # folders this process holds the training lock of
_held_folders_lock = threading.Lock()


@contextmanager
def _held_here(out_dir: Path) -> Iterator[None]:
    key = out_dir.resolve()
    with _held_folders_lock:
        _held_folders.append(key)
    try:
        yield
    finally:
        with _held_folders_lock:
            _held_folders.remove(key)


def holds_training_lock(out_dir: str | os.PathLike) -> bool:
    """Whether this process holds ``out_dir``'s :func:`training_lock` (the command line and
    the training widget take it before they start the run in it)."""
    key = Path(out_dir).resolve()
    with _held_folders_lock:
        return key in _held_folders


@contextmanager
def _locked(path: Path, out: Path, words: InUseWords) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) holding this process's id, removed after."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    looked_at_until = time.monotonic() + A_LOOK_S
    while True:
        lock = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed below)
        try:
            held = try_lock(fcntl, lock)
        except BaseException:
            lock.close()
            raise
        if held is False and time.monotonic() < looked_at_until:  # held for a look?
            lock.close()
            time.sleep(0.01)
            continue
        if held is None or same_file(lock, path):  # else a run ending removed it: again
            break
        lock.close()
    with lock:
        if held is False:
            lock.seek(0)
            raise ValueError(in_use_message(out, lock.read().strip() or "?", words))
        if held is None:  # this file system has no locks
            yield
            return
        try:
            _write_holder(lock, path)
            remove_unfinished_writes(out)
            yield
        finally:
            path.unlink(missing_ok=True)


# atomic_write's temporary files of a run's files (mkstemp: 8 of [a-z0-9_])
_UNFINISHED = re.compile(
    r"\.(last\.pt|best\.pt|config\.json|metrics\.jsonl|summary\.json|model\.pth)"
    r"\.[a-z0-9_]{8}\.tmp"
)


# a write left half-done this long ago was killed (here, not in core.checkpoints, which
# uses it too: this module loads without torch)
ABANDONED_WRITE_SECONDS = 3600


def remove_unfinished_writes(
    out_dir: Path, export_age_s: float = ABANDONED_WRITE_SECONDS
) -> list[Path]:
    """Delete the temporary files of writes that a killed run left in ``out_dir`` and its
    checkpoints folder (a kill skips their clean-up): each as large as the file it was to
    become, a last.pt's with optimizer state several GB, never used again. Only where no
    other run can be writing them (this process holds the folder's training lock, or no
    process does); model.pth's only when untouched for ``export_age_s`` (``samtune export``
    writes it there without the lock, and may be writing a younger one, also as a run
    resumed there takes the lock)."""
    found = [
        path
        for folder in (out_dir, out_dir / "checkpoints")
        if folder.is_dir()
        for path in folder.iterdir()
        if _UNFINISHED.fullmatch(path.name)
        and path.is_file()
        and (not path.name.startswith(".model.pth.") or _age_s(path) >= export_age_s)
    ]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:  # gone meanwhile
        return -1.0


def try_lock(fcntl, lock) -> bool | None:
    """True: locked; False: another process holds it; None: no locks on this file system."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return False if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
    return True


def same_file(lock, path: Path) -> bool:
    """``lock`` (an open file) is still the file at ``path``."""
    try:
        opened, named = os.fstat(lock.fileno()), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)
