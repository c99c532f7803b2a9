"""What the widgets' background tasks tell the person: a failure as one paragraph that ends
with the fix (:func:`user_message`), and the notes the core logs while a task runs
(:func:`logged_notes`). No Qt here."""

from __future__ import annotations

import logging
import pickle
import socket
import threading
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager

_OFFLINE_ERRORS = (urllib.error.URLError, socket.timeout, ConnectionError)


class _NoteCollector(logging.Handler):
    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.INFO)
        self.notes, self.thread = notes, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.notes.append(record.getMessage())


@contextmanager
def logged_notes(logger_name: str, notes: list[str]) -> Iterator[None]:
    """Append to ``notes`` what the core logs (INFO and up) on ``logger_name`` from this
    thread while the block runs, for the widget to show: napari shows no log records
    (e.g. a cached model file with the wrong hash moved aside before downloading)."""
    logger, handler = logging.getLogger(logger_name), _NoteCollector(notes)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


MEMORY_ADVICE = "choose the cpu device, a smaller model, or a smaller image"


def user_message(exc: BaseException, memory_advice: str = MEMORY_ADVICE) -> str:
    """A one-paragraph explanation of ``exc`` for a notification, ending with the fix
    (for running out of memory: ``memory_advice``, what the task can do with less)."""
    text = str(exc) or type(exc).__name__
    if any(isinstance(e, urllib.error.HTTPError) for e in (exc, exc.__cause__)):  # (URLErrors)
        return (  # the server answered, without the file
            f"download failed ({text}). The server was reached but did not send the file: "
            "try again later, or pick a model that is already downloaded, the built-in nano "
            "(no download), or a checkpoint file."
        )
    if isinstance(exc, _OFFLINE_ERRORS) or isinstance(exc.__cause__, _OFFLINE_ERRORS):
        return (
            f"download failed ({text}). You seem to be offline or the server is unreachable: "
            "connect to the internet, or pick a model that is already downloaded, the "
            "built-in nano (no download), or a checkpoint file."
        )
    if isinstance(exc, FileNotFoundError):
        return f"{text}. Check the path, or pick another file or model."
    if isinstance(exc, pickle.UnpicklingError | EOFError) or "PytorchStreamReader" in text:
        return (
            f"could not read the checkpoint ({text}); the file is corrupt or not a PyTorch "
            "checkpoint: download it again or pick another file."
        )
    from napari_samtune.core.devices import is_out_of_memory  # torch: only on an error

    if is_out_of_memory(exc):
        return f"out of memory ({text}): {memory_advice}."
    if isinstance(exc, ValueError | TypeError | OSError):
        return text  # core messages already name the problem and the fix
    return f"{type(exc).__name__}: {text}"
