"""Save now and Load annotations… run in workers: on a 60 x 2048 x 2048 stack each took
seconds on the GUI thread, the viewer frozen. The writer and reader are held here until the
test lets them go, so a call that waited for them would never return."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

from napari_samtune._qt.annotate_jobs import SAVE_TASK

HELD_S = 30


def _held(real, release: threading.Event, ran: list):
    def held(*args):
        ran.append(threading.current_thread())
        assert release.wait(HELD_S), "the test never let the file work go on"
        return real(*args)

    return held


def _commit(widget, where) -> np.ndarray:
    widget.session.layers.preview.data[where] = 1
    assert widget.commit()
    return widget.session.annotations.copy()


def test_save_now_writes_in_a_worker(
    viewer_widget, monkeypatch, tmp_path, drain_jobs, notifications
):
    from napari_samtune._qt import annotate_saves

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.ui.autosave_check.setChecked(False)  # only Save now writes
    committed = _commit(widget, np.s_[5:15, 5:15])
    release, ran = threading.Event(), []
    monkeypatch.setattr(
        annotate_saves, "save_annotations", _held(annotate_saves.save_annotations, release, ran)
    )
    widget.ui.save_button.click()  # returns while the writer is held
    assert widget.runner.is_running(SAVE_TASK)
    assert "saving" in widget.ui.status_label.text()
    assert not (tmp_path / "nuclei.labels.tif").exists()
    widget.session.annotations[...] = 0  # an edit after pressing: not in that save
    release.set()
    drain_jobs(widget)
    assert ran and ran[0] is not threading.main_thread()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), committed)
    assert any(f"saved annotations to {tmp_path}" in n for n in notifications)
    assert widget.ui.status_label.text() == "saved nuclei.labels.tif"
    assert not widget._not_autosaved  # saved: closing napari has nothing to warn about


def test_save_now_pressed_while_an_autosave_writes_lands_after_it(
    viewer_widget, monkeypatch, tmp_path, drain_jobs, notifications
):
    from napari_samtune._qt import annotate_saves

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    release, ran = threading.Event(), []
    monkeypatch.setattr(
        annotate_saves, "save_annotations", _held(annotate_saves.save_annotations, release, ran)
    )
    _commit(widget, np.s_[5:15, 5:15])  # its autosave is held
    latest = _commit(widget, np.s_[40:50, 40:50])
    assert widget.start_save_now() is None  # waits for the running save
    release.set()
    drain_jobs(widget)
    assert len(ran) == 2  # the held autosave, then Save now (the second commit's with it)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), latest)
    assert sum(f"saved annotations to {tmp_path}" in n for n in notifications) == 1


def test_save_now_waiting_is_written_when_napari_closes(viewer_widget, monkeypatch, tmp_path):
    from napari_samtune._qt import annotate_saves

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    release, ran = threading.Event(), []
    monkeypatch.setattr(
        annotate_saves, "save_annotations", _held(annotate_saves.save_annotations, release, ran)
    )
    _commit(widget, np.s_[5:15, 5:15])
    widget.ui.autosave_check.setChecked(False)
    latest = _commit(widget, np.s_[40:50, 40:50])  # not autosaved: only Save now keeps it
    assert widget.start_save_now() is None
    release.set()
    widget.flush_autosave()  # what closing the viewer does
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), latest)


def _held_reader(monkeypatch):
    from napari_samtune._qt import annotate_file_jobs

    release, ran = threading.Event(), []
    real = annotate_file_jobs.read_annotations
    monkeypatch.setattr(annotate_file_jobs, "read_annotations", _held(real, release, ran))
    return release, ran


def test_load_annotations_reads_in_a_worker(
    viewer_widget, monkeypatch, tmp_path, nuclei_image, drain_jobs, notifications
):
    from qtpy.QtWidgets import QFileDialog

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path / "annotations"))
    segmented = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(segmented, nuclei_image[1])
    before = _commit(widget, np.s_[5:15, 5:15])
    release, ran = _held_reader(monkeypatch)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args: (str(segmented), ""))
    widget.ui.load_file_button.click()  # returns while the reader is held
    assert widget.runner.is_running("loading annotations")
    np.testing.assert_array_equal(widget.session.annotations, before)
    assert widget.start_loading_annotations(segmented) is None  # one load at a time
    release.set()
    drain_jobs(widget)
    assert ran and ran[0] is not threading.main_thread()
    np.testing.assert_array_equal(widget.session.annotations, nuclei_image[1])
    n_objects = np.count_nonzero(np.unique(nuclei_image[1]))  # counted in the worker too
    assert any(f"loaded {n_objects} objects from {segmented}" in n for n in notifications)
    saved = tifffile.imread(tmp_path / "annotations" / "nuclei.labels.tif")
    np.testing.assert_array_equal(saved, nuclei_image[1])  # autosaved as this image's
    assert widget.undo()
    np.testing.assert_array_equal(widget.session.annotations, before)


def test_what_a_load_replaces_is_found_in_the_worker(
    viewer_widget, monkeypatch, tmp_path, nuclei_image, drain_jobs
):
    """The pixels a loaded file changes (which undo puts back) were found on the GUI thread:
    0.3-1.8 s for 24 x 2048 x 2048 labels."""
    from napari_samtune._qt.label_edits import UndoEntry

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    segmented = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(segmented, nuclei_image[1])
    before = _commit(widget, np.s_[5:15, 5:15])
    threads, real = [], UndoEntry.remember_replacement

    def recorded(entry, *args):
        threads.append(threading.current_thread())
        return real(entry, *args)

    monkeypatch.setattr(UndoEntry, "remember_replacement", recorded)
    assert widget.start_loading_annotations(segmented) is not None
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, nuclei_image[1])
    assert threads and threading.main_thread() not in threads
    assert widget.undo()
    np.testing.assert_array_equal(widget.session.annotations, before)


@pytest.mark.parametrize("edit", ["commit", "brush", "undo"])
def test_an_edit_made_while_annotations_load_is_not_overwritten(
    viewer_widget, monkeypatch, tmp_path, nuclei_image, drain_jobs, notifications, edit
):
    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    segmented = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(segmented, nuclei_image[1])
    _commit(widget, np.s_[5:15, 5:15])
    release, _ran = _held_reader(monkeypatch)
    assert widget.start_loading_annotations(segmented) is not None
    if edit == "commit":
        _commit(widget, np.s_[40:50, 40:50])
    elif edit == "brush":
        widget.session.layers.annotations.paint((60, 60), 7)
    else:
        assert widget.undo()
    edited = widget.session.annotations.copy()
    release.set()
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, edited)
    assert any("was edited while it was read" in n for n in notifications)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), edited)


def test_a_failed_save_now_is_not_called_an_autosave(
    viewer_widget, tmp_path, drain_jobs, notifications
):
    """Save now runs as the autosave task, whose name its error took: 'autosave failed'
    for a save the person asked for, with autosave perhaps unticked."""
    _viewer, widget = viewer_widget
    widget.ui.autosave_check.setChecked(False)
    (tmp_path / "a file").write_text("not a folder")
    widget.ui.folder_edit.setText(str(tmp_path / "a file" / "annotations"))
    _commit(widget, (slice(5, 9), slice(5, 9)))
    widget.ui.save_button.click()
    drain_jobs(widget)
    errors = [n for n in notifications if n.severity == "error"]
    assert errors and all("saving annotations failed" in n for n in errors)
    assert not any("autosave" in n for n in errors)


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("as_bool", [False, True])
def test_a_foreground_mask_loads_as_one_object_per_region(
    viewer_widget, tmp_path, nuclei_image, drain_jobs, notifications, background, as_bool
):
    """A 0/255 mask (Fiji's Convert to Mask) loaded as one object covering every cell."""
    from scipy import ndimage

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    cells = nuclei_image[1]
    mask = tmp_path / "mask.tif"
    # 0/255 as Fiji saves it, or a bool image (it was refused as "bool data")
    tifffile.imwrite(mask, cells > 0 if as_bool else (cells > 0).astype(np.uint8) * 255)
    regions, n_regions = ndimage.label(cells > 0, np.ones((3, 3), bool))
    assert n_regions >= 5
    if background:
        assert widget.start_loading_annotations(mask) is not None
        drain_jobs(widget)
    else:
        assert widget.load_annotations(mask) == n_regions
    loaded = widget.session.annotations
    np.testing.assert_array_equal(loaded, regions)
    assert any(
        f"gives one id to {n_regions} separate regions, as a foreground mask does: loaded them "
        f"as {n_regions} objects, one id each" in note
        for note in notifications
    )
    assert widget.undo() and not widget.session.annotations.any()
    # instance labels load as they are
    tifffile.imwrite(tmp_path / "cells.tif", cells)
    assert widget.load_annotations(tmp_path / "cells.tif") is not None
    np.testing.assert_array_equal(widget.session.annotations, cells)


def _two_commits_the_first_saving(widget, monkeypatch, folder) -> tuple[np.ndarray, list]:
    """Two commits into ``folder``, the second while the first's autosave runs (held until
    both are made): the annotations then, and the list of the saves' threads."""
    from napari_samtune._qt import annotate_saves

    widget.ui.folder_edit.setText(str(folder))
    widget._use_folder()
    release, ran = threading.Event(), []
    monkeypatch.setattr(
        annotate_saves, "save_annotations", _held(annotate_saves.save_annotations, release, ran)
    )
    _commit(widget, np.s_[5:15, 5:15])  # its autosave is held
    latest = _commit(widget, np.s_[40:50, 40:50])  # waits for it
    release.set()
    return latest, ran


def test_commits_queued_behind_a_running_autosave_go_into_its_file_when_napari_closes(
    viewer_widget, monkeypatch, tmp_path, notifications
):
    # Closing napari waited for the running autosave but dropped its result, so the panel
    # took the file its own save had just written for another program's edit: the later
    # commits went into a second file beside it, with a warning, and the image opened
    # again showed only the objects of the first.
    _viewer, widget = viewer_widget
    latest, ran = _two_commits_the_first_saving(widget, monkeypatch, tmp_path)
    widget.flush_autosave()  # what closing the viewer does
    assert len(ran) == 1  # the held autosave; the second commit is saved on closing
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["nuclei.labels.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), latest)
    assert not [n for n in notifications if "changed by another program" in n]


def test_an_image_renamed_right_after_quick_commits_keeps_one_file_of_them_all(
    viewer_widget, monkeypatch, tmp_path, notifications, drain_jobs
):
    # The rename waited for the running autosave as closing does (see above): the commits
    # after it went to the new name with a warning, and the first save's file stayed
    # under the old name, holding fewer objects.
    viewer, widget = viewer_widget
    latest, _ = _two_commits_the_first_saving(widget, monkeypatch, tmp_path)
    viewer.layers["nuclei"].name = "renamed"
    drain_jobs(widget)
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["renamed.labels.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "renamed.labels.tif"), latest)
    assert not [n for n in notifications if "changed by another program" in n]


def test_saving_now_from_a_script_while_an_autosave_writes_is_not_put_beside(
    viewer_widget, monkeypatch, tmp_path, drain_jobs, notifications
):
    """``save_annotations()`` waited for the autosave that was writing, but not for its
    callback to note the file as this session's: the file was taken for another program's,
    and the save went to ``<name>-<fingerprint>`` with a warning, the image's annotations
    split over two files."""
    from napari_samtune._qt import annotate_saves

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit(widget, np.s_[5:15, 5:15])
    drain_jobs(widget)  # saved once: the file is this session's
    release, ran = threading.Event(), []
    monkeypatch.setattr(
        annotate_saves, "save_annotations", _held(annotate_saves.save_annotations, release, ran)
    )
    committed = _commit(widget, np.s_[40:50, 40:50])  # its autosave is held
    assert widget.runner.is_running(SAVE_TASK)
    release.set()
    assert widget.save_annotations() == tmp_path / "nuclei.labels.tif"
    drain_jobs(widget)
    assert sorted(p.name for p in tmp_path.glob("*.labels.tif")) == ["nuclei.labels.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), committed)
    assert not any("changed by another program" in n for n in notifications)


@pytest.mark.parametrize("extra", ["(H, W, 1)", "(1, H, W)"])
def test_labels_of_one_axis_more_of_length_one_load(
    viewer_widget, tmp_path, nuclei_image, drain_jobs, notifications, extra
):
    """(H, W, 1), a common TIFF export, and (1, H, W) labels, which training and evaluate
    read, were refused as "has shape ... pick the annotations of this image"."""
    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path / "annotations"))
    labels = nuclei_image[1]
    path = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(path, labels[..., None] if extra == "(H, W, 1)" else labels[None])
    assert widget.start_loading_annotations(path) is not None
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, labels)
    assert widget.load_annotations(path) == np.count_nonzero(np.unique(labels))  # at once too


def test_another_image_s_annotations_load_with_a_warning_naming_it(
    viewer_widget, tmp_path, nuclei_image, drain_jobs, notifications
):
    """An autosave of another image of the same shape (a namesake's, picked in the file
    dialog by mistake) loaded unsaid, though its record names that image and its pixels."""
    from napari_samtune.core.annotation_files import save_annotations
    from napari_samtune.core.label_files import image_fingerprint

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path / "annotations"))
    labels = nuclei_image[1]
    other = {"image_fingerprint": image_fingerprint(nuclei_image[0][::-1]), "objects": []}
    theirs, _ = save_annotations(tmp_path / "elsewhere", "cells_07", labels, other)
    assert widget.start_loading_annotations(theirs) is not None
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, labels)  # loaded, as asked
    said = [n for n in notifications if f"from {theirs}" in n]
    assert len(said) == 1 and said[0].severity == "warning"
    assert "saved for image 'cells_07' (other pixels), not for 'nuclei'" in said[0]
    own = {"image_fingerprint": widget.session.fingerprint, "objects": []}
    mine, _ = save_annotations(tmp_path / "elsewhere", "nuclei", labels[::-1], own)
    notifications.clear()
    assert widget.load_annotations(mine) is not None  # its own: no warning
    said = [n for n in notifications if f"from {mine}" in n]
    assert len(said) == 1 and said[0].severity == "info" and "record" not in said[0]
