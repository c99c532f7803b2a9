"""Bugs a person annotating with the widget ran into, each with the test that found it."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import tifffile

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_jobs import PROPAGATE_TASK
from napari_samtune._qt.annotate_ui import BATCHED_MODE
from napari_samtune.core.synthetic import make_image

WAIT_MS = 30_000


@pytest.fixture
def stack_widget(make_napari_viewer, qtbot, tiny_sam, drain_jobs):
    """A viewer on plane 0 of a (3, 96, 96) stack and the widget with the tiny model."""
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([make_image((96, 96), seed=s)[0] for s in range(3)]), name="stack")
    viewer.dims.set_current_step(0, 0)
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    yield viewer, widget
    drain_jobs(widget)


def _box_on(plane: int) -> np.ndarray:
    rows, cols = (20.0, 20.0, 70.0, 70.0), (20.0, 70.0, 70.0, 20.0)
    return np.array([[plane, row, col] for row, col in zip(rows, cols, strict=True)])


def test_batched_boxes_on_two_planes_commit_as_two_objects(stack_widget, qtbot, drain_jobs):
    """Each plane's first box had preview id 1, and a commit makes one 3D object of an id
    found on several planes: the two boxes became one object on planes 0 and 2."""
    viewer, widget = stack_widget
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    layers = widget.session.layers
    layers.boxes.add_rectangles(_box_on(0))
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        viewer.dims.set_current_step(0, 2)
    drain_jobs(widget)
    layers.boxes.add_rectangles(_box_on(2))
    on_plane = [layers.preview.data[z] > 0 for z in (0, 2)]
    assert all(mask.any() for mask in on_plane)
    assert widget.commit() == [1, 2]
    annotations = widget.session.annotations
    assert [set(np.unique(annotations[z])) - {0} for z in (0, 1, 2)] == [{1}, set(), {2}]
    np.testing.assert_array_equal(annotations[0] == 1, on_plane[0])
    np.testing.assert_array_equal(annotations[2] == 2, on_plane[1])
    assert [record["planes"] for record in widget.session.records] == [[0, 2]]  # one commit
    assert widget.undo() and not annotations.any()


def test_a_commit_next_to_the_largest_uint32_id_takes_a_free_id(viewer_widget, tmp_path):
    """Labels of another tool holding id 2**32 - 1 loaded fine, but the next commit numbered
    its object max + 1, past uint32: OverflowError, and nothing was committed."""
    _, widget = viewer_widget
    labels = np.zeros((256, 256), np.uint32)
    labels[:20, :20] = np.iinfo(np.uint32).max
    labels[:20, 30:50] = 1
    tifffile.imwrite(tmp_path / "other_tool.tif", labels)
    assert widget.load_annotations(tmp_path / "other_tool.tif") == 2
    layers = widget.session.layers
    layers.points.add([128, 128])
    preview = layers.preview.data > 0
    assert widget.commit() == [2]  # the lowest id not in use
    np.testing.assert_array_equal(widget.session.annotations == 2, preview & (labels == 0))
    np.testing.assert_array_equal(widget.session.annotations[labels > 0], labels[labels > 0])
    assert widget.undo()
    np.testing.assert_array_equal(widget.session.annotations, labels)


def test_propagating_again_leaves_no_plane_of_the_run_before(
    stack_widget, qtbot, drain_jobs, run_job, notifications
):
    """A second propagation (after a correction, or with a stricter stop) that reached fewer
    planes left the first one's masks on the others: the commit wrote them into the object,
    on planes the note had just said propagation did not reach."""
    viewer, widget = stack_widget
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        viewer.dims.set_current_step(0, 1)
    drain_jobs(widget)
    layers = widget.session.layers
    layers.boxes.add_rectangles(_box_on(1))
    start = layers.preview.data[1].copy()
    widget.ui.area_ratio_spin.setValue(20.0)  # random masks: stop only when they vanish
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    assert layers.preview_planes() != [1]  # it reached a neighbour
    predict = widget.segmenter.predict  # from now on propagation finds no neighbour

    def nothing_found(**prompt):
        found = predict(**prompt)
        if threading.current_thread() is threading.main_thread():  # the preview
            return found
        return dataclasses.replace(found, mask=np.zeros_like(found.mask))

    widget.segmenter.predict = nothing_found
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    assert notifications[-1].startswith("propagation reached no other plane")
    assert layers.preview_planes() == [1]
    np.testing.assert_array_equal(layers.preview.data[1], start)
    assert widget.commit() == [1]
    assert widget.session.records[-1]["planes"] == [1]


def test_loading_the_wrong_file_can_be_undone(viewer_widget, tmp_path, drain_jobs, notifications):
    """Load annotations… emptied the undo history: a wrong file loaded could not be taken
    back (U: "nothing to undo"), and the next commit's autosave replaced the annotations
    saved before with it."""
    viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    before, records = widget.session.annotations.copy(), list(widget.session.records)
    wrong = np.zeros_like(before)
    wrong[:20, :30], wrong[200:, 200:] = 7, 9
    tifffile.imwrite(tmp_path / "wrong.tif", wrong)
    assert widget.load_annotations(tmp_path / "wrong.tif") == 2
    assert "U brings back what they replaced" in notifications[-1]
    np.testing.assert_array_equal(widget.session.annotations, wrong)
    assert widget.undo()
    np.testing.assert_array_equal(widget.session.annotations, before)
    assert widget.session.records == records  # the commit's record, not the file's (none)
    drain_jobs(widget)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), before)
    assert widget.undo() and not widget.session.annotations.any()  # then the commit


def test_propagating_in_a_one_plane_stack_says_there_is_nowhere_to_go(
    make_napari_viewer, qtbot, tiny_sam, drain_jobs, notifications
):
    """A (1, H, W) stack ran propagation, which said "propagation reached no other plane:
    on planes  the object vanished ..." (no plane named, a stopping rule blamed)."""
    viewer = make_napari_viewer()
    viewer.add_image(make_image((96, 96), seed=0)[0][None], name="one plane")
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    assert widget.session.axes.is_stack
    widget.session.layers.points.add([0, 48, 48])
    drain_jobs(widget)
    assert widget.propagate() is None
    assert "propagation needs a stack of 2 or more planes: this one has 1" in notifications[-1]
    drain_jobs(widget)
