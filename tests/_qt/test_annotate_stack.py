"""The annotation widget on stacks (first axis = plane) with the tiny random SAM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_jobs import AUTO_TASK, EMBED_TASK, PROPAGATE_TASK
from napari_samtune._qt.annotate_notes import (
    commit_note,
    plane_ranges,
    planes_phrase,
    propagation_note,
)
from napari_samtune._qt.annotate_ui import BATCHED_MODE, SCOPE_STACK
from napari_samtune.core.synthetic import make_image

N_PLANES = 4

WAIT_MS = 30_000


@pytest.fixture
def stack():
    """(4, 96, 96) uint8: four different synthetic nuclei images as planes."""
    return np.stack([make_image((96, 96), seed=seed)[0] for seed in range(N_PLANES)])


@pytest.fixture
def stack_widget(make_napari_viewer, qtbot, tiny_sam, stack, monkeypatch, drain_jobs):
    """Viewer on plane 0 of the stack, widget with the tiny model; records ``set_image`` calls."""
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 0)
    widget = AnnotateWidget(viewer)
    widget.set_image_calls = []
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
        set_image = widget.segmenter.set_image

        def recording_set_image(image, **kwargs):
            widget.set_image_calls.append(np.array(image))
            return set_image(image, **kwargs)

        monkeypatch.setattr(widget.segmenter, "set_image", recording_set_image)
    drain_jobs(widget)
    yield viewer, widget
    drain_jobs(widget)


@pytest.fixture
def go_to_plane(qtbot, drain_jobs):
    """``go_to_plane(viewer, widget, plane)``: move the view and wait for that embedding."""

    def go(viewer, widget, plane: int) -> None:
        with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS) as ready:
            viewer.dims.set_current_step(0, plane)
        assert ready.args == [plane]
        drain_jobs(widget)

    return go


def test_the_plane_in_view_is_embedded(stack_widget, qtbot, stack, go_to_plane):
    viewer, widget = stack_widget
    assert widget.session.annotations.shape == stack.shape
    assert widget.embedded_plane == 0
    go_to_plane(viewer, widget, 2)
    assert widget.current_plane == 2 and widget.embedded_plane == 2
    np.testing.assert_array_equal(widget.set_image_calls[-1], stack[2])
    go_to_plane(viewer, widget, 1)
    np.testing.assert_array_equal(widget.set_image_calls[-1], stack[1])


def test_prompts_and_commits_stay_on_their_plane(stack_widget, qtbot, go_to_plane):
    viewer, widget = stack_widget
    go_to_plane(viewer, widget, 1)
    layers = widget.session.layers
    layers.points.add([1, 48, 48])  # (plane, row, col)
    assert layers.preview.data[1].any()
    assert not layers.preview.data[[0, 2, 3]].any()
    preview = layers.preview.data[1] > 0
    assert widget.commit() == [1]
    annotations = widget.session.annotations
    np.testing.assert_array_equal(annotations[1] == 1, preview)
    assert not annotations[[0, 2, 3]].any()
    assert widget.session.records[0]["planes"] == [1]


def test_a_commit_off_the_plane_in_view_or_with_gaps_says_so(
    stack_widget, qtbot, go_to_plane, notifications
):
    """Prompts on planes 0 and 2 committed as one object on planes 0 and 2 without a word,
    and a preview left on another plane was committed from the plane in view unnoticed."""
    viewer, widget = stack_widget
    layers = widget.session.layers
    layers.points.add([0, 48, 48])
    go_to_plane(viewer, widget, 2)
    layers.points.add([2, 48, 48])
    qtbot.waitUntil(lambda: layers.preview.data[2].any(), timeout=WAIT_MS)
    assert widget.commit() == [1]
    assert widget.session.records[0]["planes"] == [0, 2]
    assert notifications[-1] == (
        "committed one object on planes 0, 2, with planes between them left empty: prompts "
        "on separate planes make one object until committed; commit (C) after each object "
        "to keep objects apart (U undoes this)"
    )
    layers.points.add([2, 30, 30])
    go_to_plane(viewer, widget, 3)
    assert widget.commit() == [2]
    assert notifications[-1] == "committed the preview on plane 2, not on the plane in view (3)"
    layers.points.add([3, 48, 48])
    count = len(notifications)
    assert widget.commit() == [3]  # on the plane in view: nothing to add
    assert len(notifications) == count


def test_batched_objects_on_different_planes_commit_as_different_objects(stack_widget, go_to_plane):
    viewer, widget = stack_widget
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    layers = widget.session.layers
    layers.points.add([[0, 30, 30], [0, 60, 60]])
    go_to_plane(viewer, widget, 2)
    layers.points.add([2, 48, 48])
    ids = {plane: set(np.unique(layers.preview.data[plane]).tolist()) - {0} for plane in (0, 2)}
    assert ids[0] and ids[2] and not ids[0] & ids[2]
    assert min(ids[2]) > max(ids[0])  # above the other planes' (kept, not read: preview_tops)
    committed = widget.commit()
    annotations = widget.session.annotations
    on_plane = [set(np.unique(annotations[plane]).tolist()) - {0} for plane in (0, 2)]
    assert len(committed) == len(ids[0]) + len(ids[2])
    assert on_plane[0] and on_plane[1] and not on_plane[0] & on_plane[1]


def test_commit_notes_name_runs_of_planes():
    assert plane_ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert planes_phrase([4]) == "plane 4" and planes_phrase([4, 5, 9]) == "planes 4-5, 9"
    assert commit_note([4, 5, 6], 5, one_object=True) == ""  # propagated through plane 5
    assert commit_note([None], None, one_object=True) == ""  # 2D
    assert commit_note([1, 3], 1, one_object=False) == ""  # batched: one object per prompt
    assert commit_note([1, 3], 0, one_object=False).endswith(
        "planes 1, 3, not on the plane in view (0)"
    )


def test_a_point_on_another_plane_waits_for_that_embedding(stack_widget, qtbot):
    viewer, widget = stack_widget
    layers = widget.session.layers
    layers.points.add([0, 48, 48])
    on_plane_0 = layers.preview.data[0].copy()
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        viewer.dims.set_current_step(0, 3)
        layers.points.add([3, 48, 48])  # not embedded yet: the preview follows when it is
    qtbot.waitUntil(lambda: layers.preview.data[3].any(), timeout=WAIT_MS)
    np.testing.assert_array_equal(layers.preview.data[0], on_plane_0)  # untouched


def test_embed_all_planes_caches_every_plane(
    stack_widget, qtbot, stack, run_job, go_to_plane, monkeypatch
):
    viewer, widget = stack_widget
    widget.set_image_calls.clear()
    prepared = []  # how many images were set when the decoder tokens were projected
    prepare = widget.segmenter.prepare_prompts
    monkeypatch.setattr(
        widget.segmenter,
        "prepare_prompts",
        lambda: prepared.append(len(widget.set_image_calls)) or prepare(),
    )
    run_job(widget, widget.embed_all_planes, EMBED_TASK)
    assert len(widget.set_image_calls) >= N_PLANES  # (then plane 0, in view, again)
    assert prepared[0] == N_PLANES  # once, for the last plane, not for each one
    for plane in range(N_PLANES):
        np.testing.assert_array_equal(widget.set_image_calls[plane], stack[plane])
    cache_files = list(widget.segmenter.cache.directory.rglob("*"))
    assert len([f for f in cache_files if f.is_file()]) >= N_PLANES
    qtbot.waitUntil(lambda: widget.is_embedded(0), timeout=WAIT_MS)  # back to the view
    go_to_plane(viewer, widget, 2)  # served from the disk cache


def test_u_after_a_commit_of_a_propagated_object_that_wrote_nothing_keeps_the_prompts(
    stack_widget, qtbot, run_job, go_to_plane, notifications, drain_jobs
):
    """A commit of the propagated object alone that wrote nothing (existing objects cover
    it, overwrite unticked) still let the next U take the prompts on the layers for what a
    U had put back: it replaced them with the commit before's."""
    viewer, widget = stack_widget
    layers = widget.session.layers
    go_to_plane(viewer, widget, 3)
    layers.points.add([3, 50.0, 50.0])
    layers.preview.data[:] = 0
    layers.preview.data[3] = 1
    assert widget.commit() == [1]
    widget.session.annotations[:] = 1  # object 1 now covers everything (as if brushed)
    go_to_plane(viewer, widget, 2)
    layers.points.add([2, 80.0, 15.0])  # another object's prompt, not committed
    layers = _propagate_a_box_from_plane_1(viewer, widget, run_job, go_to_plane)
    points, n_boxes = np.array(layers.points.data), len(layers.boxes.data)
    widget.ui.overwrite_check.setChecked(False)
    assert widget.commit() == []
    assert widget.undo()
    drain_jobs(widget)
    np.testing.assert_array_equal(np.array(layers.points.data), points)
    assert len(layers.boxes.data) == n_boxes


def test_the_propagation_note_says_where_it_went_and_why_it_stopped():
    rule = "the object vanished or its area changed more than 2× from the plane before"
    assert propagation_note(4, [5, 3, 6, 2], 9, 2.0, 50) == (
        f"propagated the object from plane 4 through planes 2-6; it stopped at planes 1 and 7, "
        f"where {rule}; check them, then commit (C) to write the 3D object"
    )
    assert propagation_note(0, [1, 2], 4, 2.0, 50) == (
        f"propagated the object from plane 0 through planes 0-2; it stopped at plane 3, where "
        f"{rule}; check them, then commit (C) to write the 3D object"
    )
    done = "; check them, then commit (C) to write the 3D object"
    assert propagation_note(0, [1, 2, 3], 4, 2.0, 50).endswith("planes 0-3" + done)  # the end
    assert propagation_note(5, [3, 4, 6, 7], 20, 2.0, 2).endswith("planes 3-7" + done)  # limit
    assert propagation_note(1, [], 4, 2.5, 50) == (
        "propagation reached no other plane: on planes 0 and 2 the object vanished or its area "
        "changed more than 2.5× from the plane before; raise 'stop at area change ×' or prompt "
        "the object there yourself"
    )
    assert propagation_note(0, [], 4, 2.0, 50).startswith(
        "propagation reached no other plane: on plane 1 the"
    )
    held = "another object's prompts, left as"
    assert propagation_note(4, [5, 3], 9, 2.0, 50, (2,)) == (
        f"propagated the object from plane 4 through planes 3-5; it stopped at plane 6, where "
        f"{rule}; plane 2 holds {held} it was: commit or clear them to propagate through"
        + done
        + " (alone: the other object's prompts stay for a commit of their own)"
    )
    assert propagation_note(1, [], 4, 2.0, 50, (0, 2)) == (
        f"propagation reached no other plane: planes 0, 2 hold {held} they were: commit or "
        "clear them to propagate through"
    )


def test_job_progress_numbers_planes_as_napari_slider_does_and_names_the_image():
    """The slider shows a plane's index from 0 and the last index; progress said 1-based.
    Progress names the image's layer, for a stack's planes as for a 2D image, which was
    just "image" (another image may be chosen while an automatic run goes on)."""
    from napari_samtune._qt.annotate_jobs import iter_embed_planes, iter_propagate_object
    from napari_samtune._qt.image_planes import describe_image
    from napari_samtune._qt.propagate import PropagationConfig

    class Segmenter:  # answers every prompt with the same object
        def set_image(self, image, progress=None, **kwargs):
            progress(1, 1)

        def prepare_prompts(self):
            pass

        def predict(self, points_xy, point_labels, box_xyxy):
            return SimpleNamespace(mask=object_mask)

    object_mask = np.zeros((8, 8), bool)
    object_mask[2:6, 2:6] = True
    axes, data, reported = describe_image((3, 8, 8)), np.zeros((3, 8, 8)), []
    job = iter_embed_planes(Segmenter(), axes, data, [1, 2], print, image_name="stack")
    messages = [p.message for p in job]
    assert messages == ["embedding plane 1/2 of 'stack'", "embedding plane 2/2 of 'stack'"]
    list(iter_embed_planes(Segmenter(), axes, data, [0], reported.append, image_name="stack"))
    assert [p.message for p in reported] == ["embedding plane 0/2 of 'stack': tile 1/1"]
    reported.clear()  # a 2D image is named by its layer (another may be chosen meanwhile)
    flat = describe_image((8, 8))
    list(iter_embed_planes(Segmenter(), flat, data[0], [None], reported.append, "cells"))
    assert [p.message for p in reported] == ["embedding image 'cells': tile 1/1"]
    job = iter_propagate_object(Segmenter(), axes, data, 0, object_mask, PropagationConfig())
    messages = [getattr(step, "message", None) for step in job]
    assert messages[::2] == [
        "propagated to plane 1 (1 reached)",
        "propagated to plane 2 (2 reached)",
        None,
    ]


def _propagate_a_box_from_plane_1(viewer, widget, run_job, go_to_plane):
    """Segment a box on plane 1 and propagate it; returns the widget's layers."""
    go_to_plane(viewer, widget, 1)
    layers = widget.session.layers
    corners = [[1, 20.0, 20.0], [1, 20.0, 70.0], [1, 70.0, 70.0], [1, 70.0, 20.0]]
    layers.boxes.add_rectangles(np.array(corners))  # on plane 1
    assert layers.preview.data[1].any()
    widget.ui.area_ratio_spin.setValue(20.0)  # random masks: stop only when they vanish
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    return layers


def test_propagation_fills_neighbouring_planes_and_commits_one_3d_object(
    stack_widget, qtbot, run_job, go_to_plane, notifications
):
    viewer, widget = stack_widget
    layers = _propagate_a_box_from_plane_1(viewer, widget, run_job, go_to_plane)
    reached = layers.preview_planes()
    assert 1 in reached and len(reached) > 1
    assert reached == list(range(min(reached), max(reached) + 1))  # contiguous around plane 1
    notes = [str(n.message) for n in notifications if "propagat" in str(n.message)]
    assert notes[-1].startswith(
        f"propagated the object from plane 1 through planes {plane_ranges(reached)}"
    )
    assert widget.commit() == [1]
    annotations = widget.session.annotations
    for plane in reached:
        assert (annotations[plane] == 1).any()
    assert widget.session.records[0]["planes"] == reached


def test_propagation_keeps_out_of_a_plane_with_another_objects_prompts(
    stack_widget, qtbot, run_job, go_to_plane, notifications
):
    """It used to go through it: that plane's preview was replaced and its prompts were taken
    for corrections of the propagated object."""
    viewer, widget = stack_widget
    go_to_plane(viewer, widget, 2)
    layers = widget.session.layers
    layers.points.add([2, 80.0, 15.0])  # another object, not committed
    own = layers.preview.data[2].copy()
    assert own.any()
    layers = _propagate_a_box_from_plane_1(viewer, widget, run_job, go_to_plane)
    assert 2 not in layers.propagated and 0 in layers.propagated
    np.testing.assert_array_equal(layers.preview.data[2], own)
    notes = [str(n.message) for n in notifications if "propagat" in str(n.message)]
    assert "plane 2 holds another object's prompts, left as it was" in notes[-1]
    assert notes[-1].startswith("propagated the object from plane 1 through planes 0-1")
    go_to_plane(viewer, widget, 2)
    np.testing.assert_array_equal(layers.preview.data[2], own)  # its own prompts alone


def test_commit_after_a_propagation_kept_out_of_a_plane_writes_the_two_objects_apart(
    stack_widget, qtbot, run_job, go_to_plane, notifications
):
    """The note said plane 2 "holds another object's prompts" and to commit them; C then
    wrote them into the propagated object: one id over both objects, unsaid."""
    viewer, widget = stack_widget
    go_to_plane(viewer, widget, 2)
    layers = widget.session.layers
    layers.points.add([2, 80.0, 15.0])  # another object, not committed
    other = layers.preview.data[2].copy()
    layers = _propagate_a_box_from_plane_1(viewer, widget, run_job, go_to_plane)
    reached = [plane for plane in layers.preview_planes() if plane != 2]
    note = [n for n in notifications if n.startswith("propagated the object")][-1]
    assert note.endswith("(alone: the other object's prompts stay for a commit of their own)")
    before = layers.preview_planes(), len(layers.boxes.data)
    assert widget.commit() == [1]
    assert widget.undo()  # the object's box and planes come back, beside the other's prompts
    assert (layers.preview_planes(), len(layers.boxes.data)) == before
    assert widget.commit() == [1]
    annotations = widget.session.annotations
    assert all((annotations[plane] == 1).any() for plane in reached)
    assert not annotations[2].any()  # the other object: not written into it
    record = widget.session.records[-1]
    assert record["planes"] == reached and not record["points"]  # its box alone
    np.testing.assert_array_equal(layers.preview.data[2], other)  # still there, as are
    assert [p[0] for p in layers.points.data] == [2.0]  # its prompts
    assert layers.preview_planes() == [2] and not layers.propagated
    assert any(
        "committed the propagated object alone: plane 2 holds another object's prompts, left "
        "for a commit of its own (C again)" in n
        for n in notifications
    )
    go_to_plane(viewer, widget, 2)
    assert widget.commit() == [2]
    np.testing.assert_array_equal(annotations[2] == 2, other > 0)
    assert widget.undo() and not (annotations == 2).any()
    assert widget.undo() and not annotations.any()


def test_a_corrected_propagated_plane_is_propagated_through_again(
    stack_widget, qtbot, run_job, go_to_plane, notifications
):
    viewer, widget = stack_widget
    layers = _propagate_a_box_from_plane_1(viewer, widget, run_job, go_to_plane)
    assert 2 in layers.propagated
    go_to_plane(viewer, widget, 2)
    widget.toggle_polarity()
    row, col = np.argwhere(layers.preview.data[2] > 0)[0]
    layers.points.add([2, row, col])  # a correction of the propagated object
    go_to_plane(viewer, widget, 1)
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    assert 2 in layers.propagated
    notes = [str(n.message) for n in notifications if "propagat" in str(n.message)]
    assert "another object" not in notes[-1]


def test_propagation_needs_a_stack_and_an_object(stack_widget, notifications):
    _, widget = stack_widget
    assert widget.propagate() is None  # empty preview
    assert any("exactly one object" in str(n.message) for n in notifications)


def test_automatic_segmentation_of_the_whole_stack(stack_widget, qtbot, run_job):
    _, widget = stack_widget
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.iou_spin.setValue(0.0)
    widget.ui.stability_spin.setValue(0.0)
    run_job(widget, widget.segment_automatically, AUTO_TASK)
    annotations = widget.session.annotations
    per_plane = [set(np.unique(plane)) - {0} for plane in annotations]
    assert all(per_plane)
    for first, second in zip(per_plane, per_plane[1:], strict=False):
        assert not first & second  # every plane's objects got their own ids
    assert widget.undo()  # the whole run is one undo step
    assert not widget.session.annotations.any()


@pytest.mark.parametrize("picked_again", [False, True])
def test_a_negative_click_on_a_propagated_plane_refines_its_mask(
    stack_widget, qtbot, run_job, go_to_plane, drain_jobs, picked_again
):
    """It used to empty that plane: the click was its only prompt, and not a positive one.
    Picked again after another image, the stack still did: its propagation was forgotten."""
    viewer, widget = stack_widget
    layers = _propagate_a_box_from_plane_1(viewer, widget, run_job, go_to_plane)
    plane = next(p for p in layers.preview_planes() if p != 1)
    propagated = layers.preview.data[plane].copy()
    if picked_again:
        viewer.add_image(np.zeros((64, 64), np.uint8), name="other")
        for name in ("other", "stack"):
            widget.ui.image_combo.setCurrentText(name)
            drain_jobs(widget)
        layers = widget.session.layers
    calls = []
    predict = widget.segmenter.predict
    widget.segmenter.predict = lambda **prompt: calls.append(prompt) or predict(**prompt)
    go_to_plane(viewer, widget, plane)  # viewed to be checked, it was segmented again
    assert calls == []
    np.testing.assert_array_equal(layers.preview.data[plane], propagated)
    widget.toggle_polarity()  # negative points from now on
    row, col = np.argwhere(propagated > 0)[0]
    layers.points.add([plane, row, col])
    assert layers.preview.data[plane].any()
    prompt = calls[-1]  # the clicks one by one, each refining the mask before it
    assert list(prompt["point_labels"]) == [1, 0]  # the propagated object's point, the click
    assert prompt["box_xyxy"] is not None and prompt["mask_input"] is not None  # and its box
    n_calls = len(calls)
    layers.points.data = layers.points.data[:-1]  # the click taken back: propagation's mask
    assert len(calls) == n_calls
    np.testing.assert_array_equal(layers.preview.data[plane], propagated)
    layers.points.add([plane, row, col])
    assert widget.commit() == [1]  # still one 3D object


def test_a_plane_without_a_finite_pixel_is_told_and_the_others_still_embed(
    make_napari_viewer, qtbot, tiny_sam, stack, drain_jobs, notifications, go_to_plane
):
    """An all-NaN plane (a registration's padding, say) was embedded as black and
    segmented; now its embedding fails with a message naming the plane, not a traceback."""
    viewer = make_napari_viewer()
    padded = stack.astype(np.float32)
    padded[1] = np.nan
    viewer.add_image(padded, name="padded")
    viewer.dims.set_current_step(0, 0)
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    with qtbot.waitSignal(
        widget.runner.task_finished, check_params_cb=lambda name: name == EMBED_TASK
    ):
        viewer.dims.set_current_step(0, 1)
    drain_jobs(widget)
    errors = [n for n in notifications if n.severity == "error"]
    assert len(errors) == 1 and errors[0].startswith(f"{EMBED_TASK} failed: plane 1/3 ")
    assert "holds no finite pixel value (all NaN or infinite)" in errors[0]
    assert "Traceback" not in errors[0] and widget.embedded_plane is False  # none held
    go_to_plane(viewer, widget, 2)
    assert widget.embedded_plane == 2


def test_embedding_all_planes_moves_the_bar_within_each_plane(tiny_sam, tmp_path):
    """Through several planes the bar moved only from plane to plane: a large model's
    plane of many tiles (minutes on a CPU) showed no progress meanwhile."""
    from napari_samtune._qt.annotate_jobs import iter_embed_planes
    from napari_samtune._qt.image_planes import describe_image
    from napari_samtune.core.predict import Segmenter
    from napari_samtune.core.synthetic import make_image

    data = np.stack([make_image((300, 300), seed=s)[0] for s in range(3)])  # 4 tiles each
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    reports = []
    job = iter_embed_planes(segmenter, describe_image(data.shape), data, [0, 1, 2], reports.append)
    for _ in job:
        pass
    tiles = [(r.done, r.total) for r in reports]
    assert tiles == [(plane * 4 + tile, 12) for plane in range(3) for tile in range(1, 5)]
    assert reports[5].message.endswith(": tile 2/4") and "plane 1" in reports[5].message


def test_a_line_of_pixels_is_refused_with_what_a_plane_needs():
    """A (1, 64) image was refused as having "no 2D planes to segment", nothing more."""
    from napari_samtune._qt.image_planes import describe_image

    with pytest.raises(ValueError, match="at least 2 rows and 2 columns"):
        describe_image((1, 64))
