"""A run that reads the annotation widget's folder while the widget holds edits not saved
there (autosave unticked) trained on the last save without a word."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_samtune._qt import train_widget as train_widget_module
from napari_samtune._qt.train_folders import FolderSource
from napari_samtune._qt.train_run import TrainRequest, unsaved_annotations_message
from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.presets import MachineResources, TrainConfig

WAIT_MS = 30_000
SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


def _edited_without_autosave(saved_once, drain_jobs, folder):
    """``(viewer, docked widget on "cells0")``: object 1 autosaved to ``folder``, then
    object 2 committed with autosave unticked."""
    viewer, widget = saved_once(folder)
    viewer.window.add_dock_widget(widget)
    widget.ui.autosave_check.setChecked(False)
    widget.session.layers.preview.data[25:35, 25:35] = 1
    assert widget.commit() == [2]
    drain_jobs(widget)
    return viewer, widget


def _request(labels_folder, images_folder) -> TrainRequest:
    folders = FolderSource(images_folder, labels_folder)
    config = TrainConfig(model="random:tiny")
    return TrainRequest(config, (), folders, (), None, images_folder / "run", None)


def test_edits_not_saved_to_the_folder_a_run_reads_are_named_at_start(
    cells_with_one_saved_object, qtbot, drain_jobs, tmp_path, notifications, monkeypatch
):
    folder = tmp_path / "annotations"
    viewer, annotate = _edited_without_autosave(cells_with_one_saved_object, drain_jobs, folder)
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "cells0.tif", viewer.layers["cells0"].data)
    assert annotate.unsaved_images() == ["cells0"]
    message = unsaved_annotations_message(viewer, _request(folder, images))
    assert "the annotations of 'cells0' have edits not saved to" in message
    assert str(folder.resolve()) in message and "Save now" in message
    assert "leaves out an image never saved there" in message  # (it spoke of a last save)
    assert unsaved_annotations_message(viewer, _request(tmp_path / "elsewhere", images)) == ""
    saved = next(folder.glob("*.tif"))  # a labels field may name one file of the folder
    assert "have edits not saved to" in unsaved_annotations_message(viewer, _request(saved, images))

    started = []
    monkeypatch.setattr(  # the run itself is not what this test is about
        train_widget_module, "iter_training_job", lambda *args: iter(started.append(1) or ())
    )
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    viewer.window.add_dock_widget(widget)
    widget._train(_request(folder, images), None)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert started == [1]
    assert any("have edits not saved to" in n for n in notifications)

    with qtbot.waitSignal(annotate.annotations_saved, timeout=WAIT_MS):
        annotate.start_save_now()
    drain_jobs(annotate)
    assert annotate.unsaved_images() == []
    assert unsaved_annotations_message(viewer, _request(folder, images)) == ""
    saved = tifffile.imread(next(folder.glob("*.labels.tif")))
    np.testing.assert_array_equal(np.unique(saved), [0, 1, 2])


def test_edits_held_in_another_napari_window_are_named_at_start(
    cells_with_one_saved_object, make_napari_viewer, drain_jobs, tmp_path
):
    """Two napari windows, the Annotate panel in one, Finetune in the other on the folder it
    saves to (its autosaves button takes the folder last chosen): Start there looked at its
    own window only, and trained on the last save of the other's edits, unsaid."""
    folder = tmp_path / "annotations"
    _edited_without_autosave(cells_with_one_saved_object, drain_jobs, folder)
    images = tmp_path / "images"
    images.mkdir()
    other = make_napari_viewer()
    message = unsaved_annotations_message(other, _request(folder, images))
    assert "the annotations of 'cells0' have edits not saved to" in message
