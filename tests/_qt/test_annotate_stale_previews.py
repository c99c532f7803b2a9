"""Changing the model, or the image's pixels, while prompts are on screen: what is
committed is segmented by the model now in use from the pixels now shown."""

from __future__ import annotations

import numpy as np
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.synthetic import make_image

WAIT_MS = 30_000


def test_commit_waits_for_the_new_model_to_segment_the_prompts(
    viewer_widget, qtbot, drain_jobs, notifications, tmp_path
):
    """A commit right after another model was set wrote the old model's preview, recorded
    as the new model's work; now it waits (and says so) until the new model has segmented
    the prompts, then commits that."""
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    layers = widget.session.layers
    layers.points.add([128, 128])
    old_preview = layers.preview.data.copy()
    assert old_preview.any()
    torch.manual_seed(5)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(build_sam(TINY), "other", "other-test")
        assert widget.commit() == []
        assert (
            "not committed yet: the preview does not show your latest prompts"
            in (notifications[-1])
        )
        assert not widget.session.annotations.any()
    drain_jobs(widget)
    new_preview = layers.preview.data.copy()
    assert (new_preview != old_preview).any()  # the new model's mask, not the old one's
    assert widget.commit() == [1]
    assert widget.session.records[-1]["model"] == "other"
    assert ((widget.session.annotations > 0) == (new_preview > 0)).all()


def test_commit_waits_for_new_pixels_to_be_segmented(
    viewer_widget, qtbot, drain_jobs, notifications, tmp_path
):
    """The image got new pixels of the same shape (a plugin or the console replaced them):
    a commit before SAM had looked at them wrote the mask found on the old pixels."""
    viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    layers = widget.session.layers
    layers.points.add([128, 128])
    assert layers.preview.data.any()
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        viewer.layers["nuclei"].data = make_image((256, 256), seed=7)[0]
        assert widget.commit() == []
        assert "not committed yet" in notifications[-1]
    drain_jobs(widget)
    assert widget.commit() != []
    assert widget.session.annotations.any()
    assert np.array_equal(widget.session.records[-1]["points"], [[128.0, 128.0]])


def test_a_finished_propagation_is_cleared_when_the_model_changes(
    stack_widget, qtbot, drain_jobs, run_job, notifications
):
    """The planes a propagation filled kept the old model's masks after a model change, and
    a commit wrote them into the 3D object recorded as the new model's work. Now they are
    cleared with a message; a plane corrected with a prompt is segmented again instead."""
    from napari_samtune._qt.annotate_jobs import PROPAGATE_TASK

    viewer, widget = stack_widget
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        viewer.dims.set_current_step(0, 1)
    drain_jobs(widget)
    layers = widget.session.layers
    rows, cols = (20.0, 20.0, 70.0, 70.0), (20.0, 70.0, 70.0, 20.0)
    layers.boxes.add_rectangles(np.array([[1, r, c] for r, c in zip(rows, cols, strict=True)]))
    widget.ui.area_ratio_spin.setValue(20.0)  # random masks: stop only when they vanish
    run_job(widget, widget.propagate, PROPAGATE_TASK)
    assert layers.preview_planes() == [0, 1, 2]
    layers.points.add([2, 45, 45])  # plane 2 corrected: it keeps propagation's prompts
    drain_jobs(widget)
    torch.manual_seed(5)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(build_sam(TINY), "other", "other-test")
    drain_jobs(widget)
    assert "cleared the propagated object on plane 0" in " ".join(notifications)
    assert sorted(layers.propagated) == [2]
    assert not layers.preview.data[0].any()
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        viewer.dims.set_current_step(0, 2)  # the corrected plane, segmented by the new model
    drain_jobs(widget)
    assert widget.commit() == [1]
    assert widget.session.records[-1]["planes"] == [1, 2]
    assert widget.session.records[-1]["model"] == "other"
    assert not widget.session.annotations[0].any()
