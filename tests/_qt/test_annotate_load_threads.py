"""Load model does its slow work in the worker: on a CPU with bf16 instructions, the first
Segmenter of a process timed bf16 against fp32 products (0.1-0.2 s) on the viewer's thread."""

from __future__ import annotations

import threading

from napari_samtune.core import accelerate
from napari_samtune.core.synthetic import make_image
from tests._qt.conftest import WAIT_MS


def test_the_bf16_speed_test_of_the_first_load_runs_in_the_worker(
    make_napari_viewer, qtbot, monkeypatch, drain_jobs
):
    from napari_samtune._qt.annotate import AnnotateWidget

    measured_on = []  # the thread of the (cached) first measurement

    def bf16_speedup() -> float:
        if not measured_on:
            measured_on.append(threading.current_thread())
        return 1.0  # bf16 no faster: fp32 everywhere, as on a CPU without bf16

    # a CPU with the flags, as on AVX-512 BF16 and AMX machines (elsewhere nothing is timed)
    monkeypatch.setattr(accelerate, "_has_bf16_instructions", lambda: True)
    monkeypatch.setattr(accelerate, "bf16_speedup", bf16_speedup)
    viewer = make_napari_viewer()
    viewer.add_image(make_image((128, 128), seed=1)[0], name="img")
    widget = AnnotateWidget(viewer)
    widget.select_model("nano")
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.load_model()
    drain_jobs(widget)
    assert widget.segmenter.compute_dtype is None  # the measurement was used
    assert measured_on and measured_on[0] is not threading.main_thread()
