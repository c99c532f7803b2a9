"""Bugs a microscopist using the Annotate panel for the first time ran into, each with the
test that found it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

WAIT_MS = 30_000


def _segment_every_plane(widget):
    """Start automatic segmentation of every plane, keeping all a random model finds."""
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.auto_scope_combo.setCurrentText("all planes")
    return widget.segment_automatically()


@pytest.mark.parametrize("picked_again", [True, False])
def test_automatic_planes_found_after_a_prompt_layer_went_are_kept(
    stack_widget, hold_planes, qtbot, drain_jobs, tmp_path, notifications, picked_again
):
    """The stack's points layer deleted while every plane was segmented automatically: the
    planes found after it were discarded, though they go into the annotations layer, which
    stayed. Now they are written there, and saved, whether the stack is picked again while
    the run goes on (its points layer comes back) or not."""
    gate = hold_planes()
    viewer, widget = stack_widget
    annotations = widget.session.layers.annotations
    try:
        assert _segment_every_plane(widget) is not None
        qtbot.waitUntil(lambda: annotations.data[0].any(), timeout=WAIT_MS)
        viewer.layers.remove("stack points")
        qtbot.wait(10)
        if picked_again:
            widget.ui.image_combo.activated.emit(0)  # the person picks 'stack' under Image
            assert widget.session is not None and "stack points" in viewer.layers
    finally:
        gate.open()
    drain_jobs(widget)
    assert not [n for n in notifications if "discarded" in n]
    assert all(annotations.data[z].any() for z in range(3))
    saved = tifffile.imread(tmp_path / "stack.labels.tif")
    np.testing.assert_array_equal(saved, annotations.data)
    if picked_again:  # the run is one step of the stack's undo
        assert widget.session.layers.annotations is annotations
        assert widget.undo() and not annotations.data.any()


def test_automatic_segmentation_of_a_stack_goes_on_past_a_plane_without_pixels(
    make_napari_viewer, tiny_sam, qtbot, drain_jobs, notifications, tmp_path
):
    """A stack with an all-NaN plane (a registration's padding) segmented automatically:
    the run stopped there with "failed", and the planes after it were never segmented. It
    now skips that plane, saying so, and segments the others."""
    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune.core.synthetic import make_image

    viewer = make_napari_viewer()
    padded = np.stack([make_image((96, 96), seed=s)[0] for s in range(3)]).astype(np.float32)
    padded[1] = np.nan
    viewer.add_image(padded, name="padded")
    viewer.dims.set_current_step(0, 0)
    widget = AnnotateWidget(viewer)
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    assert _segment_every_plane(widget) is not None
    drain_jobs(widget)
    annotations = widget.session.annotations
    assert [bool(annotations[z].any()) for z in range(3)] == [True, False, True]
    assert not [n for n in notifications if "failed" in n]
    (skipped,) = [n for n in notifications if "skipped" in n]
    assert skipped.severity == "warning"
    assert "plane 1 of 'padded'" in skipped and "holds no finite pixel value" in skipped
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "padded.labels.tif"), annotations)


def test_embed_all_planes_goes_on_past_planes_without_pixels(
    make_napari_viewer, tiny_sam, drain_jobs, notifications, monkeypatch
):
    """ "Embed all planes" of a stack with all-NaN planes (padding) stopped at the first one
    with "embedding failed", leaving the planes after it unembedded. It now embeds the
    others and names the skipped planes once."""
    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune.core.synthetic import make_image

    viewer = make_napari_viewer()
    padded = np.stack([make_image((64, 64), seed=s)[0] for s in range(5)]).astype(np.float32)
    padded[[1, 4]] = np.nan
    viewer.add_image(padded, name="padded")
    widget = AnnotateWidget(viewer)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    embedded = []
    set_image = widget.segmenter.set_image

    def recording(image, **kwargs):
        set_image(image, **kwargs)
        embedded.append(next(z for z in range(5) if np.array_equal(padded[z], image)))

    monkeypatch.setattr(widget.segmenter, "set_image", recording)
    assert widget.embed_all_planes() is not None
    drain_jobs(widget)
    assert embedded[:3] == [0, 2, 3]  # then the plane in view, from the cache
    assert not [n for n in notifications if "failed" in n]
    (skipped,) = [n for n in notifications if "skipped" in n]
    assert skipped.severity == "warning" and "embedding skipped planes 1, 4 of 'padded'" in skipped
