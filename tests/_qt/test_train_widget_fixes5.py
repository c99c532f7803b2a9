"""The Finetune widget as a person new to it uses it: refused starts notified as such.

Runs use the tiny model (one epoch of two patches, frozen encoder) in a real viewer.
"""

from __future__ import annotations

import numpy as np

import napari_samtune._qt.train_widget as train_widget
from napari_samtune.core.checkpoints import training_lock
from tests._qt.test_train_widget_fixes3 import _two_pairs_one_epoch

WAIT_MS = 120_000


def _errors(notifications) -> list[str]:
    return [str(n) for n in notifications if n.severity == "error"]


def test_a_start_the_worker_refuses_is_notified_as_not_started(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications
):
    """A run refused by its worker (the only image's held-out part without objects) trained
    nothing and is shown in red under Start, but was notified as "training failed: …"."""
    viewer, widget = finetune_on_cells(n=1)
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    top = np.zeros((64, 64), np.uint32)
    top[5:20, 5:20], top[5:20, 30:45] = 1, 2  # none in the rows held out for validation
    viewer.add_labels(top, name="top labels")
    assert add_pair(widget.train_data, "cells0", "top labels")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    (error,) = _errors(notifications)
    assert error.startswith("training not started: ") and "the validation part" in error


def test_a_run_folder_taken_before_the_worker_holds_it_is_notified_as_not_started(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications, monkeypatch
):
    """Another run took the folder between Start's check and the worker's hold on it."""
    monkeypatch.setattr(train_widget, "_check_not_in_use", lambda out_dir: None)  # too late
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    runs = tmp_path / "runs"
    widget.settings.out_dir_edit.setText(str(runs))
    (runs / "mine").mkdir(parents=True)
    monkeypatch.setattr(train_widget, "run_folder", lambda output_folder, name: runs / "mine")
    with training_lock(runs / "mine"):
        with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
            assert widget.start() is not None
    (error,) = _errors(notifications)
    assert error.startswith("training not started: ") and "in use by another training" in error
    assert widget.started is None and widget.result is None
