"""The annotation widget when its panel or the viewer goes while it works."""

from __future__ import annotations

import threading

from napari_samtune._qt import annotate_jobs

WAIT_MS = 30_000


def test_closing_the_viewer_while_an_embedding_runs_raises_nothing(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, monkeypatch
):
    """pytest-qt fails the test on any exception raised in Qt's event loop."""
    from napari_samtune._qt.annotate import AnnotateWidget

    gate, started = threading.Event(), threading.Event()
    real = annotate_jobs.iter_embed_planes

    def gated(*args, **kwargs):
        started.set()
        assert gate.wait(30)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(annotate_jobs, "iter_embed_planes", gated)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    viewer.add_image(nuclei_image[0][::-1].copy(), name="other")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    assert widget.segmenter_busy() and started.wait(30)
    worker = widget.runner.worker(annotate_jobs.EMBED_TASK)
    viewer.close()
    gate.set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    qtbot.wait(200)  # the worker's queued signals arrive
    assert not widget.runner.is_running()
