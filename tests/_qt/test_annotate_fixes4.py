"""Bugs around automatic segmentation of a stack that goes on while the person picks
another image, or reads the stack another way, each with the test that found it."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tifffile

from napari_samtune._qt import annotate_jobs
from napari_samtune._qt.annotate_ui import SCOPE_STACK

WAIT_MS = 30_000


def _one_plane_at_a_time(monkeypatch) -> threading.Semaphore:
    """Automatic segmentation waits after each plane it yields until the semaphore is
    released (once per plane to go on)."""
    gate = threading.Semaphore(0)
    real = annotate_jobs.iter_segment_automatically

    def gated(*args, **kwargs):
        for item in real(*args, **kwargs):
            yield item
            if isinstance(item, annotate_jobs.PlaneResult):
                assert gate.acquire(timeout=WAIT_MS / 1000)

    monkeypatch.setattr(annotate_jobs, "iter_segment_automatically", gated)
    return gate


def _segment_the_stack(widget, qtbot):
    """Start automatic segmentation of every plane; returns once plane 0 is written."""
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)
    stack = widget.session
    worker = widget.segment_automatically()
    assert worker is not None
    qtbot.waitUntil(lambda: stack.annotations[0].any(), timeout=WAIT_MS)
    return worker


def _planes_seen(worker) -> list[int]:
    """The planes ``worker`` yields from now on, once the widget has handled each (this
    slot runs after the widget's)."""
    seen: list[int] = []

    def note(item) -> None:
        if isinstance(item, annotate_jobs.PlaneResult):
            seen.append(item.plane)

    worker.yielded.connect(note)
    return seen


def _saved_objects(folder, name: str) -> list[dict]:
    return json.loads((folder / f"{name}.prompts.json").read_text())["objects"]


def test_a_stack_chosen_again_while_segmented_automatically_gets_the_planes_after(
    stack_widget, qtbot, drain_jobs, monkeypatch, tmp_path, notifications
):
    """Another image chosen and then the stack again while automatic segmentation ran
    through it: the planes it segmented after that were discarded as well, saying "the image
    changed while it ran" (it was the same image)."""
    from napari_samtune.core.synthetic import make_image

    gate = _one_plane_at_a_time(monkeypatch)
    viewer, widget = stack_widget
    stack = widget.session
    viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
    try:
        seen = _planes_seen(_segment_the_stack(widget, qtbot))
        widget.ui.image_combo.setCurrentText("other")
        gate.release()  # plane 1 comes while the other image is chosen
        qtbot.waitUntil(lambda: seen == [1], timeout=WAIT_MS)
        widget.ui.image_combo.setCurrentText("stack")
        assert widget.session is stack  # the run's session goes on
    finally:
        gate.release(2)
    drain_jobs(widget)
    assert stack.annotations[0].any() and stack.annotations[2].any()
    assert not stack.annotations[1].any()
    saved = tifffile.imread(tmp_path / "stack.labels.tif")
    np.testing.assert_array_equal(saved, stack.annotations)
    records = [(o["source"], o["planes"]) for o in _saved_objects(tmp_path, "stack")]
    assert records == [("automatic", [0]), ("automatic", [2])]
    said = [str(n) for n in notifications]
    assert not any("image changed" in n for n in said)
    assert any(
        "results discarded, another image was chosen while it ran (plane 1 of 'stack')" in n
        for n in said
    )
    assert widget.undo()  # the run is one step, before and after the image went
    assert not stack.annotations.any()


@pytest.mark.parametrize("saving", ["works", "fails"])
def test_a_stack_read_another_way_mid_run_saves_its_planes_once(
    stack_widget, qtbot, drain_jobs, monkeypatch, tmp_path, notifications, saving
):
    """'channels on first axis' ticked while automatic segmentation ran through a stack:
    the planes done were saved twice (on the main thread: twice the wait on a large stack),
    and when saving failed the person was told twice; the planes left were discarded as
    "the image changed", which it had not."""
    from napari_samtune._qt.annotate_session import AnnotationSession

    gate = _one_plane_at_a_time(monkeypatch)
    viewer, widget = stack_widget
    stack = widget.session
    saves, real_save = [], AnnotationSession.save

    def counted(session, *args, **kwargs):
        saves.append(session)
        return real_save(session, *args, **kwargs)

    monkeypatch.setattr(AnnotationSession, "save", counted)
    folder = tmp_path if saving == "works" else tmp_path / "a file" / "annotations"
    (tmp_path / "a file").write_text("not a folder")
    try:
        _segment_the_stack(widget, qtbot)
        found = stack.annotations.copy()
        widget.ui.folder_edit.setText(str(folder))
        widget.ui.channels_first_check.setChecked(True)
        assert widget.session is not stack and not widget.session.axes.is_stack
    finally:
        gate.release(3)  # after each plane
    drain_jobs(widget)
    assert saves.count(stack) == 1
    said = [str(n) for n in notifications]
    failed = [n for n in said if "failed" in n]
    kept = [n for n in said if "the objects found on plane 0 of 'stack' are kept and saved" in n]
    if saving == "works":
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "stack.labels.tif"), found)
        assert len(kept) == 1 and not failed
    else:
        assert len(failed) == 1 and not kept
        np.testing.assert_array_equal(viewer.layers["stack annotations (3, 96, 96)"].data, found)
    assert any(
        "results discarded, 'channels on first axis' changed how the image is read while it "
        "ran (planes 1-2 of 'stack')" in n
        for n in said
    )
