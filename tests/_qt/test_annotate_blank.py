"""A blank image or plane (one value everywhere: a black frame, a flat channel) is named as
such, not met with advice about thresholds or prompts."""

from __future__ import annotations

import numpy as np

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_jobs import AUTO_TASK
from napari_samtune._qt.annotate_ui import SCOPE_STACK

WAIT_MS = 30_000


def test_a_blank_image_is_named_when_embedded_and_segmented(
    make_napari_viewer, qtbot, tiny_sam, drain_jobs, notifications
):
    viewer = make_napari_viewer()
    viewer.add_image(np.full((96, 96), 300, np.uint16), name="flat")
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    said = [n for n in notifications if "is one value everywhere (blank)" in n]
    assert len(said) == 1 and "image 'flat'" in said[0] and "prompts on it give no" in said[0]
    widget.ui.min_area_spin.setValue(0)
    assert widget.segment_automatically() is not None
    drain_jobs(widget)
    errors = [n for n in notifications if n.severity == "error"]
    assert errors and "image 'flat' is one value everywhere (blank)" in errors[-1]
    assert not any("lower 'min predicted IoU'" in n for n in notifications)
    assert not widget.session.annotations.any()


def test_a_blank_plane_of_a_stack_is_skipped_by_automatic_segmentation(
    make_napari_viewer, qtbot, tiny_sam, run_job, notifications, nuclei_image
):
    stack = np.stack([nuclei_image[0], np.zeros_like(nuclei_image[0])])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.ui.points_per_side_spin.setValue(4)
    run_job(widget, widget.segment_automatically, AUTO_TASK)
    skipped = [n for n in notifications if "skipped plane 1" in n]
    assert len(skipped) == 1 and "plane 1/1 of 'stack' is one value everywhere" in skipped[0]
