"""The preview a commit writes is the one of the latest prompts."""

from __future__ import annotations

import numpy as np

from napari_samtune._qt.annotate_notes import behind_note


def test_a_commit_waits_for_a_preview_behind_its_prompts(
    viewer_widget, tiny_sam, notifications, drain_jobs
):
    """A point added while the embedding was computing left the preview as it was, and a
    commit then wrote that mask, without the point."""
    _, widget = viewer_widget
    layers = widget.session.layers
    layers.points.add([128, 128])
    assert layers.preview.data.any()
    widget.set_model(tiny_sam, "tiny again")  # a new embedding: the preview waits for it
    widget.ui.positive_check.setChecked(False)
    layers.points.add([100, 100])
    assert widget.commit() == []
    assert not widget.session.annotations.any()
    assert "does not show your latest prompts" in notifications[-1]
    drain_jobs(widget)  # the embedding is ready: the preview follows both points
    preview = layers.preview.data > 0
    assert widget.commit() == [1]
    np.testing.assert_array_equal(widget.session.annotations > 0, preview)


def test_the_waiting_note_names_the_planes_to_view():
    assert "view plane 2 until" in behind_note([2])
    assert "planes 1-2, 5" in behind_note([1, 2, 5])
    assert behind_note([None]).endswith("; when it does, commit (C)")
