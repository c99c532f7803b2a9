"""Edits in the annotation widget that interleave: brush strokes after a commit, commits
while automatic segmentation runs in the background, and undo of either."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_samtune._qt import annotate_jobs

WAIT_S = 30


def gate_job(monkeypatch, name: str) -> threading.Event:
    """Make the job ``annotate_jobs.<name>`` start working only once the event is set."""
    gate = threading.Event()
    real = getattr(annotate_jobs, name)

    def gated(*args, **kwargs):
        assert gate.wait(WAIT_S)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(annotate_jobs, name, gated)
    return gate


@pytest.fixture
def gated_automatic(monkeypatch):
    """Automatic segmentation that starts working only once the test opens the gate."""
    gate = gate_job(monkeypatch, "iter_segment_automatically")
    yield gate
    gate.set()  # a failed test leaves no worker waiting


def keep_every_automatic_object(widget) -> None:
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)


def test_undo_leaves_brush_strokes_made_after_the_commit(viewer_widget, drain_jobs):
    _, widget = viewer_widget
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    committed = widget.session.annotations == 1
    layer = widget.session.layers.annotations
    layer.brush_size = 5
    row, col = np.argwhere(~committed)[-1]  # far from the object
    layer.paint((row, col), 5)
    inside = np.argwhere(committed)[len(np.argwhere(committed)) // 2]
    layer.paint(tuple(inside), 6)  # a correction painted over the object
    painted = widget.session.annotations.copy()
    assert (painted == 5).any() and (painted == 6).any()
    assert widget.undo()
    drain_jobs(widget)
    after = widget.session.annotations
    np.testing.assert_array_equal(after[painted == 5], 5)
    np.testing.assert_array_equal(after[painted == 6], 6)
    assert not (after == 1).any()  # the commit itself is undone
    assert widget.session.records == []


def test_an_object_deleted_by_hand_keeps_its_id_from_the_next_commit(viewer_widget, drain_jobs):
    """Its id went to the next object, and the saved record of the deleted object's prompt
    then described the new one."""
    _, widget = viewer_widget
    session = widget.session
    shape = session.annotations.shape
    squares = [np.zeros(shape, np.uint32) for _ in range(3)]
    for k, square in enumerate(squares):
        square[10 + 60 * k : 50 + 60 * k, 10:50] = 1
    assert session.add_labels({None: squares[0]}, False, "test", "m") == [1]
    assert session.add_labels({None: squares[1]}, False, "test", "m") == [2]
    session.layers.annotations.fill((80, 20), 0)  # the bucket, with 0: object 2 deleted
    assert not (session.annotations == 2).any()
    assert session.add_labels({None: squares[2]}, False, "test", "m") == [3]
    assert [record["ids"] for record in session.records] == [[1], [2], [3]]
    np.testing.assert_array_equal(session.annotations == 3, squares[2] == 1)


@pytest.mark.parametrize("odd", [{"ids": None}, {"ids": 5}, "x", None, {"ids": ["7", True, 4]}])
def test_records_of_other_shapes_do_not_stop_commits(viewer_widget, drain_jobs, odd):
    """A prompts file edited by hand (or by another tool) made every later commit raise."""
    _, widget = viewer_widget
    session = widget.session
    session.records = [odd]
    square = np.zeros(session.annotations.shape, np.uint32)
    square[10:30, 10:30] = 1
    expected = 5 if isinstance(odd, dict) and odd["ids"] == ["7", True, 4] else 1
    assert session.add_labels({None: square}, False, "test", "m") == [expected]


def test_undo_of_an_overwrite_leaves_an_object_relabelled_by_hand_whole(viewer_widget, drain_jobs):
    """Undoing a write over half of an object relabelled by hand since put that half back
    under its old id: one object with two ids, saved so."""
    _, widget = viewer_widget
    session = widget.session
    shape = session.annotations.shape
    first, second = np.zeros(shape, np.uint32), np.zeros(shape, np.uint32)
    first[10:50, 10:50] = 1
    second[30:70, 10:50] = 1  # the lower half of the first, and below it
    assert session.add_labels({None: first}, False, "test", "m") == [1]
    assert session.add_labels({None: second}, True, "test", "m") == [2]
    session.layers.annotations.fill((15, 15), 7)  # the rest of object 1, relabelled
    assert widget.undo()
    drain_jobs(widget)
    after = session.annotations
    assert (after[10:30, 10:50] == 7).all() and (after[30:50, 10:50] == 0).all()
    assert set(np.unique(after)) == {0, 7}


def test_a_commit_while_automatic_segmentation_runs_undoes_on_its_own(
    viewer_widget, drain_jobs, gated_automatic, notifications
):
    _, widget = viewer_widget
    keep_every_automatic_object(widget)
    # a small object: the random model's automatic one, found where it lies, is then kept
    widget.session.layers.preview.data[5:15, 5:15] = 1
    assert widget.segment_automatically() is not None
    assert widget.commit() == [1]
    committed = widget.session.annotations == 1
    assert not widget.undo()  # not while the job runs: it says so
    assert any("wait for the automatic segmentation" in str(n) for n in notifications)
    gated_automatic.set()
    drain_jobs(widget)
    assert [r["source"] for r in widget.session.records] == ["interactive", "automatic"]
    automatic = widget.session.annotations > 1
    assert automatic.any()
    assert widget.undo()  # the automatic result finished last: it goes first
    np.testing.assert_array_equal(widget.session.annotations > 0, committed)
    assert [r["source"] for r in widget.session.records] == ["interactive"]
    assert widget.undo()
    assert not widget.session.annotations.any() and widget.session.records == []


def test_automatic_results_survive_a_change_of_model(
    viewer_widget, drain_jobs, gated_automatic, tiny_sam
):
    """E.g. a finished training run switching the widget to its model: the objects found
    are still objects of this image, recorded with the model that found them."""
    _, widget = viewer_widget
    keep_every_automatic_object(widget)
    assert widget.segment_automatically() is not None
    widget.set_model(tiny_sam, "newer", "newer-id")
    gated_automatic.set()
    drain_jobs(widget)
    assert widget.session.annotations.any()
    assert [(r["source"], r["model"]) for r in widget.session.records] == [("automatic", "tiny")]
    assert widget.is_embedded(None) and widget.segmenter.model_id == "newer-id"


def test_propagation_results_of_a_replaced_model_are_dropped_with_a_message(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, notifications, monkeypatch
):
    from napari_samtune._qt.annotate import AnnotateWidget

    gate = gate_job(monkeypatch, "iter_propagate_object")
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([nuclei_image[0]] * 3), name="stack")
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_S * 1000):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    plane = widget.current_plane
    widget.session.layers.points.add([plane, 128, 128])
    shown = widget.session.layers.preview.data.copy()
    assert shown[plane].any()
    try:
        assert widget.propagate() is not None
        widget.set_model(tiny_sam, "newer", "newer-id")
    finally:
        gate.set()
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.layers.preview.data, shown)  # none shown
    messages = [str(n.message) for n in notifications]
    # stopped (it ran to its last plane first, the new model's previews waiting for it)
    assert any("stopped the propagation running with the model before" in m for m in messages)


def test_back_on_an_image_its_object_records_are_kept(
    viewer_widget, drain_jobs, nuclei_image, tmp_path
):
    """Its annotations layer stayed in the viewer; the records saved with it come back, so
    the next autosave does not drop them."""
    viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    viewer.add_image(nuclei_image[0][::-1].copy(), name="other")
    widget.ui.image_combo.setCurrentText("other")
    drain_jobs(widget)
    widget.ui.image_combo.setCurrentText("nuclei")
    drain_jobs(widget)
    assert [r["ids"] for r in widget.session.records] == [[1]]
    widget.session.layers.points.add([40, 200])
    assert widget.commit() == [2]
    drain_jobs(widget)
    saved = json.loads((tmp_path / "nuclei.prompts.json").read_text())
    assert [r["ids"] for r in saved["objects"]] == [[1], [2]]


def test_an_existing_uint8_annotations_layer_takes_more_than_255_objects(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, notifications
):
    """The person's uint8 layer becomes uint32 (the 256th object would not fit), which
    was not said: they are told now."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    mine = np.zeros((256, 256), np.uint8)
    mine[:5, :5] = 255
    viewer.add_labels(mine, name="nuclei annotations")
    widget = AnnotateWidget(viewer)
    widget.ui.folder_edit.setText(str(tmp_path))
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_S * 1000):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    layer = viewer.layers["nuclei annotations"]
    assert layer.data.dtype == np.uint32 and (layer.data[:5, :5] == 255).all()
    assert any(
        "layer 'nuclei annotations' held uint8 ids: the Annotate panel goes on with it as uint32"
        in notice
        for notice in notifications
    ), notifications
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [256]
    drain_jobs(widget)
    assert (layer.data == 256).any()


def test_a_renamed_image_stays_chosen_under_its_new_name(viewer_widget, nuclei_image):
    viewer, widget = viewer_widget
    viewer.add_image(nuclei_image[0][::-1].copy(), name="other")
    session = widget.session
    viewer.layers["nuclei"].name = "renamed"
    combo = widget.ui.image_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["renamed", "other"]
    assert combo.currentText() == "renamed" and widget.session is session
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    viewer.layers["other"].name = "second"  # added after the widget: watched as well
    assert [combo.itemText(i) for i in range(combo.count())] == ["renamed", "second"]
    combo.setCurrentText("second")
    assert widget.session.image_layer.name == "second"


def test_loading_annotations_waits_for_a_running_automatic_segmentation(
    viewer_widget, drain_jobs, gated_automatic, notifications, tmp_path
):
    """Loading replaced the annotations while automatic segmentation still wrote planes into
    them: the file came back mixed with the run's objects. Like undo, it now waits."""
    import tifffile

    _, widget = viewer_widget
    saved = np.zeros(widget.session.annotations.shape, np.uint32)
    saved[10:30, 10:30] = 7
    path = tmp_path / "other.tif"
    tifffile.imwrite(path, saved)
    keep_every_automatic_object(widget)
    assert widget.segment_automatically() is not None
    assert widget.load_annotations(path) is None
    assert "wait for the automatic segmentation to finish" in str(notifications[-1])
    gated_automatic.set()
    drain_jobs(widget)
    assert widget.session.annotations.any() and not (widget.session.annotations == 7).any()
    assert widget.load_annotations(path) == 1
    np.testing.assert_array_equal(widget.session.annotations, saved)
