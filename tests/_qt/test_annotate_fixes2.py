"""More bugs a person annotating with the widget ran into, each with the test that found it."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_samtune._qt.annotate_ui import SCOPE_STACK
from napari_samtune.core.synthetic import make_image

WAIT_MS = 30_000


def test_a_folder_chosen_after_failed_autosaves_gets_the_annotations(
    viewer_widget, tmp_path, drain_jobs, notifications
):
    """An autosave that failed (the folder cannot be written) said 'choose another folder',
    but choosing one saved nothing there: the commits stayed on no disk until the next one,
    and closing napari meanwhile lost them."""
    _, widget = viewer_widget
    (tmp_path / "a file").write_text("not a folder")
    widget.ui.folder_edit.setText(str(tmp_path / "a file" / "annotations"))
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert any("saving annotations failed" in n and n.severity == "error" for n in notifications)
    folder = tmp_path / "writable"
    widget.ui.folder_edit.setText(str(folder))
    widget.ui.folder_edit.setModified(True)  # typed, then Return
    widget.ui.folder_edit.editingFinished.emit()
    drain_jobs(widget)
    saved = folder / "nuclei.labels.tif"
    assert saved.is_file()
    np.testing.assert_array_equal(tifffile.imread(saved), widget.session.annotations)
    assert any(f"saved annotations to {saved}" in n for n in notifications)


def test_planes_segmented_automatically_before_another_image_was_chosen_are_saved(
    stack_widget, hold_planes, qtbot, drain_jobs, tmp_path, notifications
):
    """Automatic segmentation of the whole stack wrote its first planes into the stack's
    annotations, then another image was chosen: its autosave at the end saved the other
    image, so those planes were on no disk (closing napari lost them), and the note said
    the results were discarded."""
    gate = hold_planes()
    viewer, widget = stack_widget
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_STACK)
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)
    stack = widget.session
    try:
        assert widget.segment_automatically() is not None
        qtbot.waitUntil(lambda: stack.annotations[0].any(), timeout=WAIT_MS)
        viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
        widget.ui.image_combo.setCurrentText("other")
        assert widget.session is not stack
    finally:
        gate.open()
    drain_jobs(widget)
    assert all(stack.annotations[plane].any() for plane in range(3))  # none dropped away
    saved = tmp_path / "stack.labels.tif"
    assert saved.is_file()
    np.testing.assert_array_equal(tifffile.imread(saved), stack.annotations)
    assert any(f"plane 0 of 'stack' are kept and saved to {saved}" in n for n in notifications)


def test_an_image_without_a_finite_pixel_is_told_by_its_layer_name(
    make_napari_viewer, qtbot, tiny_sam, drain_jobs, notifications
):
    """A 2D all-NaN image's embedding failed with "image holds no finite pixel value", which
    did not say which of the open images it was (a stack's says which plane)."""
    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune._qt.annotate_jobs import EMBED_TASK

    viewer = make_napari_viewer()
    viewer.add_image(np.full((64, 64), np.nan, np.float32), name="failed export")
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(
        widget.runner.task_finished,
        check_params_cb=lambda name: name == EMBED_TASK,
        timeout=WAIT_MS,
    ):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    errors = [n for n in notifications if n.severity == "error"]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"{EMBED_TASK} failed: image layer 'failed export' holds no finite pixel value"
    ), errors[0]
    assert widget.embedded_plane is False


def test_a_failed_automatic_segmentation_writes_no_files(
    make_napari_viewer, qtbot, tiny_sam, drain_jobs, notifications, tmp_path
):
    """Automatic segmentation of an all-NaN image failed, and its end still autosaved the
    image's empty labels and prompts: files of a run that wrote nothing."""
    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune._qt.annotate_jobs import AUTO_TASK

    viewer = make_napari_viewer()
    viewer.add_image(np.full((64, 64), np.nan, np.float32), name="failed export")
    widget = AnnotateWidget(viewer)
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    with qtbot.waitSignal(
        widget.runner.task_finished,
        check_params_cb=lambda name: name == AUTO_TASK,
        timeout=WAIT_MS,
    ):
        assert widget.segment_automatically() is not None
    drain_jobs(widget)
    errors = [n for n in notifications if n.severity == "error"]
    assert errors[-1].startswith(f"{AUTO_TASK} failed: image layer 'failed export' holds no")
    assert list(tmp_path.iterdir()) == []
