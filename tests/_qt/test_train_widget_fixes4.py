"""The Finetune widget's record of its run folder after a refused Start, and Continue…
with settings that a continued run does not take."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QFileDialog

from tests._qt.test_train_widget_fixes3 import _run_once, _two_pairs_one_epoch

WAIT_MS = 120_000


def _refused_by_the_worker(qtbot, widget, add_pair) -> None:
    """Start on one image whose rows held out for validation hold no object: the worker
    refuses it before it makes the run's folder."""
    top = np.zeros((64, 64), np.uint32)
    top[5:20, 5:20], top[5:20, 30:45] = 1, 2
    widget.viewer.add_labels(top, name="top labels")
    while widget.train_data.pair_list.count():
        widget.train_data.pair_list.setCurrentRow(0)
        widget.train_data.remove_selected_pair()
    assert add_pair(widget.train_data, "cells0", "top labels")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert "the validation part" in widget.start_error.text() and widget.started is None


def _continue_dialog_opens_in(widget, monkeypatch) -> str:
    opened = []
    monkeypatch.setattr(
        QFileDialog, "getExistingDirectory", lambda *args: opened.append(args[2]) or ""
    )
    widget.continue_button.click()
    assert len(opened) == 1
    return opened[0]


def test_a_start_refused_by_the_worker_leaves_the_last_real_run_s_folder(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, monkeypatch
):
    """The refused Start's folder (never made) stayed the widget's run folder: Continue…'s
    dialog opened in a folder that does not exist, not in the run before's. The run
    before's plot and result line were cleared by the Start that never began."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    _run_once(qtbot, widget, tmp_path / "runs")
    made = widget.run_folder
    assert (made / "checkpoints" / "last.pt").is_file()
    shown = ([*widget.plot.epochs], [*widget.plot.step_losses], widget.result_label.text())
    assert shown[0] == [1] and shown[2]
    _refused_by_the_worker(qtbot, widget, add_pair)
    assert widget.run_folder == made
    assert _continue_dialog_opens_in(widget, monkeypatch) == str(made)
    # as when refused before the worker: the run before's plot and result line are kept
    assert (widget.plot.epochs, widget.plot.step_losses, widget.result_label.text()) == shown


def test_a_first_start_refused_by_the_worker_records_no_run_folder(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, monkeypatch
):
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    runs = tmp_path / "runs"
    widget.settings.out_dir_edit.setText(str(runs))
    _refused_by_the_worker(qtbot, widget, add_pair)
    assert widget.run_folder is None
    assert _continue_dialog_opens_in(widget, monkeypatch) == str(runs)


def _one_epoch_run(qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path):
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    _run_once(qtbot, widget, tmp_path / "runs")
    assert widget.result.epochs_done == 1
    return widget


def _kept_notices(notifications) -> list[str]:
    return [n for n in notifications if "the run continues with its own" in n]


def test_continue_says_which_changed_settings_it_does_not_take(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications
):
    """Continue… took the epochs, learning rate and device set and silently kept the run's
    own objects per batch, patch size, freeze, LoRA rank, ... whatever was set: a person
    who changed them trained on without them, not knowing. Changing only what it takes
    says nothing."""
    widget = _one_epoch_run(qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path)
    settings, folder = widget.settings, widget.run_folder
    settings.epochs_spin.setValue(2)
    settings.lr_edit.setText("2e-5")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    assert widget.started.config.learning_rate == 2e-5 and widget.result.epochs_done == 2
    assert _kept_notices(notifications) == []

    settings.objects_spin.setValue(3)
    settings.patch_spin.setValue(64)
    settings.epochs_spin.setValue(3)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    (notice,) = _kept_notices(notifications)
    assert notice.severity == "warning"
    assert "objects per batch (2; 3 set here)" in notice
    assert "patch size (256; 64 set here)" in notice  # the tiny model's input size
    named = notice.split(": ")[0]  # the settings named: those changed, no others
    assert "LoRA" not in named and "freeze" not in named and "model" not in named
    assert named.count("(") == 2
    assert "press Start for a new run" in notice
    config = widget.started.config
    assert (config.n_objects_per_batch, config.patch_size, config.epochs) == (2, 256, 3)
    assert widget.result.epochs_done == 3


def test_the_kept_settings_are_named_as_the_widget_shows_them():
    from dataclasses import replace

    from napari_samtune._qt.train_run import settings_kept_message
    from napari_samtune.core.presets import TrainConfig

    run = TrainConfig(model="random:tiny", freeze=("image_encoder", "mask_decoder"))
    same = replace(run, freeze=("mask_decoder", "image_encoder"), preset="cpu-16gb", epochs=5)
    assert settings_kept_message(run, same) == ""  # a run that recorded no preset: not compared
    message = settings_kept_message(run, replace(run, freeze=(), lora_rank=4))
    assert message.startswith(
        "the run continues with its own freeze (image encoder + mask decoder; nothing frozen "
        "set here), LoRA rank (no LoRA; 4 set here): "
    )
