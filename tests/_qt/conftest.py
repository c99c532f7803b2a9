"""Helpers shared by the widget tests: run a widget's background job and wait for it."""

import pytest

WAIT_MS = 30_000


@pytest.fixture
def drain_jobs(qtbot):
    """``drain_jobs(widget)`` waits until the widget's task runner is idle."""

    def drain(widget) -> None:
        qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)

    return drain


@pytest.fixture
def run_job(qtbot, drain_jobs):
    """``run_job(widget, start, task)``: call ``start()``, wait for ``task`` to finish, then
    for any follow-up jobs."""

    def run(widget, start, task: str) -> None:
        with qtbot.waitSignal(
            widget.runner.task_finished, check_params_cb=lambda name: name == task, timeout=WAIT_MS
        ):
            assert start() is not None
        drain(widget)

    drain = drain_jobs
    return run
