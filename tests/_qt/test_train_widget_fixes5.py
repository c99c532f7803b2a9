"""The Finetune widget as a person new to it uses it: refused starts notified as such, the
planes left out of stacks in the data folders named, a chosen model gone from the list.

Runs use the tiny model (one epoch of two patches, frozen encoder) in a real viewer.
"""

from __future__ import annotations

import numpy as np
import tifffile

import napari_samtune._qt.train_request as train_request
from napari_samtune.core.run_lock import training_lock
from napari_samtune.core.synthetic import make_image
from tests._qt.test_train_widget_fixes3 import _run_once, _two_pairs_one_epoch
from tests._qt.test_train_widget_start import only_image_without_held_out_objects

WAIT_MS = 120_000


def _errors(notifications) -> list[str]:
    return [str(n) for n in notifications if n.severity == "error"]


def test_a_start_the_worker_refuses_is_notified_as_not_started(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications
):
    """A run refused by its worker (the only image's held-out part without objects) trained
    nothing and is shown in red under Start, but was notified as "training failed: …"."""
    widget = only_image_without_held_out_objects(
        finetune_on_cells, add_pair, use_tiny_model, tmp_path / "runs"
    )
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    (error,) = _errors(notifications)
    assert error.startswith("training not started: ") and "the validation part" in error


def test_a_run_folder_taken_before_the_worker_holds_it_is_notified_as_not_started(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications, monkeypatch
):
    """Another run took the folder between Start's check and the worker's hold on it."""
    monkeypatch.setattr(train_request, "check_not_in_use", lambda *args: None)  # too late
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    runs = tmp_path / "runs"
    widget.settings.out_dir_edit.setText(str(runs))
    (runs / "mine").mkdir(parents=True)
    monkeypatch.setattr(train_request, "run_folder", lambda output_folder, name: runs / "mine")
    with training_lock(runs / "mine"):
        with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
            assert widget.start() is not None
    (error,) = _errors(notifications)
    assert error.startswith("training not started: ") and "in use by another training" in error
    assert widget.started is None and widget.result is None


def test_the_empty_planes_of_a_stack_in_the_folders_are_named_under_them(
    qtbot, finetune_on_cells, tmp_path
):
    """A stack file annotated on some planes trains on those: the folders' note said nothing
    of the planes left out, which a stack layer's Start and ``samtune train`` name."""
    viewer, widget = finetune_on_cells(1)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    image, objects = make_image((48, 48), seed=1)
    tifffile.imwrite(images / "cell.tif", np.stack([image, image, image]))
    tifffile.imwrite(labels / "cell.tif", np.stack([objects, 0 * objects, 0 * objects]))
    data = widget.train_data
    data.image_dir_edit.setText(str(images))
    data.labels_dir_edit.setText(str(labels))
    with qtbot.waitSignal(data.folders_checked, timeout=WAIT_MS):
        assert data.check_folders() is None
    assert data.check_folders() is True
    assert "left out the planes without objects of 1 stack(s)" in data.folder_note.text()
    assert "cell.tif / cell.tif: 2 of 3 planes" in data.folder_note.text()


def test_a_chosen_user_model_gone_from_the_list_is_not_replaced_silently(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications
):
    """The user model chosen, removed meanwhile (``samtune models rm``), was replaced by the
    list's first model at the next refresh (↻, or after a run) without a word: Start would
    train that one."""
    from napari_samtune.core.user_model_removal import remove_user_model

    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    widget.settings.name_edit.setText("mine")
    _run_once(qtbot, widget, tmp_path / "runs")
    picker = widget.settings.model_picker
    picker.select_model("mine")
    remove_user_model("mine")
    picker.refresh_models()
    assert widget.settings.model_text() != "mine"
    warnings = [str(n) for n in notifications if n.severity == "warning"]
    (warning,) = [w for w in warnings if "no longer in the model list" in w]  # said once
    assert "model 'mine' is no longer in the model list" in warning
    assert repr(widget.settings.model_text()) in warning


def test_a_chosen_user_model_renamed_meanwhile_trains_under_its_new_name(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications
):
    """Start was refused as an unknown model where Annotate's Load model went on with the
    new name."""
    from napari_samtune.core.user_model_rename import rename_user_model

    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    widget.settings.name_edit.setText("mine")
    _run_once(qtbot, widget, tmp_path / "runs")
    widget.settings.model_picker.select_model("mine")
    rename_user_model("mine", "cells_v1")
    widget.settings.name_edit.setText("")
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS) as started:
        widget.start()
    assert started.args[0].config.model == "cells_v1"
    assert any("'mine' was renamed 'cells_v1'; it stays chosen" in n for n in notifications)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
