"""Stop in the annotation widget: a whole-stack automatic segmentation (minutes a plane on
large planes) could only be ended by closing the panel; and its progress bar stood still
within each plane."""

from __future__ import annotations

import threading

import numpy as np
import tifffile

from napari_samtune._qt import annotate_jobs
from napari_samtune._qt.annotate_jobs import TaskProgress
from napari_samtune._qt.annotate_ui import SCOPE_STACK

WAIT_MS = 30_000


def _whole_stack(widget) -> None:
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)


def test_stop_ends_a_whole_stack_run_and_keeps_the_planes_done(
    stack_widget, hold_planes, qtbot, drain_jobs, tmp_path, notifications
):
    gate = hold_planes()
    _, widget = stack_widget
    stack = widget.session
    _whole_stack(widget)
    assert not widget.ui.stop_button.isEnabled()
    worker = widget.segment_automatically()
    assert widget.ui.stop_button.isEnabled()
    qtbot.waitUntil(lambda: stack.annotations[0].any(), timeout=WAIT_MS)
    widget.ui.stop_button.click()
    assert "stopping automatic segmentation" in widget.ui.status_label.text()
    gate.open()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    drain_jobs(widget)
    assert stack.annotations[0].any() and not stack.annotations[1:].any()
    assert not widget.ui.stop_button.isEnabled()
    assert any("ended after 1 of 3 planes" in n for n in notifications)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "stack.labels.tif"), stack.annotations)
    assert widget.undo() and not stack.annotations.any()


def test_stop_ends_a_propagation_and_keeps_the_planes_reached(
    stack_widget, qtbot, drain_jobs, monkeypatch, notifications
):
    """Propagation 'reaches' plane 1, then waits; as the real one does between tiles, it
    ends once its stop event is set, and says which planes it reached (it said "stopped")."""
    gate = threading.Event()

    def propagation(segmenter, axes, data, start, mask, config, keep_out, image_name, stop):
        labels = np.zeros(axes.spatial_shape[-2:], np.uint32)
        labels[30:50, 30:50] = 1
        yield annotate_jobs.PlaneResult(1, labels)
        assert gate.wait(WAIT_MS / 1000)
        if stop.is_set():
            return
        yield annotate_jobs.PlaneResult(2, labels)
        yield annotate_jobs.PropagationEnd((1, 2))

    monkeypatch.setattr(annotate_jobs, "iter_propagate_object", propagation)
    _, widget = stack_widget
    widget.session.layers.preview.data[0, 40:50, 40:50] = 1
    try:
        worker = widget.propagate()
        assert widget.ui.stop_button.isEnabled()
        qtbot.waitUntil(lambda: widget.session.layers.preview.data[1].any(), timeout=WAIT_MS)
        widget.ui.stop_button.click()
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    drain_jobs(widget)
    assert widget.session.layers.preview_planes() == [0, 1]
    assert not widget.ui.stop_button.isEnabled()
    assert (
        "propagation from plane 0 stopped; it reached plane 1, kept in the preview: commit (C) "
        "to write the 3D object, or propagate again to go on"
    ) in notifications
    assert widget.commit() == [1]


def test_the_bar_of_a_whole_stack_run_moves_within_each_plane(stack_widget, drain_jobs):
    _, widget = stack_widget
    _whole_stack(widget)
    widget.ui.points_per_side_spin.setValue(16)  # more points than one batch takes
    reports: list[TaskProgress] = []
    real = widget.runner.report
    widget.runner.report = lambda progress: (reports.append(progress), real(progress))
    widget.segment_automatically()
    drain_jobs(widget)
    within = [r for r in reports if "of 3)" in r.message]
    assert within, [r.message for r in reports]
    per_plane = within[0].total // 3
    assert per_plane >= 2 and all(r.total == 3 * per_plane for r in within)
    done = [r.done for r in within]
    assert done == sorted(done) and done[-1] == 3 * per_plane
    assert any(0 < d % per_plane for d in done)  # between two planes' ends
    assert "plane 1/2 of 'stack' (2 of 3)" in " ".join(r.message for r in within)


def test_stop_during_an_embedding_does_not_start_it_again(
    stack_widget, qtbot, drain_jobs, monkeypatch
):
    """The embedding of the plane in view, stopped, began again at once when it ended."""
    gate, started = threading.Event(), []
    real = annotate_jobs.iter_embed_planes

    def held(segmenter, axes, data, planes, report, image_name="image", stop=None):
        started.append(list(planes))
        if len(started) == 1:
            assert gate.wait(WAIT_MS / 1000)
            if stop.is_set():
                return None
        return (yield from real(segmenter, axes, data, planes, report, image_name, stop))

    monkeypatch.setattr(annotate_jobs, "iter_embed_planes", held)
    viewer, widget = stack_widget
    try:
        viewer.dims.set_current_step(0, 1)  # plane 1, not embedded yet
        qtbot.waitUntil(lambda: started == [[1]], timeout=WAIT_MS)
        assert widget.ui.stop_button.isEnabled()
        widget.ui.stop_button.click()
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    qtbot.wait(200)
    assert started == [[1]] and not widget.is_embedded(1)
    assert widget.ui.status_label.text() == "stopped"
    widget.session.layers.points.add([1, 40, 40])  # a click on plane 1 asks for it
    drain_jobs(widget)
    assert started == [[1], [1]] and widget.is_embedded(1)
