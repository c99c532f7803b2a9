"""Another model loaded while previews of the one before wait elsewhere: on an image not
chosen, in the prompts U puts back, or in an embedding or propagation still running."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_samtune.core.architectures import TINY, build_sam
from tests._qt.conftest import WAIT_MS


def _other_model():
    torch.manual_seed(7)
    return build_sam(TINY)


def _prompt_planes_out_of_view(viewer, widget, planes=(1, 2)) -> np.ndarray:
    """A point on each of ``planes`` and a mask as each one's preview, the view left on
    plane 0: the previews of the model loaded now. Returns the mask."""
    layers = widget.session.layers
    mask = np.zeros((96, 96), dtype=np.uint32)
    mask[30:50, 30:50] = 1
    for plane in planes:
        layers.points.add([plane, 40, 40])
        layers.set_preview(plane, mask, redraw=False)
    assert viewer.dims.current_step[0] == 0 and layers.preview_planes() == list(planes)
    return mask


def test_previews_of_an_image_left_while_another_model_loaded_are_not_committed(
    stack_widget, notifications, drain_jobs
):
    """Previews made by the model before, on planes of an image not chosen when another
    model was loaded, were committed when it was chosen again, recorded as the new model's
    objects."""
    viewer, widget = stack_widget
    viewer.add_image(np.zeros((96, 96), dtype=np.float32) + 0.5, name="other image")
    _prompt_planes_out_of_view(viewer, widget)
    widget.ui.image_combo.setCurrentText("other image")
    drain_jobs(widget)
    widget.set_model(_other_model(), "other", "other-test")
    drain_jobs(widget)
    widget.ui.image_combo.setCurrentText("stack")
    assert widget.session.image_layer.name == "stack"
    assert {1, 2} <= widget._previews_behind
    assert widget.commit() == []
    assert not widget.session.annotations.any()
    assert "view planes 1-2 until" in notifications[-1]


def test_previews_left_behind_their_prompts_still_lag_when_their_image_is_chosen_again(
    stack_widget, drain_jobs
):
    """The planes whose preview lagged (a model loaded with the image chosen) lost that
    mark when another image was chosen and this one again: C then wrote them."""
    viewer, widget = stack_widget
    viewer.add_image(np.zeros((96, 96), dtype=np.float32) + 0.5, name="other image")
    _prompt_planes_out_of_view(viewer, widget)
    widget.set_model(_other_model(), "other", "other-test")
    drain_jobs(widget)
    assert {1, 2} <= widget._previews_behind
    widget.ui.image_combo.setCurrentText("other image")
    widget.ui.image_combo.setCurrentText("stack")
    assert {1, 2} <= widget._previews_behind
    assert widget.commit() == [] and not widget.session.annotations.any()


@pytest.mark.parametrize("kept_by", ["commit", "clear"])
def test_previews_that_undo_puts_back_after_a_model_change_lag_their_prompts(
    stack_widget, drain_jobs, kept_by
):
    """U after C (or Shift+C), then another model, then U: the previews of the planes out
    of view came back as the model before made them, and C wrote them as the new model's."""
    viewer, widget = stack_widget
    _prompt_planes_out_of_view(viewer, widget)
    if kept_by == "commit":
        assert widget.commit() == [1]
        committed = widget.session.annotations.copy()
    else:
        widget.clear()
        committed = widget.session.annotations.copy()
    widget.set_model(_other_model(), "other", "other-test")
    drain_jobs(widget)
    assert widget.undo()
    drain_jobs(widget)
    layers = widget.session.layers
    assert len(layers.points.data) == 2  # the prompts are back
    assert {1, 2} <= widget._previews_behind
    assert widget.commit() == []
    written = widget.session.annotations
    assert not written.any() if kept_by == "commit" else np.array_equal(written, committed)


@pytest.mark.parametrize("kept_by", ["commit", "clear"])
def test_previews_that_undo_puts_back_after_new_pixels_lag_their_prompts(
    stack_widget, drain_jobs, kept_by
):
    """As after another model: the previews U put back were made from the pixels before."""
    viewer, widget = stack_widget
    _prompt_planes_out_of_view(viewer, widget)
    if kept_by == "commit":
        assert widget.commit() == [1]
    else:
        widget.clear()
    stack = viewer.layers["stack"]
    stack.data = stack.data[::-1].copy()  # a filter, or the console: same shape
    drain_jobs(widget)
    assert widget.undo()
    drain_jobs(widget)
    assert {1, 2} <= widget._previews_behind
    assert widget.commit() == []


def test_loading_a_model_stops_the_embedding_of_every_plane_with_the_one_before(
    stack_widget, monkeypatch, qtbot, notifications, drain_jobs
):
    """Embed all planes, then another model: the model before embedded every plane left,
    and the new one waited for it (minutes with vit_h on a large stack), unsaid."""
    from napari_samtune._qt import annotate_jobs

    viewer, widget = stack_widget
    gate, calls, real = threading.Semaphore(0), [], annotate_jobs._set_plane

    def gated(segmenter, axes, data, plane, *args, **kwargs):
        calls.append((segmenter, plane))
        assert gate.acquire(timeout=WAIT_MS / 1000)
        return real(segmenter, axes, data, plane, *args, **kwargs)

    monkeypatch.setattr(annotate_jobs, "_set_plane", gated)
    before = widget.segmenter
    assert widget.embed_all_planes() is not None
    qtbot.waitUntil(lambda: len(calls) == 1, timeout=WAIT_MS)
    widget.set_model(_other_model(), "other", "other-test")
    said = "stopped the embedding running with the model before; 'other' embeds the plane in view"
    assert any(said in n for n in notifications)
    gate.release(100)
    drain_jobs(widget)
    assert [plane for segmenter, plane in calls if segmenter is before] == [0]
    assert [plane for segmenter, plane in calls if segmenter is widget.segmenter] == [0]
    assert widget.is_embedded(0)


def test_an_image_s_propagated_planes_are_cleared_when_chosen_after_another_model_loaded(
    stack_widget, notifications, drain_jobs
):
    """Propagated with the model before, the image left, another model loaded, the image
    chosen again: C wrote the old model's propagated planes as the new model's object."""
    from napari_samtune._qt.prompt_layers import PlanePrompts
    from napari_samtune._qt.propagated_planes import PropagatedPlane

    viewer, widget = stack_widget
    viewer.add_image(np.zeros((96, 96), dtype=np.float32) + 0.5, name="other image")
    layers = widget.session.layers
    mask = np.zeros((96, 96), dtype=np.uint32)
    mask[30:50, 30:50] = 1
    stands_for = PlanePrompts(np.array([[40.0, 40.0]]), np.array([True]), np.zeros((0, 4)))
    for plane in (1, 2):  # as a propagation from plane 0 leaves them
        layers.propagated[plane] = PropagatedPlane(mask, stands_for)
        layers.set_preview(plane, mask, redraw=False)
    widget.ui.image_combo.setCurrentText("other image")
    widget.set_model(_other_model(), "other", "other-test")
    drain_jobs(widget)
    widget.ui.image_combo.setCurrentText("stack")
    layers = widget.session.layers
    assert layers.preview_planes() == [] and not layers.propagated
    assert any("cleared the propagated object on planes 1-2" in n for n in notifications)
    assert widget.commit() == [] and not widget.session.annotations.any()


def test_new_pixels_of_another_image_leave_this_image_s_propagated_planes(
    stack_widget, notifications, drain_jobs
):
    """Only another model makes every image's previews stale: new pixels of the image
    chosen meanwhile cleared this one's propagated object too, as "the model or the image
    changed since it was propagated"."""
    from napari_samtune._qt.prompt_layers import PlanePrompts
    from napari_samtune._qt.propagated_planes import PropagatedPlane

    viewer, widget = stack_widget
    other = viewer.add_image(np.zeros((96, 96), dtype=np.float32) + 0.5, name="other image")
    layers = widget.session.layers
    mask = np.zeros((96, 96), dtype=np.uint32)
    mask[30:50, 30:50] = 1
    stands_for = PlanePrompts(np.array([[40.0, 40.0]]), np.array([True]), np.zeros((0, 4)))
    for plane in (1, 2):
        layers.propagated[plane] = PropagatedPlane(mask, stands_for)
        layers.set_preview(plane, mask, redraw=False)
    widget.ui.image_combo.setCurrentText("other image")
    drain_jobs(widget)
    other.data = np.zeros((96, 96), dtype=np.float32) + 0.25  # a filter applied to it
    drain_jobs(widget)
    widget.ui.image_combo.setCurrentText("stack")
    layers = widget.session.layers
    assert layers.preview_planes() == [1, 2] and sorted(layers.propagated) == [1, 2]
    assert not any("cleared the propagated object" in n for n in notifications)
    assert widget.commit() == [1]


def test_an_image_left_with_a_propagated_object_is_named_as_it_is_called_now(
    stack_widget, drain_jobs
):
    from napari_samtune._qt.prompt_layers import PlanePrompts
    from napari_samtune._qt.propagated_planes import PropagatedPlane

    viewer, widget = stack_widget
    viewer.add_image(np.zeros((96, 96), dtype=np.float32) + 0.5, name="other image")
    mask = np.zeros((96, 96), dtype=np.uint32)
    mask[30:50, 30:50] = 1
    stands_for = PlanePrompts(np.array([[40.0, 40.0]]), np.array([True]), np.zeros((0, 4)))
    widget.session.layers.propagated[1] = PropagatedPlane(mask, stands_for)
    widget.session.layers.set_preview(1, mask, redraw=False)
    widget.ui.image_combo.setCurrentText("other image")
    drain_jobs(widget)
    assert widget.held_propagation() == ["stack"]
    viewer.layers["stack"].name = "stack renamed"
    drain_jobs(widget)
    assert widget.held_propagation() == ["stack renamed"]


@pytest.mark.parametrize("chosen", ["the stack", "another image"])
def test_removing_a_stack_stops_the_embedding_of_its_planes(
    stack_widget, monkeypatch, qtbot, notifications, drain_jobs, chosen
):
    """Embed all planes, then the stack removed (chosen or not): the job embedded every
    plane of an image no longer there, while the image chosen next waited for it."""
    from napari_samtune._qt import annotate_jobs

    viewer, widget = stack_widget
    viewer.add_image(np.zeros((96, 96), dtype=np.float32) + 0.5, name="other image")
    widget.ui.image_combo.setCurrentText("stack")
    stack = widget.session.image_layer
    gate, planes, real = threading.Semaphore(0), [], annotate_jobs._set_plane

    def gated(segmenter, axes, data, plane, *args, **kwargs):
        planes.append(plane)
        assert gate.acquire(timeout=WAIT_MS / 1000)
        return real(segmenter, axes, data, plane, *args, **kwargs)

    monkeypatch.setattr(annotate_jobs, "_set_plane", gated)
    assert widget.embed_all_planes() is not None
    qtbot.waitUntil(lambda: len(planes) == 1, timeout=WAIT_MS)
    if chosen == "another image":
        widget.ui.image_combo.setCurrentText("other image")
    viewer.layers.remove(stack)
    assert any(
        "stopped embedding the planes of 'stack': the image was removed" in n for n in notifications
    )
    gate.release(100)
    drain_jobs(widget)
    assert planes == [0, None]  # the stack's first plane, then the other (2D) image
    assert widget.session is not None and widget.session.image_layer.name == "other image"
