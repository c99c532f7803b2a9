"""A large image's autosave is restored in a worker (it froze napari for seconds): until its
labels are in, the annotations layer is locked and marked, edits wait and say so, and
whatever ends the wait early leaves the file to be restored the next time, never saved over.

The tests of ``test_annotate_restore`` run here again with every restore in the background
(``BACKGROUND_RESTORE_PIXELS`` 0), as a large stack's."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

from napari_samtune._qt import annotate_restore
from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_restore import RESTORE_PENDING_KEY, restore_pending
from tests._qt.test_annotate_restore import *  # noqa: F403 (run again in the background)


@pytest.fixture(autouse=True)
def _restores_in_background(monkeypatch):
    monkeypatch.setattr(annotate_restore, "BACKGROUND_RESTORE_PIXELS", 0)


@pytest.fixture
def restore_gate(monkeypatch):
    """An event the restores' reads wait for (request it before ``restoring``): a read may
    not end before the test has done what it must do first (in one run of CI it ended, and
    was applied, before the panel closed)."""
    gate, real = threading.Event(), annotate_restore.read_or_problem

    def held(*args, **kwargs):
        assert gate.wait(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(annotate_restore, "read_or_problem", held)
    yield gate
    gate.set()


@pytest.fixture
def restoring(cells_with_one_saved_object, cells_viewer, tmp_path):
    """``(viewer, widget, saved)``: cells0 with one object saved in ``tmp_path``
    (``saved``, its labels), then a new viewer of the cells images and a panel restoring
    them in the background (not waited for)."""
    cells_with_one_saved_object(tmp_path)
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    viewer = cells_viewer(2)
    widget = AnnotateWidget(viewer)
    widget.ui.image_combo.setCurrentText("cells0")
    widget.ui.folder_edit.setText(str(tmp_path))
    widget._use_folder()
    assert restore_pending(widget.session.layers.annotations)
    return viewer, widget, saved


def test_edits_wait_for_the_restore_and_say_so(
    restore_gate, restoring, tmp_path, tiny_sam, drain_jobs, notifications
):
    _, widget, saved = restoring
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    annotations = widget.session.layers.annotations
    assert not annotations.editable and not annotations.data.any()
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [] and not widget.undo()
    assert widget.save_annotations() is None
    assert widget.start_loading_annotations(tmp_path / "cells0.labels.tif") is None
    waiting = [n for n in notifications if "are being restored" in n]
    assert len(waiting) == 4 and "commit once they are in" in waiting[0]
    restore_gate.set()
    drain_jobs(widget)
    np.testing.assert_array_equal(annotations.data, saved)
    assert annotations.editable and RESTORE_PENDING_KEY not in annotations.metadata
    assert "restored 1 saved objects" in notifications[-1]
    assert widget.commit() == [2]  # after the restored object
    drain_jobs(widget)
    assert set(np.unique(tifffile.imread(tmp_path / "cells0.labels.tif"))) == {0, 1, 2}


def test_another_image_picked_meanwhile_gets_the_restore_all_the_same(restoring, drain_jobs):
    _, widget, saved = restoring
    annotations = widget.session.layers.annotations
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    np.testing.assert_array_equal(annotations.data, saved)
    assert annotations.editable and not restore_pending(annotations)
    widget.ui.image_combo.setCurrentText("cells0")
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, saved)
    assert len(widget.session.records) == 1  # its record came back with it


def test_a_restore_cut_short_by_closing_the_panel_comes_back_with_the_next_one(
    restore_gate, restoring, tmp_path, drain_jobs, notifications, monkeypatch
):
    viewer, widget, saved = restoring
    annotations = widget.session.layers.annotations
    widget.shut_down()
    restore_gate.set()  # the read ends after the panel closed
    drain_jobs(widget)
    assert not annotations.data.any() and not annotations.editable  # locked, still marked
    assert any("was not restored from" in n and "stays locked" in n for n in notifications)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells0.labels.tif"), saved)
    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(tmp_path))  # the next panel's folder
    again = AnnotateWidget(viewer)  # on cells0; its layer is there, and marked: restored
    assert again.session.layers.annotations is annotations and restore_pending(annotations)
    drain_jobs(again)
    np.testing.assert_array_equal(annotations.data, saved)
    assert annotations.editable


def test_an_image_renamed_while_restoring_is_restored_under_its_new_name(
    restoring, tmp_path, drain_jobs
):
    viewer, widget, saved = restoring
    viewer.layers["cells0"].name = "renamed"
    drain_jobs(widget)
    annotations = widget.session.layers.annotations
    assert annotations.name == "renamed annotations" and not restore_pending(annotations)
    np.testing.assert_array_equal(annotations.data, saved)
    widget.session.layers.preview.data[40:50, 40:50] = 1
    assert widget.commit() == [2]
    drain_jobs(widget)
    (path,) = tmp_path.glob("renamed*.labels.tif")  # the saved object and the new one
    assert set(np.unique(tifffile.imread(path))) == {0, 1, 2}


def test_a_file_that_fails_while_another_image_is_picked_is_never_saved_over(
    cells_with_one_saved_object, cells_viewer, tmp_path, drain_jobs, notifications, tiny_sam
):
    cells_with_one_saved_object(tmp_path)
    path, record = tmp_path / "cells0.labels.tif", tmp_path / "cells0.prompts.json"
    saved = path.read_bytes()
    with open(record, "a", encoding="utf-8") as file:
        file.write("damaged")  # the labels file names the image; reading it fails
    viewer = cells_viewer(2)
    widget = AnnotateWidget(viewer)
    widget.ui.folder_edit.setText(str(tmp_path))
    widget._use_folder()
    annotations = widget.session.layers.annotations
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    said = [n for n in notifications if f"could not restore {path}" in n]
    assert said and "Pick 'cells0' again" in said[-1]
    assert restore_pending(annotations) and not annotations.editable
    widget.ui.image_combo.setCurrentText("cells0")  # fails again: saves go beside it
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    assert not restore_pending(annotations) and annotations.editable
    widget.session.layers.preview.data[40:50, 40:50] = 1
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert path.read_bytes() == saved
    (beside,) = tmp_path.glob("cells0-*.labels.tif")
    np.testing.assert_array_equal(tifffile.imread(beside), annotations.data)
