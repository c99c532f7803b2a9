"""An image's work while another image is annotated: a propagation still running through a
stack, and edits made with autosave unticked. Neither is lost when the image is chosen again."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tifffile

from napari_samtune._qt import annotate_jobs
from napari_samtune.core.synthetic import make_image

WAIT_MS = 30_000


def _propagation_released_plane_by_plane(monkeypatch) -> threading.Semaphore:
    """Propagation 'reaches' planes 1 and 2 (a square each), waiting before each one, and
    before it ends, until the semaphore is released."""
    gate = threading.Semaphore(0)

    def gated(
        segmenter, axes, data, start_plane, start_mask, config, keep_out, image_name="", stop=None
    ):
        for plane in (1, 2):
            assert gate.acquire(timeout=WAIT_MS / 1000)
            labels = np.zeros(axes.spatial_shape[-2:], np.uint32)
            labels[30 + plane : 50 + plane, 30:50] = 1
            yield annotate_jobs.PlaneResult(plane, labels)
        assert gate.acquire(timeout=WAIT_MS / 1000)
        yield annotate_jobs.PropagationEnd((1, 2))

    monkeypatch.setattr(annotate_jobs, "iter_propagate_object", gated)
    return gate


@pytest.mark.parametrize("back", ["while it runs", "after it ended"])
def test_a_propagation_through_a_stack_left_for_another_image_is_kept(
    stack_widget, qtbot, drain_jobs, monkeypatch, notifications, planes_seen, away_and_back, back
):
    """Another image chosen while propagation ran through a stack, then the stack again:
    the planes it reached meanwhile were discarded, and so was every plane after."""
    gate = _propagation_released_plane_by_plane(monkeypatch)
    viewer, widget = stack_widget
    viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
    stack = widget.session
    stack.layers.preview.data[0, 40:50, 40:50] = 1  # the object on plane 0
    with away_and_back(widget, gate, back):
        seen = planes_seen(widget.propagate())
        gate.release()
        qtbot.waitUntil(lambda: seen == [1], timeout=WAIT_MS)
        widget.ui.image_combo.setCurrentText("other")
        gate.release()  # plane 2 comes while the other image is chosen
        qtbot.waitUntil(lambda: seen == [1, 2], timeout=WAIT_MS)
        assert stack.layers.preview.data[2].any()
    widget.ui.image_combo.setCurrentText("stack")
    drain_jobs(widget)
    assert widget.session.layers.preview_planes() == [0, 1, 2]
    assert sorted(widget.session.layers.propagated) == [1, 2]
    assert not any("discarded" in n for n in notifications)
    assert any("propagated the object from plane 0 through planes 0-2" in n for n in notifications)
    assert widget.commit() == [1]
    assert widget.session.records[-1]["planes"] == [0, 1, 2]


@pytest.fixture
def two_images(cells_viewer, qtbot, tiny_sam, drain_jobs, tmp_path):
    """A viewer with "cells0" (annotated, one object committed and autosaved to
    ``tmp_path``) and "cells1", the docked widget with autosave unticked since."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = cells_viewer(2)
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    widget.session.layers.points.add([32, 32])
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        assert widget.commit() == [1]
    drain_jobs(widget)
    widget.ui.autosave_check.setChecked(False)
    return viewer, widget


def _edit_without_autosave(widget, qtbot) -> None:
    """Commit object 2 and paint object 7 with the brush on the image annotated now."""
    widget.session.layers.preview.data[5:15, 45:60] = 1
    assert widget.commit() == [2]
    layer = widget.session.layers.annotations
    layer.brush_size = 5
    layer.paint((50, 10), 7)
    qtbot.wait(10)  # the stroke's autosave request comes once the event loop turns


def test_edits_made_with_autosave_unticked_are_kept_while_another_image_is_annotated(
    two_images, qtbot, drain_jobs
):
    """With autosave unticked, cells0 edited, cells1 chosen, then cells0 again: the
    commit's record and its undo were gone (the records came back from the older file),
    and ticking autosave then saved nothing."""
    viewer, widget = two_images
    cells0 = widget.session
    _edit_without_autosave(widget, qtbot)
    edited = cells0.annotations.copy()
    for name in ("cells1", "cells0"):
        widget.ui.image_combo.setCurrentText(name)
        drain_jobs(widget)
    assert widget.session is cells0
    np.testing.assert_array_equal(widget.session.annotations, edited)
    assert [record["ids"] for record in widget.session.records] == [[1], [2]]
    assert widget.undo()  # object 2's commit
    assert not (widget.session.annotations == 2).any()
    assert (widget.session.annotations == 7).any()


def test_ticking_autosave_saves_the_edits_of_an_image_no_longer_annotated(
    two_images, qtbot, drain_jobs, tmp_path
):
    """Autosave ticked again while another image was chosen: the edits made to the first
    without it were never saved."""
    viewer, widget = two_images
    _edit_without_autosave(widget, qtbot)
    edited = widget.session.annotations.copy()
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    viewer.layers["cells0 annotations"].paint((10, 10), 8)  # corrected while cells1 is chosen
    qtbot.wait(10)
    edited[viewer.layers["cells0 annotations"].data == 8] = 8
    widget.ui.autosave_check.setChecked(True)
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    np.testing.assert_array_equal(saved, edited)
    records = json.loads((tmp_path / "cells0.prompts.json").read_text())["objects"]
    assert [record["ids"] for record in records] == [[1], [2]]


def test_closing_napari_with_edits_made_with_autosave_unticked_says_so(
    two_images, qtbot, notifications
):
    """Closing napari after editing with autosave unticked lost the edits unsaid."""
    viewer, widget = two_images
    _edit_without_autosave(widget, qtbot)
    widget.ui.image_combo.setCurrentText("cells1")
    viewer.close()
    said = [n for n in notifications if "not saved" in n and "'cells0'" in n]
    assert len(said) == 1 and said[0].severity == "warning"
    assert "'cells1'" not in said[0]  # not edited


def test_unsaved_edits_are_kept_when_a_prompt_layer_of_their_image_was_removed(
    two_images, qtbot, drain_jobs
):
    """The image's points layer removed while another image was chosen: its session cannot
    go on, but the new one keeps the records and undo of the edits made without autosave."""
    viewer, widget = two_images
    _edit_without_autosave(widget, qtbot)
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    viewer.layers.remove("cells0 points")
    widget.ui.image_combo.setCurrentText("cells0")
    drain_jobs(widget)
    assert [record["ids"] for record in widget.session.records] == [[1], [2]]
    assert widget.undo()
    assert not (widget.session.annotations == 2).any()


@pytest.mark.parametrize("answer", ["Cancel", "Save", "Discard"])
def test_a_person_closing_napari_with_unsaved_edits_is_asked_to_save_them(
    two_images, qtbot, monkeypatch, close_blocker, tmp_path, answer
):
    """The window closed at once, with only a warning in it: the edits were lost."""
    from qtpy.QtWidgets import QMessageBox

    viewer, widget = two_images
    window = viewer.window._qt_window
    closes = close_blocker(window)  # the widget's filter, installed by the edit, comes first
    before = tifffile.imread(tmp_path / "cells0.labels.tif")
    _edit_without_autosave(widget, qtbot)
    edited = viewer.layers["cells0 annotations"].data.copy()
    asked = []
    button = getattr(QMessageBox.StandardButton, answer)
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(args[2]) or button)
    window.close(quit_app=False, confirm_need=False)  # napari's menu, a person's close
    assert len(asked) == 1 and "'cells0'" in asked[0]
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    np.testing.assert_array_equal(saved, edited if answer == "Save" else before)
    assert closes.count == (0 if answer == "Cancel" else 1)  # Cancel: napari stays open
    if answer == "Cancel":  # asked again at the next close, still unsaved
        window.close(quit_app=False, confirm_need=False)
        assert len(asked) == 2
    else:  # the window stayed open after all (the blocker, as napari's own question's
        qtbot.wait(20)  # Cancel): Discarded edits are still unsaved, and asked of again
        window.close(quit_app=False, confirm_need=False)
        assert len(asked) == (2 if answer == "Discard" else 1)


def test_an_autosaved_image_chosen_again_keeps_its_undo(two_images, qtbot, drain_jobs, tmp_path):
    """With autosave ticked, cells0 committed, cells1 chosen, then cells0 again: U said
    "nothing to undo" (a new session read the records back from the file, without the
    undo), as the README promised undo across images only with autosave unticked."""
    import tifffile

    viewer, widget = two_images
    widget.ui.autosave_check.setChecked(True)
    cells0 = widget.session
    widget.session.layers.preview.data[5:15, 45:60] = 1
    assert widget.commit() == [2]
    drain_jobs(widget)
    for name in ("cells1", "cells0"):
        widget.ui.image_combo.setCurrentText(name)
        drain_jobs(widget)
    assert widget.session is cells0
    assert [record["ids"] for record in widget.session.records] == [[1], [2]]
    assert widget.undo()  # object 2's commit, and the save of that
    drain_jobs(widget)
    assert not (widget.session.annotations == 2).any()
    assert not (tifffile.imread(tmp_path / "cells0.labels.tif") == 2).any()
    assert widget.undo() and not widget.session.annotations.any()  # then object 1's


def test_an_autosaved_image_with_new_pixels_meanwhile_starts_afresh(two_images, qtbot, drain_jobs):
    """Its pixels replaced while another image was chosen: not the session that annotated
    the old ones (its fingerprint names other pixels), but a new one, as for new pixels."""
    from napari_samtune.core.label_files import image_fingerprint

    viewer, widget = two_images
    widget.ui.autosave_check.setChecked(True)
    cells0 = widget.session
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    viewer.layers["cells0"].data = viewer.layers["cells0"].data[::-1].copy()
    widget.ui.image_combo.setCurrentText("cells0")
    drain_jobs(widget)
    assert widget.session is not cells0
    assert widget.session.fingerprint == image_fingerprint(viewer.layers["cells0"].data)


@pytest.mark.parametrize("edit", ["commit", "brush while away"])
def test_a_folder_chosen_while_an_image_was_away_keeps_that_image_s_file_there(
    two_images, qtbot, drain_jobs, tmp_path, notifications, edit
):
    """Another folder chosen while cells1 was annotated, holding a cells0 file of its own:
    cells0, chosen again (its session resumed) or corrected with the brush while away,
    saved over that file without a word; a session that never read a file keeps it."""
    import tifffile

    from napari_samtune.core.annotation_files import load_annotations, save_annotations

    viewer, widget = two_images
    widget.ui.autosave_check.setChecked(True)
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    other = tmp_path / "B"
    other.mkdir()
    theirs = np.zeros((64, 64), np.uint32)
    theirs[40:50, 5:15] = 42
    save_annotations(other, "cells0", theirs, {"objects": []})
    widget.ui.folder_edit.setText(str(other))
    widget._use_folder()
    drain_jobs(widget)
    if edit == "commit":
        widget.ui.image_combo.setCurrentText("cells0")
        drain_jobs(widget)
        widget.session.layers.preview.data[5:15, 45:60] = 1
        assert widget.commit()
    else:
        viewer.layers["cells0 annotations"].paint((10, 50), 7)
        qtbot.wait(10)
    drain_jobs(widget)
    np.testing.assert_array_equal(tifffile.imread(other / "cells0.labels.tif"), theirs)
    (beside,) = other.glob("cells0-*.labels.tif")
    assert 1 in load_annotations(beside)[0]  # cells0's first object, with the new edit
    assert any(beside.name in n for n in notifications)


@pytest.mark.parametrize("image", ["cells0", "cells1"], ids=["an older save", "no save"])
def test_a_panel_opened_again_on_edits_left_unsaved_saves_them(
    two_images, qtbot, drain_jobs, tmp_path, image
):
    """The panel closed with edits made with autosave unticked (their layers stay); opened
    again, it went on with the layer unsaid: nothing counted as unsaved, and closing napari
    lost them; where an older save matched the layer's file state, they were never saved."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer, widget = two_images
    widget.ui.image_combo.setCurrentText(image)
    drain_jobs(widget)
    if image == "cells1":
        widget.session.layers.preview.data[5:15, 45:60] = 1
        assert widget.commit() == [1]
    else:
        _edit_without_autosave(widget, qtbot)
    edited = widget.session.annotations.copy()
    viewer.window.remove_dock_widget(widget)  # the panel's close button
    reopened = AnnotateWidget(viewer)
    reopened.ui.folder_edit.setText(str(tmp_path))
    reopened.ui.image_combo.setCurrentText(image)
    drain_jobs(reopened)
    assert reopened.ui.autosave_check.isChecked()
    saved = tifffile.imread(tmp_path / f"{image}.labels.tif")
    np.testing.assert_array_equal(saved, edited)
    record = json.loads((tmp_path / f"{image}.prompts.json").read_text(encoding="utf-8"))
    assert len(record["objects"]) == (2 if image == "cells0" else 1)


def test_a_stroke_then_another_image_in_the_same_turn_is_saved_to_the_painted_image(
    two_images, qtbot, drain_jobs, tmp_path
):
    """A stroke's autosave ran once the event loop turned, on the image chosen by then:
    with another image picked in the same turn (a script), the stroke was never saved and
    an empty annotations file was written for the other image."""
    viewer, widget = two_images
    widget.ui.autosave_check.setChecked(True)
    drain_jobs(widget)
    layer = widget.session.layers.annotations
    layer.brush_size = 5
    layer.paint((50, 10), 9)
    widget.ui.image_combo.setCurrentText("cells1")
    qtbot.wait(10)
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    np.testing.assert_array_equal(saved, viewer.layers["cells0 annotations"].data)
    assert (saved == 9).any()
    assert not (tmp_path / "cells1.labels.tif").exists()
