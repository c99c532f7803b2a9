"""Bugs a microscopist annotating z-stacks over a long session ran into, each with the test
that found it."""

from __future__ import annotations

import numpy as np

from napari_samtune._qt.annotate_ui import BATCHED_MODE, SINGLE_MODE


def _preview_of(widget, mode: str) -> np.ndarray:
    widget.ui.mode_combo.setCurrentText(mode)
    assert widget.update_preview()
    return widget.session.layers.preview.data.copy()


def test_batched_mode_uses_negative_points(viewer_widget):
    """Batched mode ignored negative points: a person adding one to keep a neighbour out
    of an object saw nothing change, and was not told. Each object is now prompted with
    every negative point too (as ``samtune segment`` does), all at once (one-object mode
    refines click by click instead)."""
    _viewer, widget = viewer_widget
    points = widget.session.layers.points
    points.add([[30, 30]])
    widget.toggle_polarity()
    points.add([[34, 36]])
    assert list(points.features["label"]) == ["positive", "negative"]
    assert _preview_of(widget, SINGLE_MODE).any()
    at_once = widget.segmenter.predict(
        np.array([[30.0, 30.0], [36.0, 34.0]]), np.array([1, 0]), multimask=False
    ).mask
    np.testing.assert_array_equal(_preview_of(widget, BATCHED_MODE), at_once)
    widget.toggle_polarity()
    points.add([[70, 70]])  # a second object: both keep the negative point out
    batched = _preview_of(widget, BATCHED_MODE)
    assert set(np.unique(batched)) <= {0, 1, 2} and (batched == 2).any()
