"""The Annotate widget's background jobs at awkward moments: new pixels during an automatic
run, Stop with prompts clicked during an embedding, Cancel of a model load, a stack run
stopped before its first plane, and the status line when one of two jobs ends."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_jobs import EMBED_TASK, LOAD_TASK
from napari_samtune._qt.annotate_ui import SCOPE_STACK
from napari_samtune.core import view_predictor
from napari_samtune.core.synthetic import make_image

WAIT_MS = 60_000


@pytest.fixture
def gated_embedding(monkeypatch):
    """``(gate, entered)``: the image encoder waits for ``gate`` (a slow encoder);
    ``entered`` is set once it waits. The gate opens at teardown."""
    real, gate, entered = view_predictor.embed_tiles, threading.Event(), threading.Event()

    def slow(*args, **kwargs):
        entered.set()
        assert gate.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(view_predictor, "embed_tiles", slow)
    yield gate, entered
    gate.set()


def _widget(viewer, tmp_path) -> AnnotateWidget:
    widget = AnnotateWidget(viewer)
    widget.ui.folder_edit.setText(str(tmp_path))
    viewer.window.add_dock_widget(widget)
    return widget


def _stack_with_nano(qtbot, make_napari_viewer, tmp_path, n_planes: int):
    viewer = make_napari_viewer()
    stack = np.stack([make_image((192, 192), seed=seed)[0] for seed in range(n_planes)])
    layer = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 0)
    widget = _widget(viewer, tmp_path)
    widget.select_model("nano")
    widget.load_model()
    qtbot.waitUntil(lambda: widget.segmenter is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    return viewer, layer, widget


def _stack_run_changed_after_plane_0(qtbot, make_napari_viewer, hold_planes, tmp_path, change):
    """Automatic segmentation of a 3-plane stack, held after plane 0 for ``change(viewer,
    image layer)``, then run to its end; the widget and the session it ran on."""
    gate = hold_planes()
    viewer, layer, widget = _stack_with_nano(qtbot, make_napari_viewer, tmp_path, 3)
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    session = widget.session
    widget.segment_automatically()
    qtbot.waitUntil(lambda: session.annotations[0].any(), timeout=WAIT_MS)
    change(viewer, layer)
    gate.open()
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    return widget, session


def test_objects_found_in_pixels_replaced_meanwhile_are_not_written(
    qtbot, make_napari_viewer, hold_planes, tmp_path, notifications
):
    """The run went on writing the objects of the old pixels onto the planes of the new."""

    def replace_pixels(viewer, layer):
        layer.data = np.zeros_like(layer.data)  # another acquisition, a filter...

    widget, session = _stack_run_changed_after_plane_0(
        qtbot, make_napari_viewer, hold_planes, tmp_path, replace_pixels
    )
    assert widget.session is session
    assert not session.annotations[1:].any()
    assert any("the image got new pixels while it ran" in n for n in notifications)


@pytest.mark.parametrize("stop_after_the_thread_ended", [False, True])
def test_a_prompt_clicked_during_an_embedding_that_is_stopped_is_answered(
    qtbot,
    make_napari_viewer,
    sensitive_sam,
    gated_embedding,
    tmp_path,
    notifications,
    stop_after_the_thread_ended,
):
    """Stop during the embedding (or just as its thread ended) left the prompt unanswered,
    and C said it waited, for nothing that was coming."""
    gate, entered = gated_embedding
    viewer = make_napari_viewer()
    image, labels = make_image((128, 128), seed=0)
    viewer.add_image(image, name="A")
    widget = _widget(viewer, tmp_path)
    widget.set_model(sensitive_sam, "tiny", "tiny-sensitive")
    assert entered.wait(10)
    rows, cols = np.nonzero(labels == 1)
    widget.session.layers.points.add([int(np.median(rows)), int(np.median(cols))])
    if stop_after_the_thread_ended:
        gate.set()
        widget.runner._ended[EMBED_TASK].wait()  # its signals not handled yet
        widget.ui.stop_button.click()
    else:
        widget.ui.stop_button.click()
        gate.set()
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    if not stop_after_the_thread_ended:  # the embedding was cut short: C starts it again
        assert widget.commit() == []
        assert "their embedding was stopped" in notifications[-1]
        qtbot.waitUntil(lambda: widget.is_embedded(None), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    assert widget.session.layers.preview.data.any()
    assert widget.commit() == [1]


def test_a_cancelled_model_load_says_the_model_in_use_stays(
    qtbot, make_napari_viewer, tiny_sam, tmp_path
):
    """The label kept saying "loading nano…": a quit worker's result never arrives."""
    viewer = make_napari_viewer()
    viewer.add_image(make_image((128, 128), seed=0)[0], name="A")
    widget = _widget(viewer, tmp_path)
    widget.set_model(tiny_sam, "tiny", "tiny")
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    widget.select_model("nano")
    widget.load_model()
    widget.ui.cancel_load_button.click()
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    assert widget.ui.model_label.text() == "tiny on cpu (nano: cancelled)"
    assert widget.model_name == "tiny"


def test_a_stack_run_stopped_before_its_first_plane_says_nothing_was_added(
    qtbot, make_napari_viewer, hold_planes, tmp_path, notifications
):
    """It said "the objects found are kept (U undoes them all)", and U then undid the
    person's earlier commit."""
    _, _, widget = _stack_with_nano(qtbot, make_napari_viewer, tmp_path, 3)
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.segment_automatically()
    widget.ui.stop_button.click()
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    ended = [n for n in notifications if "ended after" in n]
    assert len(ended) == 1 and ended[0].endswith("; nothing was added"), ended
    assert not widget.session.annotations.any()


def test_the_status_line_names_the_job_still_running_when_another_ends(
    qtbot, make_napari_viewer, tiny_sam, gated_embedding, tmp_path
):
    """ "loading model…" stayed on the status line after the load, while an embedding ran."""
    gate, entered = gated_embedding
    viewer = make_napari_viewer()
    viewer.add_image(make_image((128, 128), seed=0)[0], name="A")
    widget = _widget(viewer, tmp_path)
    widget.set_model(tiny_sam, "tiny", "tiny")
    assert entered.wait(10)  # embedding with the tiny model, held
    widget.select_model("nano")
    widget.load_model()
    # the load's end, not only its result: the worker emits "finished" after "returned",
    # and under load the status line was read in between
    qtbot.waitUntil(lambda: not widget.runner.is_running(LOAD_TASK), timeout=WAIT_MS)
    assert widget.model_name == "nano" and widget.runner.is_running(EMBED_TASK)
    assert widget.ui.status_label.text() == f"{EMBED_TASK}…"
    gate.set()
    qtbot.waitUntil(lambda: not widget.runner.is_running(), timeout=WAIT_MS)


def test_a_stack_run_ended_away_from_its_session_does_not_offer_u(
    qtbot, make_napari_viewer, hold_planes, tmp_path, notifications
):
    """Its annotations layer removed after the first plane, the run ended with "the objects
    found are kept (U undoes them all)", and U then had nothing to undo: the session the
    objects were written in was no longer the one annotated."""
    _stack_run_changed_after_plane_0(
        qtbot, make_napari_viewer, hold_planes, tmp_path,
        lambda viewer, _: viewer.layers.remove("stack annotations"),
    )  # fmt: skip
    ended = [n for n in notifications if "ended after 1 of 3 planes" in n]
    assert len(ended) == 1 and ended[0].endswith("; the objects found are kept"), ended
