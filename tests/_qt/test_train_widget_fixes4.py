"""The Finetune widget's record of its run folder after a refused Start, and Continue…
with settings that a continued run does not take."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QFileDialog

from tests._qt.test_train_widget_fixes3 import _two_pairs_one_epoch

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
    dialog opened in a folder that does not exist, not in the run before's."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    made = widget.run_folder
    assert (made / "checkpoints" / "last.pt").is_file()
    _refused_by_the_worker(qtbot, widget, add_pair)
    assert widget.run_folder == made
    assert _continue_dialog_opens_in(widget, monkeypatch) == str(made)


def test_a_first_start_refused_by_the_worker_records_no_run_folder(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, monkeypatch
):
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    runs = tmp_path / "runs"
    widget.settings.out_dir_edit.setText(str(runs))
    _refused_by_the_worker(qtbot, widget, add_pair)
    assert widget.run_folder is None
    assert _continue_dialog_opens_in(widget, monkeypatch) == str(runs)
