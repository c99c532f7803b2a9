"""Yet more bugs a person annotating with the widget ran into, each with the test that found
it: work lost or saved out of order around automatic segmentation, saves and loads, keys on
another image's layers, and channels asked of a 2D image; a stack chosen again, or read
another way, while it is segmented automatically."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tifffile
from napari.utils.key_bindings import KeymapHandler

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_ui import SCOPE_STACK

WAIT_MS = 30_000


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


def _saved_objects(folder, name: str) -> list[dict]:
    return json.loads((folder / f"{name}.prompts.json").read_text())["objects"]


@pytest.mark.parametrize("ending", ["close the viewer", "close the panel"])
def test_planes_segmented_before_napari_closes_are_saved(
    stack_widget, hold_planes, qtbot, tmp_path, ending
):
    """Closing the viewer (or the panel) while a stack was segmented automatically lost the
    planes already done: they were saved only when the whole run ended, and the closed
    widget ran nothing any more."""
    gate = hold_planes()
    viewer, widget = stack_widget
    dock = viewer.window.add_dock_widget(widget)
    stack = widget.session
    try:
        worker = _segment_the_stack(widget, qtbot)
        if ending == "close the viewer":
            viewer.close()
        else:
            dock.destroyOnClose()
    finally:
        gate.open()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    qtbot.wait(100)  # the worker's queued signals arrive
    saved = tifffile.imread(tmp_path / "stack.labels.tif")
    assert saved[0].any()
    np.testing.assert_array_equal(saved[0], stack.annotations[0])
    assert [o["planes"] for o in _saved_objects(tmp_path, "stack")] == [[0]]


def test_switching_images_and_back_while_a_stack_is_segmented_keeps_its_records(
    stack_widget, hold_planes, qtbot, drain_jobs, tmp_path
):
    """Back on the stack, its records came from its file, which the run had not saved yet;
    the run saved them when it ended, but the next commit's autosave wrote the records
    without them again. (The run goes on writing into the stack, chosen again or not:
    test_a_stack_left_while_segmented_automatically_gets_every_plane.)"""
    from napari_samtune.core.synthetic import make_image

    gate = hold_planes()
    viewer, widget = stack_widget
    try:
        _segment_the_stack(widget, qtbot)
        viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
        widget.ui.image_combo.setCurrentText("other")
        widget.ui.image_combo.setCurrentText("stack")
    finally:
        gate.open()
    drain_jobs(widget)
    widget.session.layers.preview.data[2, 40:50, 40:50] = 1  # an object committed on plane 2
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        assert widget.commit()
    drain_jobs(widget)
    objects = _saved_objects(tmp_path, "stack")
    assert [(o["source"], o["planes"]) for o in objects] == [
        ("automatic", [0]),
        ("automatic", [1]),
        ("automatic", [2]),
        ("interactive", [2]),
    ]
    saved = tifffile.imread(tmp_path / "stack.labels.tif")
    np.testing.assert_array_equal(saved, widget.session.annotations)
    assert {int(i) for i in np.unique(saved[0])} - {0} == set(objects[0]["ids"])


def test_save_now_is_not_overwritten_by_an_older_autosave_still_running(
    viewer_widget, monkeypatch, tmp_path, drain_jobs
):
    """Autosave unticked while an autosave was writing, one more commit, Save now: the
    older background save ended last and its file replaced the newer one."""
    import napari_samtune._qt.annotate_saves as files

    gate, real_save = threading.Event(), files.save_annotations

    def slow_save(*args):
        assert gate.wait(WAIT_MS / 1000)  # a large stack takes seconds to compress
        return real_save(*args)

    monkeypatch.setattr(files, "save_annotations", slow_save)
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]  # its autosave waits at the gate
    widget.ui.autosave_check.setChecked(False)
    widget.session.layers.points.add([40, 200])
    assert widget.commit() == [2]
    timer = threading.Timer(0.5, gate.set)  # the older save ends after Save now began
    timer.start()
    try:
        assert widget.save_annotations() == tmp_path / "nuclei.labels.tif"
        drain_jobs(widget)
    finally:
        gate.set()
        timer.cancel()
    saved = tifffile.imread(tmp_path / "nuclei.labels.tif")
    np.testing.assert_array_equal(saved, widget.session.annotations)
    assert [o["ids"] for o in _saved_objects(tmp_path, "nuclei")] == [[1], [2]]


def test_annotations_loaded_from_another_file_are_autosaved(
    viewer_widget, qtbot, tmp_path, drain_jobs, make_napari_viewer, nuclei_image
):
    """Loading a label file (e.g. ``samtune segment`` output) left the image's autosave
    as it was until the next edit: closing napari then, the image came back with the
    annotations the file had replaced."""
    _, widget = viewer_widget
    folder = tmp_path / "annotations"
    widget.ui.folder_edit.setText(str(folder))
    widget.session.layers.points.add([128, 128])
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        assert widget.commit() == [1]
    drain_jobs(widget)
    segmented = np.zeros_like(widget.session.annotations)
    segmented[10:30, 10:30], segmented[50:70, 80:90] = 1, 2
    tifffile.imwrite(tmp_path / "nuclei_labels.tif", segmented)
    assert widget.load_annotations(tmp_path / "nuclei_labels.tif") == 2
    drain_jobs(widget)
    np.testing.assert_array_equal(tifffile.imread(folder / "nuclei.labels.tif"), segmented)
    assert _saved_objects(folder, "nuclei") == []  # the replaced object's record went too
    other = make_napari_viewer()  # napari opened again
    other.add_image(nuclei_image[0], name="nuclei")
    reopened = AnnotateWidget(other)
    reopened.ui.folder_edit.setText(str(folder))
    reopened._use_folder()
    np.testing.assert_array_equal(reopened.session.annotations, segmented)


def test_keys_on_the_layers_of_an_image_no_longer_annotated_act_on_nothing(
    cells_viewer, qtbot, tiny_sam, drain_jobs, notifications
):
    """C pressed with the prompt layer of an image annotated earlier selected committed the
    preview of the image annotated now, unsaid."""
    viewer = cells_viewer(2)
    widget = AnnotateWidget(viewer)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    earlier = widget.session.layers.points
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    now = widget.session
    now.layers.preview.data[10:20, 10:20] = 1  # a preview waiting to be committed
    keys = KeymapHandler()
    keys.keymap_providers = [earlier, viewer]  # what napari asks when those points are active
    for key in ("C", "Shift-C", "U", "T"):
        keys.press_key(key)
    assert not now.annotations.any() and now.layers.preview.data.any()
    assert widget.ui.positive_check.isChecked()
    said = [n for n in notifications if f"{earlier.name!r} belongs to image 'cells0'" in n]
    assert said and "pick 'cells0' under Image" in said[0]
    keys.keymap_providers = [now.layers.points, viewer]
    keys.press_key("C")  # on the layers of the image annotated: as before
    assert now.annotations.any()


@pytest.mark.parametrize(
    ("shape", "rgb", "why"),
    [((64, 80), False, "has no channel axis"), ((64, 80, 3), True, "colours on the last axis")],
)
def test_channels_on_the_first_axis_of_a_2d_image_are_refused(
    make_napari_viewer, notifications, shape, rgb, why
):
    """Ticked on a 2D image, 'channels on first axis' offered its 64 rows as channels, and
    the image was no longer annotated."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros(shape, np.uint8), name="flat", rgb=rgb)
    widget = AnnotateWidget(viewer)
    session = widget.session
    widget.ui.channels_first_check.setChecked(True)
    assert not widget.ui.channels_first_check.isChecked()
    assert widget.ui.channel_combo.count() == 0 and not widget.ui.channel_combo.isEnabled()
    assert widget.session is session  # annotated as before
    said = [n for n in notifications if "'channels on first axis'" in n]
    assert said and f"{shape!r}" in said[0] and why in said[0]


def test_ticking_autosave_again_saves_the_commits_made_without_it(
    viewer_widget, tmp_path, drain_jobs
):
    """Commits made with autosave unticked stayed on no disk after it was ticked again,
    until the next commit: closing napari meanwhile lost them."""
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.ui.autosave_check.setChecked(False)
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert not (tmp_path / "nuclei.labels.tif").exists()
    widget.ui.autosave_check.setChecked(True)
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "nuclei.labels.tif")
    np.testing.assert_array_equal(saved, widget.session.annotations)
    assert saved.any()


@pytest.mark.parametrize("back", ["while it runs", "after it ended"])
def test_a_stack_left_while_segmented_automatically_gets_every_plane(
    stack_widget,
    hold_planes,
    qtbot,
    tmp_path,
    notifications,
    planes_seen,
    away_and_back,
    back,
):
    """Another image chosen and then the stack again while automatic segmentation ran
    through it: the planes it segmented after that were discarded as well, saying "the image
    changed while it ran" (it was the same image); then the planes found while the other
    image was chosen were discarded too (propagation kept its planes)."""
    from napari_samtune.core.synthetic import make_image

    gate = hold_planes()
    viewer, widget = stack_widget
    stack = widget.session
    viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
    with away_and_back(widget, gate, back):
        seen = planes_seen(_segment_the_stack(widget, qtbot))
        widget.ui.image_combo.setCurrentText("other")
        gate.release()  # plane 1 comes while the other image is chosen
        qtbot.waitUntil(lambda: seen == [1], timeout=WAIT_MS)
        assert widget.session is not stack and stack.annotations[1].any()  # written away
    assert seen == [1, 2] and all(stack.annotations[plane].any() for plane in range(3))
    saved = tifffile.imread(tmp_path / "stack.labels.tif")
    np.testing.assert_array_equal(saved, stack.annotations)
    records = [(o["source"], o["planes"]) for o in _saved_objects(tmp_path, "stack")]
    assert records == [("automatic", [0]), ("automatic", [1]), ("automatic", [2])]
    assert not any("discarded" in str(n) for n in notifications)
    widget.ui.image_combo.setCurrentText("stack")
    np.testing.assert_array_equal(widget.session.annotations, saved)
    if back == "while it runs":
        assert widget.undo()  # the run is one step, before and after the image went
        assert not stack.annotations.any()


@pytest.mark.parametrize("saving", ["works", "fails"])
def test_a_stack_read_another_way_mid_run_saves_its_planes_once(
    stack_widget, hold_planes, qtbot, drain_jobs, monkeypatch, tmp_path, notifications, saving
):
    """'channels on first axis' ticked while automatic segmentation ran through a stack:
    the planes done were saved twice (on the main thread: twice the wait on a large stack),
    and when saving failed the person was told twice; the planes left were discarded as
    "the image changed", which it had not."""
    from napari_samtune._qt.annotate_session import AnnotationSession

    gate = hold_planes()
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
