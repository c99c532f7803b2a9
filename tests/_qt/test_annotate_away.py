"""An image's work while another image is annotated: a propagation still running through a
stack, and edits made with autosave unticked. Neither is lost when the image is chosen again."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_samtune._qt import annotate_jobs
from napari_samtune.core.synthetic import make_image

WAIT_MS = 30_000


def _propagation_released_plane_by_plane(monkeypatch) -> threading.Semaphore:
    """Propagation 'reaches' planes 1 and 2 (a square each), waiting before each one, and
    before it ends, until the semaphore is released."""
    gate = threading.Semaphore(0)

    def gated(segmenter, axes, data, start_plane, start_mask, config):
        for plane in (1, 2):
            assert gate.acquire(timeout=WAIT_MS / 1000)
            labels = np.zeros(axes.spatial_shape[-2:], np.uint32)
            labels[30 + plane : 50 + plane, 30:50] = 1
            yield annotate_jobs.PlaneResult(plane, labels)
        assert gate.acquire(timeout=WAIT_MS / 1000)
        yield annotate_jobs.PropagationEnd((1, 2))

    monkeypatch.setattr(annotate_jobs, "iter_propagate_object", gated)
    return gate


def _planes_seen(worker) -> list[int]:
    """The planes ``worker`` yields from now on, once the widget has handled each (this
    slot runs after the widget's)."""
    seen: list[int] = []

    def note(item) -> None:
        if isinstance(item, annotate_jobs.PlaneResult):
            seen.append(item.plane)

    worker.yielded.connect(note)
    return seen


@pytest.mark.parametrize("back", ["while it runs", "after it ended"])
def test_a_propagation_through_a_stack_left_for_another_image_is_kept(
    stack_widget, qtbot, drain_jobs, monkeypatch, notifications, back
):
    """Another image chosen while propagation ran through a stack, then the stack again:
    the planes it reached meanwhile were discarded, and so was every plane after."""
    gate = _propagation_released_plane_by_plane(monkeypatch)
    viewer, widget = stack_widget
    viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
    stack = widget.session
    stack.layers.preview.data[0, 40:50, 40:50] = 1  # the object on plane 0
    try:
        seen = _planes_seen(widget.propagate())
        gate.release()
        qtbot.waitUntil(lambda: seen == [1], timeout=WAIT_MS)
        widget.ui.image_combo.setCurrentText("other")
        gate.release()  # plane 2 comes while the other image is chosen
        qtbot.waitUntil(lambda: seen == [1, 2], timeout=WAIT_MS)
        assert stack.layers.preview.data[2].any()
        if back == "while it runs":
            widget.ui.image_combo.setCurrentText("stack")
            assert widget.session is stack  # the run's session goes on
    finally:
        gate.release(2)
    drain_jobs(widget)
    widget.ui.image_combo.setCurrentText("stack")
    drain_jobs(widget)
    assert widget.session.layers.preview_planes() == [0, 1, 2]
    assert sorted(widget.session.layers.propagated) == [1, 2]
    assert not any("discarded" in n for n in notifications)
    assert any("propagated the object from plane 0 through planes 0-2" in n for n in notifications)
    assert widget.commit() == [1]
    assert widget.session.records[-1]["planes"] == [0, 1, 2]
