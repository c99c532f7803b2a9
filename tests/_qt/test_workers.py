"""The widgets' TaskRunner: callbacks on the main thread, waiting without an event loop."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
from qtpy.QtWidgets import QLabel, QProgressBar

from napari_samtune._qt.workers import TaskProgress, TaskRunner


def _slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def test_wait_needs_no_event_loop_and_forget_drops_the_callbacks(qtbot, make_napari_viewer):
    make_napari_viewer()  # napari's thread workers register with the current viewer
    runner = TaskRunner(QProgressBar(), QLabel())
    returned, finished = [], []
    runner.start(
        "slow", _slow, 0.3, on_return=returned.append, on_finish=lambda: finished.append(1)
    )
    start = time.perf_counter()
    runner.wait("slow")  # no event processing here: the worker's signals stay queued
    assert time.perf_counter() - start >= 0.2
    assert runner.is_running("slow") and returned == []
    runner.forget("slow")
    assert not runner.is_running()
    qtbot.wait(200)  # the queued signals arrive now, and are dropped
    assert returned == [] and finished == []

    runner.start("again", _slow, 0.0, on_return=returned.append)  # a remembered task
    with qtbot.waitSignal(runner.task_finished, timeout=10_000):
        pass
    assert returned == ["done"]
    runner.wait("again")  # an ended task: returns at once


def _out_of_memory_after_a_step():
    yield TaskProgress(1, 2, "step 1 of 2")
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_runtime_error_of_a_generator_is_reported_and_ends_the_task(
    qtbot, make_napari_viewer, monkeypatch
):
    """superqt ends a generator that raises a RuntimeError without errored or finished
    (it takes it for a deleted worker); torch's CUDA and memory errors are RuntimeErrors."""
    make_napari_viewer()
    shown: list[str] = []
    monkeypatch.setattr("napari_samtune._qt.workers.show_error", shown.append)
    runner = TaskRunner(QProgressBar(), QLabel())
    errors, finished = [], []
    with qtbot.waitSignal(runner.task_finished, timeout=10_000):
        runner.start(
            "training",
            _out_of_memory_after_a_step,
            on_error=errors.append,
            on_finish=lambda: finished.append(1),
        )
    assert not runner.is_running() and finished == [1]
    assert [type(error) for error in errors] == [RuntimeError]
    assert str(errors[0]) == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert len(shown) == 1 and shown[0].startswith("training failed: out of memory (CUDA")


def test_a_quiet_task_leaves_the_label_and_the_bar_to_the_others(qtbot, make_napari_viewer):
    """An autosave wrote "annotation autosave…" over "committed object(s) [1]" and then
    cleared the line: what the commit did was gone before it could be read."""
    make_napari_viewer()
    bar, label = QProgressBar(), QLabel()
    runner = TaskRunner(bar, label)
    label.setText("committed object(s) [1]")
    with qtbot.waitSignal(runner.task_finished, timeout=10_000):
        runner.start("autosave", _slow, 0.05, quiet=True)
        assert label.text() == "committed object(s) [1]" and bar.isHidden()
    assert label.text() == "committed object(s) [1]" and bar.isHidden()

    embedded, saved = threading.Event(), threading.Event()
    runner.start("embedding", threading.Event.wait, embedded, 10)  # shows progress
    with qtbot.waitSignal(runner.task_finished, timeout=10_000):
        runner.start("autosave", _slow, 0.0, quiet=True)
    assert label.text() == "embedding…" and not bar.isHidden()  # still embedding
    runner.start("autosave", threading.Event.wait, saved, 10, quiet=True)
    with qtbot.waitSignal(runner.task_finished, timeout=10_000) as ended:
        embedded.set()
    assert ended.args == ["embedding"] and runner.is_running("autosave")
    assert label.text() == "" and bar.isHidden()  # the save runs on, unseen
    runner.report(TaskProgress(2, 2, "a late report"))
    qtbot.wait(50)
    assert label.text() == "" and bar.isHidden()
    with qtbot.waitSignal(runner.task_finished, timeout=10_000):
        saved.set()
    assert label.text() == "" and bar.isHidden()


class _Image(np.ndarray):
    """An array that can be weakly referenced, to see when nothing holds it any more."""


def _total(image: np.ndarray) -> float:
    return float(image.sum())


def _iter_totals(image: np.ndarray):
    yield TaskProgress(1, 1, "summed")
    return float(image.sum())


def test_a_finished_task_lets_go_of_its_worker_and_its_arguments(qtbot, make_napari_viewer):
    """Finished workers stayed alive, held by napari's task list and through their signal
    connections, and with them every image, session and model their jobs were given.

    Freed by reference counting, without the garbage collector: it runs seldom, and a
    big image does not make it run sooner."""
    make_napari_viewer()  # napari lists the workers it makes for the current viewer
    runner = TaskRunner(QProgressBar(), QLabel())
    gc.collect()
    gc.disable()
    try:
        for func in (_total, _iter_totals):
            image = np.ones((512, 512), np.float32).view(_Image)
            returned = []
            with qtbot.waitSignal(runner.task_finished, timeout=10_000):
                worker = runner.start("sum", func, image, on_return=returned.append)
            image_ref, worker_ref = weakref.ref(image), weakref.ref(worker)
            del image, worker
            qtbot.wait(50)  # the worker's thread returns
            assert returned == [512.0 * 512.0] and not runner.is_running()
            assert image_ref() is None and worker_ref() is None
    finally:
        gc.enable()


def test_a_task_waited_for_in_the_turn_it_started_is_called_off(qtbot, make_napari_viewer):
    """Started while the event loop runs, superqt hands the worker to a thread only at the
    loop's next turn: a wait in the same turn (a window closing) waited for ever."""
    from qtpy.QtCore import QTimer

    make_napari_viewer()
    runner = TaskRunner(QProgressBar(), QLabel())
    ran, waited = [], []

    def in_one_turn() -> None:
        runner.start("queued", lambda: ran.append(1))
        waited.append(runner.wait("queued"))
        runner.forget("queued")
        runner.start("begun", lambda: ran.append(2))

    QTimer.singleShot(0, in_one_turn)
    qtbot.waitUntil(lambda: bool(waited) and not runner.is_running(), timeout=10_000)
    qtbot.wait(100)
    assert waited == [False] and ran == [2]  # called off: the caller does its work
    runner.start("direct", lambda: ran.append(3))  # outside the event loop: it runs
    assert runner.wait("direct") and ran == [2, 3]


def test_a_generator_task_waited_for_in_the_turn_it_started_is_called_off(
    qtbot, make_napari_viewer
):
    """A training run (a generator task) started by a script that closes the window in the
    same turn: the close's wait never returned, napari hung, as plain tasks once did."""
    from qtpy.QtCore import QTimer

    make_napari_viewer()
    runner = TaskRunner(QProgressBar(), QLabel())
    ran, waited = [], []

    def steps(n):
        ran.append(n)
        yield TaskProgress(1, 1, "step")
        return n

    def in_one_turn() -> None:
        runner.start("queued", steps, 1)
        done = threading.Event()  # wait() in a thread: a hang fails the test, not the suite
        threading.Thread(
            target=lambda: (waited.append(runner.wait("queued")), done.set()), daemon=True
        ).start()
        done.wait(5)
        runner.forget("queued")
        runner.start("begun", steps, 2)

    QTimer.singleShot(0, in_one_turn)
    qtbot.waitUntil(lambda: bool(waited) and not runner.is_running(), timeout=10_000)
    qtbot.wait(100)
    assert waited == [False] and ran == [2]  # called off: it never ran
    runner.start("direct", steps, 3)  # outside the event loop: it runs
    assert runner.wait("direct") and ran == [2, 3]
