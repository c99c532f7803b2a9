"""Opened from the Plugins menu, the widget gets proxies of the viewer's layers, whose private
names warn: every commit and undo printed napari's FutureWarning about _reset_history (and
the Ctrl+Z fix it guards would have gone once napari drops the name for proxies)."""

from __future__ import annotations

import warnings

import numpy as np

from napari_samtune.core.synthetic import make_image
from tests._qt.plugin_viewer import as_plugin_sees_it


def test_commits_and_undo_through_napari_s_proxies_print_no_warning(
    make_napari_viewer, qtbot, tiny_sam, drain_jobs
):
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    viewer.add_image(make_image((96, 112), seed=4)[0], name="cells")
    widget = AnnotateWidget(as_plugin_sees_it(viewer))
    with qtbot.waitSignal(widget.embedding_ready, timeout=30_000):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    annotations = viewer.layers["cells annotations"]
    annotations.paint((10, 10), 9)  # a brush stroke in napari's history
    assert annotations._undo_history
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        widget.session.layers.points.add((48.0, 56.0))
        widget.update_preview()
        assert widget.commit() == [10]
        widget.undo()
    private = [str(w.message) for w in caught if "Private attribute access" in str(w.message)]
    assert private == []
    assert not annotations._undo_history  # the history was still reset
    assert np.count_nonzero(annotations.data == 9) > 0
