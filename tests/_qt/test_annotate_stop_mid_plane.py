"""Annotation jobs asked to stop in the middle of a plane end within one batch of points or
one tile: a run through a stack whose viewer closed went on with its plane, and napari
waited for it as it quit (27 s for a 512 px plane with nano and 32 points per side)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from napari_samtune._qt import annotate_jobs
from napari_samtune._qt.annotate_ui import SCOPE_STACK
from napari_samtune._qt.image_planes import ImageAxes
from napari_samtune.core.automatic import AutoSegmentConfig
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

WAIT_MS = 30_000


def _stack(n_planes: int = 2, size: int = 96):
    data = np.stack([make_image((size, size), seed=s)[0] for s in range(n_planes)])
    return ImageAxes(data.shape, rgb=False, channels_first=False), data


def _count_decodes(segmenter, after=None) -> list[int]:
    """Count ``segmenter.decode`` calls; ``after(n)`` runs after the n-th one."""
    calls: list[int] = []
    real = segmenter.decode

    def counted(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(len(calls) + 1)
        if after is not None:
            after(len(calls))
        return result

    segmenter.decode = counted
    return calls


KEEP_ALL = AutoSegmentConfig(
    points_per_side=4, points_per_batch=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
)


def test_automatic_segmentation_stopped_mid_plane_ends_after_the_batch_in_work(tiny_sam):
    axes, data = _stack()
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    stop = threading.Event()
    calls = _count_decodes(segmenter, after=lambda n: stop.set())
    job = annotate_jobs.iter_segment_automatically(
        segmenter, axes, data, [0, 1], KEEP_ALL, print, "stack", stop=stop
    )
    results = []
    with pytest.raises(StopIteration) as ended:
        while True:
            results.append(next(job))
    assert ended.value.value is None  # not "plane 1 embedded": it never was
    assert calls == [1]  # 4 batches per plane without the stop
    assert not any(isinstance(r, annotate_jobs.PlaneResult) for r in results)


def test_without_a_stop_every_batch_of_every_plane_is_decoded(tiny_sam):
    """The counterpart: the decodes counted above are the whole run's, 4 per plane."""
    axes, data = _stack()
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    calls = _count_decodes(segmenter)
    job = annotate_jobs.iter_segment_automatically(
        segmenter, axes, data, [0, 1], KEEP_ALL, print, "stack", stop=threading.Event()
    )
    results = [r for r in job if isinstance(r, annotate_jobs.PlaneResult)]
    assert [r.plane for r in results] == [0, 1]
    assert len(calls) == 2 * 4


def test_embedding_stopped_leaves_the_segmenter_s_image_as_it_was(tiny_sam):
    axes, data = _stack()
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(data[0])
    before = segmenter.features(0).clone()
    stop = threading.Event()
    stop.set()
    for planes in ([1], [1, 0]):  # one plane (its tiles shown), and a run through several
        job = annotate_jobs.iter_embed_planes(
            segmenter, axes, data, planes, print, "stack", stop=stop
        )
        with pytest.raises(StopIteration) as ended:
            while True:
                next(job)
        assert ended.value.value is None
        np.testing.assert_array_equal(segmenter.features(0), before)


@pytest.mark.parametrize("ending", ["close the viewer", "close the panel"])
def test_a_stack_segmented_automatically_stops_within_a_batch_when_napari_closes(
    stack_widget, hold_planes, qtbot, ending
):
    gate = hold_planes()
    viewer, widget = stack_widget
    dock = viewer.window.add_dock_widget(widget)
    widget._auto_defaults = replace(widget._auto_defaults, points_per_batch=4)
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.ui.points_per_side_spin.setValue(4)  # 16 points: 4 batches per plane
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)
    in_plane_1, closed = threading.Event(), threading.Event()
    stack = widget.session
    try:
        worker = widget.segment_automatically()
        qtbot.waitUntil(lambda: stack.annotations[0].any(), timeout=WAIT_MS)

        def hold_first_batch(n: int) -> None:  # the job's thread, on plane 1
            in_plane_1.set()
            assert closed.wait(30)

        calls = _count_decodes(widget.segmenter, after=hold_first_batch)
        gate.open()
        assert in_plane_1.wait(30)
        if ending == "close the viewer":
            viewer.close()
        else:
            dock.destroyOnClose()
    finally:
        closed.set()
        gate.open()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    assert calls == [1]
    assert not stack.annotations[1].any()
