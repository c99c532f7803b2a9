"""The annotate -> finetune -> annotate loop in one viewer: what went wrong when the two docks
were used together while a run trained."""

from __future__ import annotations

import threading

import pytest

from napari_samtune._qt import annotate_jobs
from napari_samtune._qt.annotate_jobs import SAVE_TASK
from napari_samtune.core.synthetic import make_image
from tests._qt.test_loop import WAIT_MS, _iter_docked, annotate_image, small_settings


@pytest.fixture
def docks(make_napari_viewer, qtbot, run_job, tmp_path):
    """A viewer with images cells0..cells2, the Annotate dock on nano and the Finetune dock
    (see ``test_loop``'s ``loop``)."""
    viewer = make_napari_viewer()
    for i in range(3):
        viewer.add_image(make_image((96, 96), seed=i)[0], name=f"cells{i}")
    yield from _iter_docked(viewer, qtbot, run_job, tmp_path)


def test_a_run_ending_while_the_annotate_dock_loads_another_model_leaves_its_picker_true(
    qtbot, docks, run_job, drain_jobs, monkeypatch, notifications
):
    """While the run trains, the person loads nano in the Annotate dock; the run ends before
    that load does. The dock could not load the new model then ("a model is already
    loading"), yet its picker was set to it: nano loaded, and the picker named the finetuned
    model as the one prompts go to. The picker keeps the model being loaded, and the person
    is told how to use the new one."""
    viewer, annotate, train = docks
    data = train.train_data
    for name in ("cells0", "cells1"):
        annotate_image(qtbot, annotate, name, run_job, drain_jobs)
        data.image_combo.setCurrentText(name)
        assert data.add_current_pair()
    small_settings(train, qtbot, "nano")
    loading, real_load = threading.Event(), annotate_jobs.load_model_job

    def held_load(*args):
        assert loading.wait(WAIT_MS / 1000)
        return real_load(*args)

    monkeypatch.setattr(annotate_jobs, "load_model_job", held_load)
    with qtbot.waitSignal(train.training_started, timeout=WAIT_MS):
        assert train.start() is not None
    annotate.select_model("nano")
    assert annotate.load_model() is not None
    with qtbot.waitSignal(train.training_finished, timeout=WAIT_MS) as finished:
        pass
    loading.set()
    drain_jobs(annotate)
    new_model = finished.args[0].registered_name
    assert new_model in annotate.ui.model_picker.model_names()
    assert annotate.model_name == "nano"
    assert annotate.ui.model_picker.model_source() == "nano"
    assert any(new_model in notice and "Load model" in notice for notice in notifications)


def test_a_run_on_the_autosave_folder_reads_the_object_painted_just_before_start(
    qtbot, docks, run_job, drain_jobs, monkeypatch, tmp_path
):
    """The person paints an object and presses Start at once, training on the autosave
    folder. The stroke's autosave still ran in the background, so the run read the file
    without that object, or with it, as the race went; Start now writes it first."""
    import time

    import tifffile

    from napari_samtune._qt import annotate_saves, train_run

    viewer, annotate, train = docks
    (tmp_path / "images").mkdir()
    for name in ("cells0", "cells1"):
        annotate_image(qtbot, annotate, name, run_job, drain_jobs)
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", viewer.layers[name].data)
    data = train.train_data
    data.image_dir_edit.setText(str(tmp_path / "images"))
    data.use_autosave_folder()
    qtbot.waitUntil(lambda: not data.folder_runner.is_running(), timeout=WAIT_MS)
    small_settings(train, qtbot, "nano")
    real_save, real_load, read = annotate_saves.save_annotations, train_run.load_folder_pairs, []

    def slow_save(*args):
        time.sleep(0.5)
        return real_save(*args)

    def recorded(source):
        pairs = real_load(source)
        read.extend(pairs)
        return pairs

    monkeypatch.setattr(annotate_saves, "save_annotations", slow_save)
    monkeypatch.setattr(train_run, "load_folder_pairs", recorded)
    viewer.layers["cells1 annotations"].paint((80, 80), 77)
    qtbot.waitUntil(lambda: annotate.runner.is_running(SAVE_TASK))  # saved in the background
    with qtbot.waitSignal(train.training_finished, timeout=WAIT_MS):
        train.start()
    assert read and any((pair.labels == 77).any() for pair in read)
