"""Propagation and the plane in view, as a person using a stack meets them: the 3D view while
a job ends, prompts made while propagation runs, propagating again from a corrected plane,
undo after committing a propagated object, batched mode, and the slider past the stack."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune._qt import annotate_jobs as jobs
from napari_samtune._qt.annotate import OFF_STACK_HINT
from napari_samtune._qt.annotate_jobs import EMBED_TASK, PROPAGATE_TASK
from napari_samtune._qt.annotate_ui import BATCHED_MODE
from napari_samtune._qt.propagate import PropagationConfig

WAIT_MS = 30_000
BOX = [[20.0, 20.0], [20.0, 70.0], [70.0, 70.0], [70.0, 20.0]]  # (row, col) corners


def on_plane(plane: int, corners=BOX) -> np.ndarray:
    return np.array([[plane, *corner] for corner in corners])


@pytest.fixture
def go_to(qtbot, drain_jobs):
    """``go_to(viewer, widget, plane)``: move the slider there and wait for the embedding."""

    def go(viewer, widget, plane: int) -> None:
        viewer.dims.set_current_step(0, plane)
        drain_jobs(widget)
        assert widget.is_embedded(plane)

    return go


@pytest.fixture
def propagated_from_1(stack_widget, run_job, go_to):
    """The (3, 96, 96) stack with a box on plane 1 propagated to planes 0 and 2."""
    viewer, widget = stack_widget
    go_to(viewer, widget, 1)
    layers = widget.session.layers
    layers.boxes.add_rectangles(on_plane(1))
    widget.ui.area_ratio_spin.setValue(20.0)  # random masks: stop only when they vanish
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    assert sorted(layers.propagated) == [0, 2]
    return viewer, widget


@pytest.mark.parametrize("view", ["3D", "transposed"])
def test_a_job_ending_in_a_view_without_planes_leaves_the_preview_committable(
    stack_widget, run_job, notifications, view
):
    """C said the preview 'does not show your latest prompts' after any job ended while the
    3D view (or planes along another axis) showed, and the 3D hint came without a click."""
    viewer, widget = stack_widget
    widget.session.layers.points.add([0, 48.0, 48.0])
    assert widget.session.layers.preview.data[0].any()
    if view == "3D":
        viewer.dims.ndisplay = 3
    else:
        viewer.dims.order = (1, 0, 2)
    run_job(widget, widget.embed_all_planes, EMBED_TASK)
    assert not any("SAM segments a stack plane by plane" in n for n in notifications)
    assert widget.commit() == [1]


def test_a_click_in_the_3d_view_waits_for_the_planes_to_show(stack_widget, notifications):
    viewer, widget = stack_widget
    viewer.dims.ndisplay = 3
    widget.session.layers.points.add([0, 48.0, 48.0])
    assert "a click in the 3D view lands at a depth" in notifications[-1]
    assert not widget.session.layers.preview.data.any()
    assert widget.commit() == []  # its preview is behind
    viewer.dims.ndisplay = 2
    assert widget.session.layers.preview.data[0].any()
    assert widget.commit() == [1]


def test_a_plane_prompted_while_propagation_runs_is_kept_out(
    stack_widget, hold_planes, qtbot, drain_jobs, go_to, notifications
):
    """Propagation went into a plane prompted for another object after it started, took
    the prompts for corrections of its object, and the plane came out empty."""
    viewer, widget = stack_widget
    go_to(viewer, widget, 0)
    layers = widget.session.layers
    layers.boxes.add_rectangles(on_plane(0))
    widget.ui.area_ratio_spin.setValue(20.0)
    gate = hold_planes("iter_propagate_object")
    assert widget.propagate() is not None
    qtbot.waitUntil(lambda: 1 in layers.propagated, timeout=WAIT_MS)  # held after plane 1
    viewer.dims.set_current_step(0, 2)
    layers.points.add([2, 80.0, 15.0])  # another object on plane 2, not reached yet
    gate.open()
    drain_jobs(widget)
    assert sorted(layers.propagated) == [1]
    go_to(viewer, widget, 2)
    own = layers.preview.data[2].copy()
    assert own.any()
    alone = widget.segmenter.predict(np.array([[15.0, 80.0]]), np.array([1])).mask
    np.testing.assert_array_equal(own > 0, alone)  # its own prompt's object, nothing else
    note = [n for n in notifications if n.startswith("propagated the object from plane 0")][-1]
    assert "plane 2 holds another object's prompts, left as it was" in note


def test_a_plane_shown_after_a_plane_kept_out_on_its_way_is_dropped(propagated_from_1):
    """The worker may reach planes past one prompted meanwhile before it sees that; their
    results are not shown (a gap in the object)."""
    _, widget = propagated_from_1
    session, layers = widget.session, widget.session.layers
    before = layers.preview.data.copy()
    labels = np.ones((96, 96), np.uint32)
    widget._show_propagated(jobs.PlaneResult(2, labels), session, 0, PropagationConfig(), {1})
    np.testing.assert_array_equal(layers.preview.data, before)
    widget._show_propagated(jobs.PlaneResult(2, labels), session, 0, PropagationConfig(), {3})
    np.testing.assert_array_equal(layers.preview.data[2], labels)


def test_propagating_again_from_a_corrected_plane_goes_through_the_first_start(
    propagated_from_1, run_job, go_to, notifications
):
    """Its start plane was taken for another object's: the run stopped there and emptied
    the planes beyond it."""
    viewer, widget = propagated_from_1
    layers = widget.session.layers
    go_to(viewer, widget, 2)
    row, col = np.argwhere(layers.preview.data[2] > 0)[0]
    layers.points.add([2, row, col])  # a correction of the propagated object
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    assert "another object" not in [n for n in notifications if "propagat" in n][-1]
    assert 1 in layers.propagated and 0 in layers.propagated


def test_undo_after_committing_a_propagated_object_brings_back_every_plane(propagated_from_1):
    viewer, widget = propagated_from_1
    layers = widget.session.layers
    preview = layers.preview.data.copy()
    assert widget.commit() == [1]
    assert not layers.propagated and not layers.preview.data.any()
    assert widget.undo()
    assert not widget.session.annotations.any()
    assert sorted(layers.propagated) == [0, 2]
    np.testing.assert_array_equal(layers.preview.data > 0, preview > 0)
    assert widget.commit() == [1]
    assert widget.session.records[-1]["planes"] == [0, 1, 2]


def test_batched_mode_keeps_the_propagated_plane_in_view(propagated_from_1, go_to):
    viewer, widget = propagated_from_1
    go_to(viewer, widget, 2)
    layers = widget.session.layers
    shown = layers.preview.data[2].copy()
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    np.testing.assert_array_equal(layers.preview.data[2], shown)
    assert widget.commit() == [1]
    assert widget.session.records[-1]["planes"] == [0, 1, 2]


def test_the_slider_past_the_stack_is_no_plane_to_act_on(stack_widget, notifications, drain_jobs):
    """The nearest plane was segmented automatically, and a click vanished unsaid."""
    viewer, widget = stack_widget
    viewer.add_image(np.zeros((8, 96, 96), np.uint8), name="deeper")
    drain_jobs(widget)
    assert widget.session.image_layer.name == "stack"
    viewer.dims.set_current_step(0, 6)
    assert not widget.runner.is_running()  # nothing to embed there
    hint = OFF_STACK_HINT.format("stack")
    assert widget.segment_automatically() is None
    assert hint in notifications[-1]
    assert widget.propagate() is None
    assert hint in notifications[-1]
    widget.session.layers.points.add([6, 48.0, 48.0])
    assert not widget.session.layers.preview.data.any()
    assert not widget.session.annotations.any()


def test_automatic_segmentation_of_a_stack_saves_its_planes_as_it_goes(
    stack_widget, hold_planes, qtbot, drain_jobs, monkeypatch, tmp_path
):
    """Saved only at the end of the run: a crash after hours of planes lost all of them."""
    import tifffile

    from napari_samtune._qt import annotate_actions
    from napari_samtune._qt.annotate_ui import SCOPE_STACK

    _, widget = stack_widget
    monkeypatch.setattr(annotate_actions, "AUTOMATIC_SAVE_S", 0.0)  # at every plane
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.iou_spin.setValue(0.0)
    widget.ui.stability_spin.setValue(0.0)
    gate = hold_planes()
    assert widget.segment_automatically() is not None
    saved = tmp_path / "stack.labels.tif"
    qtbot.waitUntil(lambda: saved.is_file() and tifffile.imread(saved)[0].any(), timeout=WAIT_MS)
    assert widget.runner.is_running()  # held after a plane: the run goes on
    assert not tifffile.imread(saved)[2].any()
    gate.open()
    drain_jobs(widget)
    assert all(plane.any() for plane in tifffile.imread(saved))


def test_undoing_a_propagated_commit_redraws_its_planes_previews_once(
    propagated_from_1, monkeypatch
):
    """Each redraw re-slices the whole preview: an object propagated through 30 planes of
    2048 x 2048 redrew 31 times when undone (0.4 s with the viewer frozen)."""
    _, widget = propagated_from_1
    layers = widget.session.layers
    preview = layers.preview.data.copy()
    assert widget.commit() == [1]
    kept = widget.session.undo_stack.peek().prompts
    redraws, before_prompts = [], []
    monkeypatch.setattr(layers.preview, "refresh", lambda *a, **k: redraws.append(a))
    clear_prompts = layers.clear_prompts
    monkeypatch.setattr(
        layers, "clear_prompts", lambda: (before_prompts.append(len(redraws)), clear_prompts())
    )
    kept.put_back(layers)  # the planes' previews, then the prompts (which redraw the plane in view)
    assert sorted(layers.propagated) == [0, 2] and before_prompts == [1]
    np.testing.assert_array_equal(layers.preview.data[[0, 2]] > 0, preview[[0, 2]] > 0)


def test_a_commit_keeps_the_propagated_masks_for_undo_instead_of_copies(propagated_from_1):
    """Each undo step kept a copy of every propagated plane's preview: 16 MB per 2048 x 2048
    plane (0.5 GB and 1 s per commit of an object through 29 planes). A plane corrected
    since keeps what it showed."""
    from napari_samtune._qt.kept_prompts import whole_plane

    _, widget = propagated_from_1
    layers = widget.session.layers
    corrected = layers.preview.data[2].copy()
    corrected[0, 0] = corrected.max()  # as if a correction there had grown it
    layers.set_preview(2, corrected)
    assert widget.commit() == [1]
    kept = widget.session.undo_stack.peek().prompts
    assert kept.previews[0] is kept.propagated[0].labels
    assert kept.previews[2] is not kept.propagated[2].labels
    np.testing.assert_array_equal(whole_plane(kept.previews[2], corrected.shape), corrected)
    assert widget.undo()
    np.testing.assert_array_equal(layers.preview.data[2] > 0, corrected > 0)


def test_propagation_redraws_the_preview_only_for_the_plane_in_view(
    stack_widget, run_job, go_to, monkeypatch
):
    """Each plane reached redrew the plane in view (30-50 ms for 2048 x 2048); napari reads
    the others' pixels when they come into view."""
    viewer, widget = stack_widget
    go_to(viewer, widget, 1)
    layers = widget.session.layers
    layers.boxes.add_rectangles(on_plane(1))
    widget.ui.area_ratio_spin.setValue(20.0)
    redraws, refresh = [], layers.preview.refresh
    monkeypatch.setattr(layers.preview, "refresh", lambda *a: (redraws.append(1), refresh(*a)))
    monkeypatch.setattr(widget, "update_preview", lambda *a, **k: None)  # the end's own
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    assert sorted(layers.propagated) == [0, 2] and redraws == []
    go_to(viewer, widget, 2)
    np.testing.assert_array_equal(layers.preview._slice.image.raw, layers.propagated[2].labels)


def test_a_commit_reads_the_preview_planes_once(propagated_from_1, monkeypatch):
    """A commit found the planes the preview shows three times (a pass over the whole
    preview each: ~0.1 s for 30 x 2048 x 2048) and counted the ids of each plane twice."""
    from napari_samtune._qt import annotate_actions, label_edits

    _, widget = propagated_from_1
    layers = widget.session.layers
    scans, counted = [], []
    preview_planes = layers.preview_planes
    monkeypatch.setattr(layers, "preview_planes", lambda: scans.append(1) or preview_planes())
    for module in (annotate_actions, label_edits):
        real = module.ids_in
        monkeypatch.setattr(
            module, "ids_in", lambda a, real=real: counted.append(a.shape) or real(a)
        )
    assert widget.commit() == [1]
    assert scans == [1] and counted.count((96, 96)) == 3  # the three planes, once each
    assert not layers.preview.data.any()
    assert widget.session.records[-1]["planes"] == [0, 1, 2]
