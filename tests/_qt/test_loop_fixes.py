"""The annotate -> finetune -> annotate loop in one viewer: what went wrong when the two docks
were used together while a run trained."""

from __future__ import annotations

import threading

import pytest

from napari_samtune._qt import annotate_jobs
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
