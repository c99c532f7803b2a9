"""The Finetune widget's state across transitions: a run that ends while the person is asked
whether to close, Continue… of a run scored before training, and a model chosen while
another model file is read."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QMessageBox

from tests._qt import test_train_widget
from tests._qt.test_train_widget import WAIT_MS

docked, viewer = test_train_widget.docked, test_train_widget.viewer  # its fixtures


def _run_ends_while_asked(qtbot, widget, monkeypatch) -> None:
    """Answer the close question with Yes only after the run (started here) has ended, as
    a person who takes a moment to answer does."""

    def question(*args):
        qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", question)
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        assert widget.start() is not None


def test_a_run_that_ends_while_the_person_is_asked_closes_the_window_then(
    qtbot,
    docked,
    monkeypatch,
    close_blocker,
):
    """The window stayed open for good ("closing once the model is saved…"): the run's end
    had come and gone inside the question's event loop."""
    napari_viewer, _, widget = docked
    closes = close_blocker(napari_viewer.window._qt_window)
    _run_ends_while_asked(qtbot, widget, monkeypatch)
    assert widget.close_after_run(ask=True)
    assert widget.result is not None and widget.result.exported_model_path.is_file()
    qtbot.waitUntil(lambda: closes.count == 1, timeout=WAIT_MS)
    assert widget._close_when_ended is None


def test_a_close_left_pending_does_not_close_the_window_after_a_later_run(
    qtbot,
    docked,
    monkeypatch,
    close_blocker,
):
    """A close asked for during one run closed napari's window, unasked, when the next run
    ended."""
    napari_viewer, _, widget = docked
    closes = close_blocker(napari_viewer.window._qt_window)
    widget._close_when_ended = napari_viewer.window._qt_window  # as an earlier run's close left it
    widget.use_model_check.setChecked(False)
    widget.settings.epochs_spin.setValue(1)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    qtbot.wait(300)
    assert closes.count == 0


def _one_epoch_validated_on_cells2(qtbot, widget, add_pair, tmp_path) -> None:
    """A run of one epoch, validated on the pair cells2 given apart, into tmp_path/runs."""
    widget.separate_val_check.setChecked(True)
    assert add_pair(widget.val_data, "cells2", "cells2 labels")
    widget.use_model_check.setChecked(False)
    widget.settings.epochs_spin.setValue(1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None


def test_continue_keeps_the_score_before_training_in_the_plot(
    qtbot,
    docked,
    add_pair,
    tmp_path,
):
    """A continued run's plot began at epoch 1: the point at epoch 0 went, while the result
    line went on quoting it."""
    _, _, widget = docked
    _one_epoch_validated_on_cells2(qtbot, widget, add_pair, tmp_path)
    start = widget.result.start_metric
    assert widget.plot.metric_epochs == [0, 1] and widget.plot.metric_values[0] == start

    widget.settings.epochs_spin.setValue(2)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(widget.run_folder) is not None
    assert widget.result.start_metric == start
    assert widget.plot.metric_epochs == [0, 1, 2]
    assert widget.plot.metric_values[0] == start


def _two_copies(tiny_checkpoint, tmp_path):
    first, second = tmp_path / "model_a.pth", tmp_path / "model_b.pth"
    first.write_bytes(tiny_checkpoint.read_bytes())
    second.write_bytes(tiny_checkpoint.read_bytes())
    return first, second


def test_a_file_chosen_as_the_last_read_ends_is_read(
    qtbot, finetune_on_cells, tiny_checkpoint, tmp_path
):
    """Chosen after the read's thread had ended but before its end was handled, the file
    was never read: "reading model_b.pth…" for good, and Start refused."""
    _, widget = finetune_on_cells(2)
    settings = widget.settings
    first, second = _two_copies(tiny_checkpoint, tmp_path)
    settings.model_picker.select_model(str(first))
    assert settings.model_being_read()
    time.sleep(1.0)  # the main thread busy while the read's thread ends
    settings.model_picker.select_model(str(second))
    qtbot.waitUntil(lambda: not settings.model_being_read(), timeout=WAIT_MS)
    assert settings.architecture() is not None
    assert "reading" not in settings.preset_label.text()


def test_a_start_waiting_for_a_read_waits_for_the_model_chosen_meanwhile(
    qtbot, finetune_on_cells, add_pair, tiny_checkpoint, tmp_path, monkeypatch, notifications
):
    """Start pressed while model A was read, then model B chosen: when A's read ended the
    Start was refused with "cannot start training: reading model_b.pth…"."""
    from napari_samtune.core import model_source

    _, widget = finetune_on_cells(2)
    for i in range(2):
        assert add_pair(widget.train_data, f"cells{i}", f"cells{i} labels")
    widget.use_model_check.setChecked(False)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    first, second = _two_copies(tiny_checkpoint, tmp_path)
    read = model_source.architecture_of
    monkeypatch.setattr(model_source, "architecture_of", lambda path: time.sleep(0.5) or read(path))
    widget.settings.model_picker.select_model(str(first))
    assert widget.start() is None  # queued: the file is read
    widget.settings.model_picker.select_model(str(second))
    qtbot.waitUntil(lambda: widget.started is not None, timeout=WAIT_MS)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        widget.stop()  # the file's preset chose its epochs: this test needs none of them
    assert widget.started.config.model == str(second)
    assert not [n for n in notifications if n.severity == "error"]


def test_two_widgets_started_at_once_get_folders_of_their_own(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications
):
    """The second Start, before the first run's worker made its folder, chose the same one
    and was refused: "... is in use by another training run (process <this napari>)"."""
    from napari_samtune._qt.train_widget import TrainWidget
    from napari_samtune.core.presets import MachineResources

    viewer, first = finetune_on_cells(2)
    machine = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)
    second = TrainWidget(viewer, machine=machine)
    for widget in (first, second):
        for i in range(2):
            assert add_pair(widget.train_data, f"cells{i}", f"cells{i} labels")
        use_tiny_model(widget, epochs=1)
        widget.use_model_check.setChecked(False)
        widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    assert first.start() is not None and second.start() is not None
    qtbot.waitUntil(lambda: not first.is_running and not second.is_running, timeout=WAIT_MS)
    assert first.run_folder != second.run_folder
    assert first.result.exported_model_path.is_file()
    assert second.result.exported_model_path.is_file()
    assert not [n for n in notifications if n.severity == "error"]


def test_continue_on_other_validation_images_stars_no_epoch_scored_on_the_old_ones(
    qtbot,
    docked,
    add_pair,
    tmp_path,
):
    """Continued with other validation images, the run chooses its best epoch anew, but the
    plot kept starring the epoch its metrics.jsonl had starred: until a new epoch was scored
    (forever, for a run stopped before one), the star marked a score on other objects."""
    viewer, _, widget = docked
    _one_epoch_validated_on_cells2(qtbot, widget, add_pair, tmp_path)
    assert widget.plot.best_epoch == 1
    stars: list = []  # the plot's star as each run starts, before any new epoch is scored
    widget.training_started.connect(lambda _: stars.append(widget.plot.best_epoch))

    widget.settings.epochs_spin.setValue(2)  # the same validation image: its best stays
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(widget.run_folder) is not None

    image, labels = viewer.layers["cells2"].data, viewer.layers["cells2 labels"].data
    viewer.add_image(image[::-1].copy(), name="other")
    viewer.add_labels(labels[::-1].copy(), name="other labels")
    widget.val_data.pair_list.setCurrentRow(0)
    widget.val_data.remove_selected_pair()
    assert add_pair(widget.val_data, "other", "other labels")
    widget.settings.epochs_spin.setValue(3)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(widget.run_folder) is not None
    assert stars == [1, None]
    assert widget.plot.best_epoch == 3 and widget.result.best_epoch == 2  # chosen anew
