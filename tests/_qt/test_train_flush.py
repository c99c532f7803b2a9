"""Start waits for the Annotate panels' background saves only where the run reads them."""

from __future__ import annotations

import threading

import numpy as np
import tifffile

from napari_samtune._qt import train_run


class _Panel:
    def __init__(self, folder) -> None:
        self.folder, self.flushed = folder, 0

    def save_folders(self):
        return {self.folder}

    def flush_autosave(self) -> None:
        self.flushed += 1


def test_start_waits_only_for_saves_into_the_folders_the_run_reads(monkeypatch, tmp_path):
    """A 30 x 2048 x 2048 stack's autosave held the viewer 1.8 s at the Start of a run on
    layer pairs, which reads no folder."""
    read, other = _Panel(tmp_path / "read"), _Panel(tmp_path / "other")
    read.folder.mkdir(), other.folder.mkdir()
    monkeypatch.setattr(train_run, "annotation_widgets", lambda viewer: [read, other])
    train_run.flush_autosaves(None, [])  # layer pairs only
    assert (read.flushed, other.flushed) == (0, 0)
    train_run.flush_autosaves(None, [tmp_path / "other" / ".." / "read"])
    assert (read.flushed, other.flushed) == (1, 0)
    train_run.flush_autosaves(None, [tmp_path / "*" / "x"])  # a glob: any folder may match
    train_run.flush_autosaves(None, None)  # the fields are not usable yet
    assert (read.flushed, other.flushed) == (3, 2)


def test_start_waits_for_a_save_into_a_file_the_labels_field_names(monkeypatch, tmp_path):
    """A labels field may name one file of the autosave folder."""
    panel = _Panel(tmp_path)
    monkeypatch.setattr(train_run, "annotation_widgets", lambda viewer: [panel])
    train_run.flush_autosaves(None, [tmp_path / "cells.labels.tif"])
    assert panel.flushed == 1


def test_start_waits_for_a_save_begun_before_the_annotation_folder_changed(
    viewer_widget, monkeypatch, tmp_path, drain_jobs, qtbot
):
    """The save of the last commit into a/ still ran when the panel's folder became b/: a
    run on a/ started without it."""
    from napari_samtune._qt import annotate_saves

    viewer, widget = viewer_widget
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    widget.ui.folder_edit.setText(str(a))
    started, release = threading.Event(), threading.Event()
    real_save = annotate_saves.save_annotations

    def slow_save(*args):
        started.set()
        release.wait(10)
        return real_save(*args)

    monkeypatch.setattr(annotate_saves, "save_annotations", slow_save)
    widget.session.layers.preview.data[5:15, 5:15] = 1
    assert widget.commit()  # its autosave into a/ starts
    committed = widget.session.annotations.copy()
    assert started.wait(10)
    widget.ui.folder_edit.setText(str(b))
    widget._use_folder()
    threading.Timer(0.3, release.set).start()  # the save ends only once waited for
    train_run.flush_autosaves(viewer, [a])  # what Start of a run on a/ does
    saved = a / "nuclei.labels.tif"
    assert saved.exists() and np.array_equal(tifffile.imread(saved), committed)
    drain_jobs(widget)
