"""A background task's life around its thread worker: its function guarded until a thread
takes it (:class:`Launch`), a generator's RuntimeErrors carried past superqt
(:func:`runtime_errors_reported`), and the worker's connections and napari's entry for it
undone once it has ended (:func:`release_worker`), so that it frees what it held."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

from qtpy.QtCore import QTimer


class GeneratorFailed(Exception):
    """A RuntimeError raised by a worker's generator, carried past superqt (see
    :func:`runtime_errors_reported`); :class:`TaskRunner` hands on the original."""

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


def runtime_errors_reported(func: Callable) -> Callable:
    """The generator function ``func`` with its RuntimeErrors raised as
    :class:`GeneratorFailed`: superqt takes a generator's RuntimeError for a deleted
    worker and ends the thread without ``errored`` or ``finished``, and torch's CUDA and
    memory errors are RuntimeErrors (the task would look running for ever)."""

    @functools.wraps(func)
    def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            return (yield from func(*args, **kwargs))
        except RuntimeError as err:
            raise GeneratorFailed(err) from err

    return generator


def napari_task_status_dropper(worker: Any) -> Callable[[], None]:
    """A function that removes the entry napari's ``create_worker`` made for ``worker`` in
    the current viewer's task list (which shows running tasks when the window closes).

    napari keeps that entry, with ``worker.quit`` as its cancel callback, for ever: it
    would keep every finished worker alive, and with it the function and arguments of
    its job (images, sessions, models)."""
    from napari import current_viewer

    viewer = current_viewer()
    manager = getattr(getattr(viewer, "window", None), "_task_status_manager", None)
    tasks = getattr(manager, "_tasks", None)
    if not isinstance(tasks, dict):  # no viewer, or a napari that keeps no such list
        return lambda: None
    quit_worker = worker.quit
    ids = [
        key for key, item in tasks.items() if getattr(item, "_cancel_callback", None) == quit_worker
    ]

    def drop() -> None:
        for key in ids:
            tasks.pop(key, None)

    return drop


def release_worker(
    connections: list[tuple[Any, Callable]], drop_status: Callable[[], None]
) -> None:
    """Undo a finished worker's connections to the runner and napari's entry for it.

    Qt holds the connected slots, which hold the worker (and the widget's callbacks, and
    through them sessions and images), and the worker's signals hold Qt's connections: a
    cycle only a full garbage collection frees, which a big image does not bring sooner.
    Undone, the worker and its arguments go as soon as nothing else holds them."""
    for signal, slot in connections:
        try:
            signal.disconnect(slot)
        except (TypeError, RuntimeError):  # already gone with the worker's signals
            pass
    connections.clear()
    drop_status()


class Launch:
    """Whether a task's function has begun in its thread, or was called off before: superqt
    hands a worker started while the event loop runs to the thread pool only at the loop's
    next turn, so a wait in the same turn (a window closing) waited for ever."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.began = False
        self.called_off = False
        self.queued = False  # till the event loop's next turn, no thread has it

    def queue(self) -> None:
        """Its worker was started while the event loop runs: queued till the next turn."""
        self.queued = True
        QTimer.singleShot(1, self._handed)  # after superqt's own 1 ms timer

    def _handed(self) -> None:
        self.queued = False

    def call_off(self) -> bool:
        """Call the function off if no thread has it yet; whether it was called off."""
        with self.lock:
            self.called_off = self.queued and not self.began
            return self.called_off

    def guard(self, func: Callable) -> Callable:
        """``func``, run unless called off first (it then returns None; a generator
        function's generator then yields nothing)."""
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def generate(*args: Any, **kwargs: Any) -> Iterator[Any]:
                if not self._begin():  # runs at the first next(), in the worker's thread
                    return None
                return (yield from func(*args, **kwargs))

            return generate

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs) if self._begin() else None

        return run

    def _begin(self) -> bool:
        """Mark the function begun, unless it was called off: whether it may run."""
        with self.lock:
            if self.called_off:
                return False
            self.began = True
            return True
