"""Background work for the widgets: napari thread workers with progress and readable errors.

Every slow call of the core (downloading and loading a model, computing image
embeddings, automatic segmentation, propagation, training) runs through a
:class:`TaskRunner`. The work function never touches a layer: it returns or
yields plain data (numpy arrays, frozen dataclasses) and the callbacks, which
Qt runs on the main thread, update the viewer. A generator may yield
:class:`TaskProgress` to move the progress bar; anything else it yields goes to
``on_yield``. A failure becomes a napari error notification that says what to
do about it, and the widget stays usable; a task that refused to begin
(:class:`TaskRefused`) is notified as not started, not as failed.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Qt, QThread, Signal
from qtpy.QtWidgets import QLabel, QProgressBar

from napari_samtune._qt.task_messages import MEMORY_ADVICE, user_message
from napari_samtune._qt.worker_life import (
    GeneratorFailed,
    Launch,
    napari_task_status_dropper,
    release_worker,
    runtime_errors_reported,
)


@dataclass(frozen=True)
class TaskProgress:
    """A progress report a worker generator yields: ``done`` of ``total`` steps."""

    done: int  # steps finished so far
    total: int  # steps in all; 0 means unknown (busy indicator)
    message: str = ""  # what is happening now, shown next to the bar


class TaskRefused(Exception):
    """A base of the errors with which a task refuses to begin (e.g. its output folder in use
    by another run): nothing was done, so it is notified as "<task> not started", not as
    failed. Combine it with the error's own type: ``class InUse(ValueError, TaskRefused)``."""


def _is_stopped_download(exc: BaseException) -> bool:
    from napari_samtune.core.fetch import DownloadStopped  # torch: only on an error

    return isinstance(exc, DownloadStopped)


class _ProgressRelay(QObject):
    """Carries progress from any thread to the main thread (a queued Qt signal)."""

    progressed = Signal(object)
    task_finished = Signal(str)  # name of a task, after its callbacks ran


class TaskRunner:
    """Starts thread workers, shows their progress in a bar and label, reports failures.

    Progress reaches the bar either as :class:`TaskProgress` yielded by a generator, or
    through :meth:`report`, which any thread may call (e.g. from a core callback such as
    ``load_model(progress=...)`` that runs inside a worker).

    Args:
        progress_bar: bar that shows the progress of the running tasks (hidden when idle).
        status_label: label that shows the latest progress message.
    """

    def __init__(self, progress_bar: QProgressBar, status_label: QLabel) -> None:
        self.progress_bar = progress_bar
        self.status_label = status_label
        self.progress_bar.setVisible(False)
        self._shown = True  # False once the widgets are gone (the viewer closed)
        self.progress_bar.destroyed.connect(self._on_widgets_destroyed)
        self._workers: dict[str, Any] = {}  # task name -> running worker
        self._ended: dict[str, threading.Event] = {}  # task name -> set when its thread ends
        self._cancels: dict[str, threading.Event] = {}  # task name -> set to ask it to stop
        self._launches: dict[str, Launch] = {}  # the tasks, until they end
        self._quiet: set[str] = set()  # tasks that leave the bar and the label alone
        # a quiet task's error said, by task, until it succeeds: said again, only in the label
        self._said_errors: dict[str, str] = {}
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._show_progress)
        # Emitted on the main thread once a task has finished (returned or failed) and
        # its callbacks have run; connect before starting to never miss a fast task.
        self.task_finished = self._relay.task_finished

    def report(self, progress: TaskProgress) -> None:
        """Show ``progress``; safe to call from a worker thread."""
        self._relay.progressed.emit(progress)

    def is_running(self, name: str | None = None) -> bool:
        """Whether the task ``name`` (or any task, when ``name`` is None) is running."""
        return bool(self._workers) if name is None else name in self._workers

    def worker(self, name: str) -> Any | None:
        """The running worker of task ``name``, or None."""
        return self._workers.get(name)

    def start(
        self,
        name: str,
        func: Callable,
        *args: Any,
        on_return: Callable[[Any], None] | None = None,
        on_yield: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        memory_advice: str | Callable[[], str] = MEMORY_ADVICE,
        quiet: bool = False,
        cancel_event: threading.Event | None = None,
        **kwargs: Any,
    ):
        """Run ``func(*args, **kwargs)`` in a thread worker; callbacks run on the main thread.

        An error is notified (see :func:`user_message`, with ``memory_advice``) and handed
        to ``on_error``; a stopped download is told as information, a :class:`TaskRefused`
        as the task not started. A ``quiet`` task (a
        background save) shows no progress, so that the label keeps what the user last did.
        ``cancel_event``, which ``func`` checks, is set by :meth:`cancel` and
        :meth:`quit_all`: a plain function (a download) has no other way to be stopped.
        Returns the started worker (wait on its ``finished`` signal in tests). Raises
        ``RuntimeError`` when a task of the same name is still running.
        """
        if name in self._workers:
            raise RuntimeError(f"{name} is still running; wait for it to finish")
        launch = Launch()
        func = launch.guard(func)
        if inspect.isgeneratorfunction(func):
            func = runtime_errors_reported(func)
        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        self._drop_generic_error_relay(worker)

        ended = self._connect(name, worker, on_return, on_yield, on_error, on_finish, memory_advice)
        self._workers[name], self._ended[name] = worker, ended
        self._launches[name] = launch
        if cancel_event is not None:
            self._cancels[name] = cancel_event
        if quiet:
            self._quiet.add(name)
        else:
            self._show_progress(TaskProgress(0, 0, f"{name}…"))
        worker.start()
        if QThread.currentThread().loopLevel():  # as superqt tells
            launch.queue()
        return worker

    def _connect(
        self,
        name: str,
        worker: Any,
        on_return: Callable[[Any], None] | None,
        on_yield: Callable[[Any], None] | None,
        on_error: Callable[[BaseException], None] | None,
        on_finish: Callable[[], None] | None,
        memory_advice: str,
    ) -> threading.Event:
        """Connect ``worker``'s signals to the callbacks of task ``name`` (until forgotten),
        all undone once it has finished; returns the event its thread sets when it ends."""
        connections: list[tuple[Any, Callable]] = []  # (signal, slot)

        def connect(signal: Any, slot: Callable, *how: Qt.ConnectionType) -> None:
            signal.connect(slot, *how)
            connections.append((signal, slot))

        def current(callback: Callable) -> Callable:
            def guarded(*values: Any) -> None:
                if self._workers.get(name) is worker:  # not forgotten (see forget)
                    callback(*values)

            return guarded

        connect(worker.returned, current(lambda _value: self._said_errors.pop(name, None)))
        if on_return is not None:
            connect(worker.returned, current(on_return))
        if hasattr(worker, "yielded"):
            connect(worker.yielded, current(lambda value: self._on_yield(value, on_yield)))
        connect(
            worker.errored,
            current(lambda exc: self._on_error(name, exc, on_error, memory_advice)),
        )
        connect(worker.finished, current(lambda: self._on_finish(name, on_finish)))
        ended = threading.Event()  # set in the worker's thread, so wait() needs no event loop
        connect(worker.finished, ended.set, Qt.ConnectionType.DirectConnection)
        drop_status = napari_task_status_dropper(worker)
        # Last of the finished slots (after _on_finish, also for a forgotten task).
        connect(worker.finished, lambda: release_worker(connections, drop_status))
        return ended

    @staticmethod
    def _drop_generic_error_relay(worker) -> None:
        """napari may relay worker errors as raw tracebacks; we show a readable message."""
        relay = getattr(worker, "_relay_error", None)
        if relay is not None:
            try:
                worker.errored.disconnect(relay)
            except (TypeError, RuntimeError):  # this napari version did not connect it
                pass

    def wait(self, name: str) -> bool:
        """Block until task ``name`` has ended, without running the event loop (for a
        window that is closing and cannot wait for one). A plain function's task that has
        not begun, started in this turn of the event loop (which hands it to a thread only
        at the next), is called off instead: returns False, and the caller does its work."""
        launch = self._launches.get(name)
        if launch is not None and launch.call_off():
            return False
        ended = self._ended.get(name)
        if ended is not None:
            ended.wait()
        return True

    def forget(self, name: str) -> None:
        """Drop task ``name``: none of its callbacks runs any more (their queued signals
        would otherwise reach widgets that are being deleted)."""
        self._workers.pop(name, None)
        self._ended.pop(name, None)
        self._cancels.pop(name, None)
        self._launches.pop(name, None)
        quiet = name in self._quiet
        self._quiet.discard(name)
        if not self._shown or quiet:
            return
        shown = [task for task in self._workers if task not in self._quiet]
        if not shown:
            self.progress_bar.setVisible(False)
            self.status_label.setText("")
        else:  # the ended task's last words ("loading model…") stayed while another ran
            self._show_progress(TaskProgress(0, 0, f"{shown[-1]}…"))

    def _on_widgets_destroyed(self, _obj=None) -> None:
        """The viewer closed with tasks running: they are asked to stop, and their late
        results, progress and callbacks no longer reach the deleted widgets."""
        self._shown = False
        self.quit_all()
        for name in list(self._workers):
            self.forget(name)

    def quit_all(self) -> None:
        """Ask every running worker to stop (generators stop at their next yield, tasks
        with a cancel event when they next check it)."""
        for name in list(self._workers):
            self.cancel(name)

    def cancel(self, name: str) -> None:
        """Ask task ``name`` to stop, if it runs; it ends (and its callbacks run) later."""
        if name in self._cancels:
            self._cancels[name].set()
        if name in self._workers:
            self._workers[name].quit()

    def _on_yield(self, value: Any, on_yield: Callable[[Any], None] | None) -> None:
        if isinstance(value, TaskProgress):
            self._show_progress(value)
        elif on_yield is not None:
            on_yield(value)

    def _on_error(
        self,
        name: str,
        exc: BaseException,
        on_error: Callable[[BaseException], None] | None,
        memory_advice: str | Callable[[], str],
    ) -> None:
        if isinstance(exc, GeneratorFailed):
            exc = exc.error
        if callable(memory_advice):  # what the task can do depends on where it stopped
            memory_advice = memory_advice()
        if _is_stopped_download(exc):
            show_info(f"{name} stopped: {exc}")
        elif isinstance(exc, TaskRefused):
            show_error(f"{name} not started: {user_message(exc, memory_advice)}")
        else:
            self._say_failure(name, f"{name} failed: {user_message(exc, memory_advice)}")
        if on_error is not None:
            on_error(exc)

    def say_next_failure(self, name: str) -> None:
        """Notify the next failure of quiet task ``name`` even if it failed so before: a
        run a person asked for (Save now) is told how it ended."""
        self._said_errors.pop(name, None)

    def _say_failure(self, name: str, message: str) -> None:
        """Notify ``message``; for a quiet task (a background save) that failed so before
        and has not succeeded since, only in the label: a folder that cannot be written
        popped up the same error at every commit and brush stroke."""
        if name in self._quiet and self._said_errors.get(name) == message:
            if self._shown:
                self.status_label.setText(f"{message} (again)")
            return
        if name in self._quiet:
            self._said_errors[name] = message
        show_error(message)

    def _on_finish(self, name: str, on_finish: Callable[[], None] | None) -> None:
        self.forget(name)  # ended: the bookkeeping is the same
        try:
            if on_finish is not None:
                on_finish()
        finally:
            self.task_finished.emit(name)

    def _show_progress(self, progress: TaskProgress) -> None:
        if self._workers.keys() <= self._quiet:
            return  # a late report from a task that has already finished
        self.progress_bar.setVisible(True)
        self.progress_bar.setRange(0, max(progress.total, 0))
        self.progress_bar.setValue(min(progress.done, progress.total))
        if progress.message:
            self.status_label.setText(progress.message)
