"""Helpers shared by the widget tests: run a widget's background job and wait for it;
keep a window open while counting its close events; a docked annotation widget on the
synthetic nuclei image; the notifications shown; a Finetune widget beside cells layers
and adding a layer pair to it; annotation jobs held after each plane, and an image left
while its job is held."""

import contextlib
import threading
import time

import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QEvent, QObject

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


class _CloseBlocker(QObject):
    """Counts and refuses the close events of a window until released, so a test can send
    them (or have the code under test send them) and the fixtures still close it later."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.count, self.window = 0, window
        window.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt name)
        if event.type() != QEvent.Type.Close:
            return False
        self.count += 1
        event.ignore()
        return True

    def release(self) -> None:
        if self.window is not None:
            self.window.removeEventFilter(self)
            self.window = None  # napari's fixture checks that no viewer outlives its test


@pytest.fixture
def close_blocker():
    """``close_blocker(window)``: a blocker installed on ``window``, released at teardown.
    Filters installed later (by the code under test) see the close events first."""
    blockers = []

    def install(window) -> _CloseBlocker:
        blockers.append(_CloseBlocker(window))
        return blockers[-1]

    yield install
    for blocker in blockers:
        blocker.release()
    blockers.clear()


class Notice(str):
    """A notification's message (so ``"text" in notice`` reads it), with its severity."""

    severity: str

    @property
    def message(self) -> str:
        return str(self)


@pytest.fixture
def notifications():
    """The napari notifications shown during the test, as :class:`Notice` s."""
    received: list[Notice] = []

    def collect(notification) -> None:
        notice = Notice(str(notification.message))
        notice.severity = str(notification.severity)
        received.append(notice)

    notification_manager.notification_ready.connect(collect)
    yield received
    notification_manager.notification_ready.disconnect(collect)


class PlaneGate:
    """Holds an annotation job after each plane it yields until the test lets it on:
    ``release(n)`` lets ``n`` more planes through, ``open()`` all the rest."""

    def __init__(self) -> None:
        self._permits, self._opened = threading.Semaphore(0), threading.Event()

    def release(self, n: int = 1) -> None:
        self._permits.release(n)

    def open(self) -> None:
        self._opened.set()

    def wait_for_turn(self) -> bool:
        deadline = time.monotonic() + WAIT_MS / 1000
        while not self._opened.is_set():
            if self._permits.acquire(timeout=0.02):
                return True
            if time.monotonic() > deadline:
                return False
        return True


@pytest.fixture
def hold_planes(monkeypatch):
    """``hold_planes(job="iter_segment_automatically")``: ``annotate_jobs.<job>`` waits after
    each plane it yields until the returned :class:`PlaneGate` lets it on; every gate opens
    at teardown, so a failed test leaves no worker waiting."""
    from napari_samtune._qt import annotate_jobs

    gates: list[PlaneGate] = []

    def hold(job: str = "iter_segment_automatically") -> PlaneGate:
        gate, real = PlaneGate(), getattr(annotate_jobs, job)

        def gated(*args, **kwargs):
            for item in real(*args, **kwargs):
                yield item
                if isinstance(item, annotate_jobs.PlaneResult):
                    assert gate.wait_for_turn()

        monkeypatch.setattr(annotate_jobs, job, gated)
        gates.append(gate)
        return gate

    yield hold
    for gate in gates:
        gate.open()


@pytest.fixture
def away_and_back(drain_jobs):
    """``with away_and_back(widget, gate, back):`` around a job on the image chosen now,
    held by ``gate`` (a :class:`PlaneGate` or a semaphore), while the body chooses another
    image: the image is chosen again before the job ends when ``back`` is
    ``"while it runs"`` (its session must be the run's), then ``gate.release(2)`` lets the
    job end (also when the body fails) and the widget's jobs are drained."""

    @contextlib.contextmanager
    def left(widget, gate, back: str):
        session = widget.session
        try:
            yield
            if back == "while it runs":
                widget.ui.image_combo.setCurrentText(session.image_layer.name)
                assert widget.session is session  # the run's session goes on
        finally:
            gate.release(2)
        drain_jobs(widget)

    return left


@pytest.fixture
def planes_seen():
    """``planes_seen(worker)``: the planes an annotation job's ``worker`` yields from now
    on, once the widget has handled each (this slot runs after the widget's)."""
    from napari_samtune._qt import annotate_jobs

    def watch(worker) -> list[int]:
        seen: list[int] = []

        def note(item) -> None:
            if isinstance(item, annotate_jobs.PlaneResult):
                seen.append(item.plane)

        worker.yielded.connect(note)
        return seen

    return watch


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs):
    """A viewer with the synthetic nuclei image and a docked widget using the tiny model."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    yield viewer, widget
    drain_jobs(widget)


@pytest.fixture
def stack_widget(make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path):
    """A viewer on plane 0 of a (3, 96, 96) stack and the widget with the tiny model,
    saving to ``tmp_path``."""
    import numpy as np

    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune.core.synthetic import make_image

    viewer = make_napari_viewer()
    viewer.add_image(np.stack([make_image((96, 96), seed=s)[0] for s in range(3)]), name="stack")
    viewer.dims.set_current_step(0, 0)
    widget = AnnotateWidget(viewer)
    widget.ui.folder_edit.setText(str(tmp_path))
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    yield viewer, widget
    drain_jobs(widget)


@pytest.fixture
def cells_viewer(make_napari_viewer):
    """``cells_viewer(n=2, size=64)``: a viewer with images "cells0", "cells1", ... and
    their labels "cells0 labels", ... (``size`` x ``size`` pixels, a few objects each)."""
    from napari_samtune.core.synthetic import make_image

    def make(n: int = 2, size: int = 64):
        viewer = make_napari_viewer()
        for i in range(n):
            image, labels = make_image((size, size), seed=i)
            viewer.add_image(image, name=f"cells{i}")
            viewer.add_labels(labels, name=f"cells{i} labels")
        return viewer

    return make


@pytest.fixture
def cells_with_one_saved_object(cells_viewer, qtbot, tiny_sam, drain_jobs):
    """``cells_with_one_saved_object(folder)``: ``(viewer, widget)``, two cells images
    (see ``cells_viewer``) and the Annotate widget on cells0, with object 1 committed and
    saved to ``folder``."""
    from napari_samtune._qt.annotate import AnnotateWidget

    def make(folder):
        viewer = cells_viewer(2)
        widget = AnnotateWidget(viewer)
        widget.ui.folder_edit.setText(str(folder))
        widget.set_model(tiny_sam, "tiny", "tiny-test")
        drain_jobs(widget)
        widget.session.layers.preview.data[10:20, 10:20] = 1
        with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
            assert widget.commit() == [1]
        drain_jobs(widget)
        return viewer, widget

    return make


@pytest.fixture
def cells0_saved_then_panel_reopened(cells_with_one_saved_object, tiny_sam, drain_jobs):
    """``cells0_saved_then_panel_reopened(folder)``: ``(viewer, widget, session)``, cells0
    with one object saved in ``folder`` (its session: ``session``), then the panel closed
    (cells0's layers stay) and opened again (``widget``) on cells1: no session of cells0
    is kept."""
    from napari_samtune._qt.annotate import AnnotateWidget

    def make(folder):
        viewer, widget = cells_with_one_saved_object(folder)
        session = widget.session
        widget.shut_down()
        viewer.layers.move(viewer.layers.index("cells1"), 0)
        reopened = AnnotateWidget(viewer)
        reopened.ui.folder_edit.setText(str(folder))
        reopened.set_model(tiny_sam, "tiny", "tiny-test")
        drain_jobs(reopened)
        assert reopened.session.image_layer.name == "cells1"
        return viewer, reopened, session

    return make


@pytest.fixture
def finetune_on_cells(cells_viewer):
    """``finetune_on_cells(n=2)``: ``(viewer, widget)``, a Finetune widget (undocked, on a
    CPU machine with 16 GB) beside a ``cells_viewer(n)``."""
    from napari_samtune._qt.train_widget import TrainWidget
    from napari_samtune.core.presets import MachineResources
    from tests._qt.plugin_viewer import as_plugin_sees_it

    machine = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)

    def make(n: int = 2):
        viewer = cells_viewer(n)
        return viewer, TrainWidget(as_plugin_sees_it(viewer), machine=machine)

    return make


@pytest.fixture
def add_pair():
    """``add_pair(source, image, labels)``: choose the layers so named in a Finetune data
    source and press its Add; whether the pair was added (else ``source.pair_error`` says
    why)."""

    def add(source, image: str, labels: str) -> bool:
        source.image_combo.setCurrentText(image)
        source.labels_combo.setCurrentText(labels)
        return source.add_current_pair()

    return add


@pytest.fixture
def use_tiny_model(qtbot, tiny_checkpoint):
    """``use_tiny_model(train_widget, epochs)``: pick the tiny checkpoint file and make runs
    as short as possible (two patches of two objects, the encoder frozen: its embeddings are
    cached per epoch)."""

    from napari_samtune._qt.train_settings import READ_TASK

    def use(widget, epochs: int) -> None:
        settings = widget.settings
        settings.model_picker.select_model(str(tiny_checkpoint))
        # known once the read returns; Start waits until its task has ended too
        qtbot.waitUntil(
            lambda: (
                settings.architecture() is not None and not settings.runner.is_running(READ_TASK)
            ),
            timeout=WAIT_MS,
        )
        settings.epochs_spin.setValue(epochs)
        settings.samples_spin.setValue(2)
        settings.objects_spin.setValue(2)
        settings.freeze_checks["image_encoder"].setChecked(True)

    return use


@pytest.fixture
def sensitive_widget(make_napari_viewer, qtbot, sensitive_sam, drain_jobs):
    """``sensitive_widget(image, name)``: ``(viewer, widget)``, the Annotate widget on the
    image, with the ``sensitive_sam`` model loaded and its embedding computed."""
    from napari_samtune._qt.annotate import AnnotateWidget

    def make(image, name: str):
        viewer = make_napari_viewer()
        viewer.add_image(image, name=name)
        widget = AnnotateWidget(viewer)
        with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
            widget.set_model(sensitive_sam, "tiny", "tiny-sensitive")
        drain_jobs(widget)
        return viewer, widget

    return make


@pytest.fixture
def better_each_epoch(monkeypatch):
    """Runs validate as they do, but score each epoch better than the one before and than
    the model before training (the tiny model's own scores depend on the CPU's rounding,
    bf16 where it runs fast): the last epoch is the best, and the model is taken as
    better, whose weights the Finetune panel then loads for annotation."""
    from napari_samtune.core.trainer import Trainer

    real_validate, calls = Trainer._validate, []

    def scored(self, *args):  # by calls: the score before training is taken at epoch 0 too
        metrics = real_validate(self, *args)
        assert metrics, "the run validates"
        calls.append(1)
        return {**metrics, "val_iou": 0.5 + 0.01 * len(calls)}

    monkeypatch.setattr(Trainer, "_validate", scored)
