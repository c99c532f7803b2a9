"""Edits in the annotation widget that interleave: brush strokes after a commit, commits
while automatic segmentation runs in the background, and undo of either."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_samtune._qt import annotate_jobs

WAIT_S = 30


@pytest.fixture
def gated_automatic(monkeypatch):
    """Automatic segmentation that starts working only once the test opens the gate."""
    gate = threading.Event()
    real = annotate_jobs.iter_segment_automatically

    def gated(*args, **kwargs):
        assert gate.wait(WAIT_S)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(annotate_jobs, "iter_segment_automatically", gated)
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


def test_a_commit_while_automatic_segmentation_runs_undoes_on_its_own(
    viewer_widget, drain_jobs, gated_automatic
):
    _, widget = viewer_widget
    keep_every_automatic_object(widget)
    widget.session.layers.points.add([128, 128])  # previewed before the job holds the model
    assert widget.segment_automatically() is not None
    assert widget.commit() == [1]
    committed = widget.session.annotations == 1
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
