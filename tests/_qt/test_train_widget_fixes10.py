"""A Finetune panel opened beside a running one, and a pair's layer removed during a run."""

from __future__ import annotations

from napari_samtune._qt.train_widget import TrainWidget
from tests._qt import test_train_widget
from tests._qt.test_train_widget import SMALL_CPU, WAIT_MS

docked, viewer = test_train_widget.docked, test_train_widget.viewer  # its fixtures


def test_a_panel_opened_during_a_run_lists_the_model_it_registers(qtbot, docked):
    """The panel that ran the job refreshed its model list; another one (the first closed
    mid-run and opened again, or a second one) did not list the new model to finetune
    further until its Refresh was pressed."""
    napari_viewer, _, widget = docked
    widget.settings.name_edit.setText("beside")
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        assert widget.start() is not None
    other = TrainWidget(napari_viewer, machine=SMALL_CPU)
    napari_viewer.window.add_dock_widget(other, name="Finetune SAM (2)")
    assert "beside" not in other.settings.model_picker.model_names()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert widget.result.registered_name == "beside"
    assert "beside" in other.settings.model_picker.model_names()
    assert "beside" in widget.settings.model_picker.model_names()


def test_a_layer_removed_during_a_run_says_the_run_goes_on(qtbot, docked, notifications):
    """Removing a pair's layer mid-run said only that the pair was gone, as if the run had
    lost it too; the run trains on the data it started with."""
    napari_viewer, _, widget = docked
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        assert widget.start() is not None
    napari_viewer.layers.remove("cells0 labels")
    qtbot.waitUntil(lambda: any("was removed" in n for n in notifications), timeout=WAIT_MS)
    removed = [n for n in notifications if "was removed" in n]
    assert removed == [
        "layer 'cells0 labels' was removed, and with it the training pair(s) cells0 / cells0 "
        "labels; the run in progress goes on with the data it started with, and the next run "
        "trains without them"
    ]
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert widget.result is not None and widget.result.epochs_done == 2
    napari_viewer.layers.remove("cells1 labels")
    qtbot.waitUntil(lambda: "cells1 labels' was removed" in notifications[-1], timeout=WAIT_MS)
    assert notifications[-1] == (
        "layer 'cells1 labels' was removed, and with it the training pair(s) cells1 / cells1 labels"
    )


def test_closing_the_viewer_tells_of_no_pair_removed(qtbot, docked, notifications):
    """``viewer.close()`` removes every layer before the window goes: the closing viewer
    told of each pair removed with them, mid-run adding that the run goes on."""
    napari_viewer, _, widget = docked
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        assert widget.start() is not None
    napari_viewer.layers.clear()  # as viewer.close() does first
    qtbot.wait(50)
    assert not [n for n in notifications if "was removed" in n]
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
