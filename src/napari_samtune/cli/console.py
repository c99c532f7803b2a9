"""How ``samtune`` talks on the console: warnings and log records as ``warning: ...`` lines,
errors and interruptions as one line each, and, under ``torchrun``, from the first process
only (the others work alike but say nothing).

Read without importing torch: the command line loads it only when a command runs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_samtune.core.shell_words import shell_path as shell_path  # for cli modules
from napari_samtune.core.shell_words import shell_quote as shell_quote  # for cli modules


@contextmanager
def plain_warnings(worded: Callable[[str], str] = str) -> Iterator[None]:
    """Python warnings of the block as ``warning: ...`` lines on stderr, like the command's
    own, each text once, and from the main process only; this package's ``worded`` (its
    parameter names as the command's options).

    Python's own form (``.../model_lookup.py:18: UserWarning: ...`` and the source line)
    is for programmers, and it repeats a warning for each line of code that gives it: a
    broken user model was reported twice by one ``samtune evaluate``. A warning from a
    library other than this one keeps its category, which says where to look it up.
    """
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if not _is_own(filename) or category is not UserWarning:
            text = f"{category.__name__}: {text}"
        else:
            text = worded(text)
        if text in shown or not is_main_process():
            return
        shown.add(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings(), _plain_log_lines():
        warnings.showwarning = show
        yield


class _PlainLogLine(logging.Handler):
    """A log record of WARNING and above as ``warning: ...`` (``error: ...``) on stderr,
    from the main process only; another library's with its logger's name."""

    def emit(self, record: logging.LogRecord) -> None:
        if not is_main_process():
            return
        where = "" if record.name.split(".")[0] == __name__.split(".")[0] else f"{record.name}: "
        try:
            text = f"{record.levelname.lower()}: {where}{record.getMessage()}"
            print(text, file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextmanager
def _plain_log_lines() -> Iterator[None]:
    """Log records (the core's notes, e.g. a downloaded file moved aside; tifffile's) as
    :class:`_PlainLogLine` s while the command runs, where logging's last resort printed
    the bare message; left alone when logging was set up (a program calling :func:`main`)."""
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = _PlainLogLine(logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _is_own(filename: str) -> bool:
    """Whether a warning was given in this package's code (its ``filename``)."""
    package = Path(__file__).resolve().parent.parent
    try:
        return Path(filename).resolve().is_relative_to(package)
    except (OSError, ValueError):
        return False


def stdout_closed() -> int:
    """The reader of stdout went away (``samtune presets | head -1``): stop without a word,
    as other command-line tools do, with the shell's code of SIGPIPE, 141. (It was called
    an error of the command, exit code 2, and Python complained again at exit, when it
    flushed stdout into the closed pipe.)"""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass
    return 128 + getattr(signal, "SIGPIPE", 13)


def torchrun_world_size() -> int:
    """How many processes ``torchrun`` started for this command (``WORLD_SIZE``; 1 without
    torchrun). Read without importing torch, which the CLI loads only when a command runs."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    return int(world_size) if world_size.isdigit() else 1


def started_by_torchrun() -> bool:
    """Whether torchrun started this process, with others (not ``WORLD_SIZE`` set by hand,
    or a batch system's own launcher: no torchrun then sends SIGTERM or reports one)."""
    return torchrun_world_size() > 1 and bool(os.environ.get("TORCHELASTIC_RUN_ID"))


# How long a torchrun worker other than the first waits before it reports an error.
WORKER_ERROR_WAIT_S = 10.0


def report_error(message: str) -> None:
    """Print ``message`` on stderr; in torchrun's other workers, only after a wait. Every
    worker meets the same mistake: the first says it, exits, and torchrun then ends the
    others in their wait. (Without it, a worker quicker than the first exited first, and
    torchrun ended the first before it said anything.) An error of one worker alone is
    still said, after the wait."""
    if not is_main_process():
        time.sleep(WORKER_ERROR_WAIT_S)
    sys.stderr.write(f"{message}\n")  # one write: another process's lines go between lines
    sys.stderr.flush()


def is_main_process() -> bool:
    """False in the workers but the first of a ``torchrun`` job (env ``RANK``, else
    ``LOCAL_RANK``, above 0): they train and exit alike, but say nothing. A process alone
    (no ``WORLD_SIZE`` above 1) is the main one whatever ``RANK`` a scheduler left set: it
    printed nothing, and its errors came 10 s late."""
    if torchrun_world_size() <= 1:
        return True
    try:
        return int(torchrun_rank()) == 0
    except ValueError:
        return True


def torchrun_rank() -> str:
    """This process's rank as torchrun gives it (env ``RANK``, else ``LOCAL_RANK``; "0"
    where neither is set)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))


def interrupted(command: str | None, note: str = "", terminated: bool = False) -> int:
    """Ctrl+C (or SIGTERM, if ``terminated``): one line (with ``note``, e.g. what was
    saved), from the main process only, and the shell's code 130 (143)."""
    prefix = f"samtune {command}" if command else "samtune"
    what = "terminated" if terminated else "interrupted"
    if is_main_process():
        print(f"{prefix}: {what}" + (f"; {note}" if note else ""), file=sys.stderr)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch job's time limit, ``kill``, torchrun stopping its workers), raised
    like Ctrl+C so the same clean-up runs; the command exits with the shell's code 143."""


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl+C and SIGTERM in the block (torch and numpy importing) are raised once it has
    ended, as ``KeyboardInterrupt`` or :class:`Terminated`: raised inside those imports,
    they left numpy half-imported (a RecursionError traceback, exit 1) or were swallowed
    (the command ran on). A Ctrl+C ignored (a background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def record(signum, frame):
        caught.append(signum)

    previous_term = signal.signal(signal.SIGTERM, record)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
        if caught:  # (over --help's or --version's SystemExit too: the person asked to stop)
            raise Terminated if caught[0] == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the block (outside the main thread, which
    alone gets signals, nothing changes): a batch then says how far it got and exits with
    143, where SIGTERM ended it without a word."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
