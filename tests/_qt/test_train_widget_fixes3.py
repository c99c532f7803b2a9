"""The Finetune widget's run display: the plot with non-finite losses, and the progress
bar's text at the start of a new run."""

from __future__ import annotations

import math

import pytest

from napari_samtune._qt.train_plot import TrainingPlotWidget

WAIT_MS = 120_000


@pytest.fixture
def plot(qtbot):
    widget = TrainingPlotWidget()
    qtbot.addWidget(widget)
    return widget


def _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model):
    """A Finetune widget with two image/labels pairs added and a tiny model for 1 epoch."""
    viewer, widget = finetune_on_cells(2)
    for i in range(2):
        assert add_pair(widget.train_data, f"cells{i}", f"cells{i} labels")
    use_tiny_model(widget, epochs=1)
    return widget


def _run_once(qtbot, widget, out_dir):
    """Train the widget's run into ``out_dir`` (not used in the viewer) to its end; returns
    the run's folder."""
    widget.settings.out_dir_edit.setText(str(out_dir))
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    return widget.run_folder


def test_an_infinite_loss_leaves_the_plot_drawing(plot):
    """fp16 training (its gradient scaler skips the step) reports an overflowed loss as inf:
    the axes raised 'Axis limits cannot be NaN or Inf' at that step and at every later one."""
    plot.add_step(1, 1, 2, math.inf)
    plot.add_step(1, 2, 2, 3.0)
    plot.add_epoch(1, math.inf, 0.5, is_best=True)
    assert 3.0 <= plot.loss_axes.get_ylim()[1] < math.inf
    assert plot.step_losses == [math.inf, 3.0] and plot.metric_values == [0.5]


def test_a_nan_loss_first_does_not_stop_the_loss_axis_growing(plot):
    """A continued run whose first epoch's loss was saved as null: NaN first made max()
    NaN, so later losses above the axis were drawn off the plot."""
    plot.add_epoch(1, math.nan, None)
    plot.add_epoch(2, 5.0, None)
    assert plot.loss_axes.get_ylim()[1] >= 5.0


def test_the_step_curve_drawn_stays_short_however_long_the_run(plot):
    """Every step redrew every step so far: at 10,000 steps each cost 10-25 ms of the event
    loop. Drawn: at most MAX_STEP_POINTS points, means of the steps they stand for."""
    from napari_samtune._qt.train_plot import MAX_STEP_POINTS

    n_steps, epochs = 400, 25
    for epoch in range(1, epochs + 1):
        for step in range(1, n_steps + 1):
            plot.add_step(epoch, step, n_steps, 1.0 + (step % 2))  # 1, 2, 1, 2, ...
    x, y = plot._lines["steps"].get_data()
    assert len(plot.step_losses) == n_steps * epochs  # all kept
    assert MAX_STEP_POINTS // 2 <= len(x) <= MAX_STEP_POINTS + 1
    assert x[-1] == epochs and x[0] < 0.1  # the whole run, to its last step
    assert all(1.0 <= value <= 2.0 for value in y) and y[100] == 1.5  # means of 1s and 2s
    shown = sum(
        loss * count for loss, count in zip(plot._shown_losses, plot._shown_counts, strict=True)
    )
    pending = [loss for _, loss in plot._pending]
    assert sum(plot._shown_counts) + len(pending) == n_steps * epochs  # every step in one
    assert shown + sum(pending) == pytest.approx(sum(plot.step_losses))
    plot.add_step(epochs + 1, 1, n_steps, math.nan)
    assert math.isnan(plot._lines["steps"].get_data()[1][-1])  # shown, as a gap
    plot.clear()
    plot.add_step(1, 1, 2, 0.5)
    assert list(plot._lines["steps"].get_data()[1]) == [0.5]


def test_a_new_run_s_bar_does_not_show_the_last_run_s_epoch(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path
):
    """The bar kept the last run's "epoch 1/1 · step 2/2 · ETA 0:00" until the next run's
    first training event: a model download before it (a built-in model trained for the
    first time) showed its bytes under that text instead of its percent."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    _run_once(qtbot, widget, tmp_path / "runs")
    assert widget.progress_bar.format().startswith("epoch 1/1")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
        assert widget.progress_bar.format() == "%p%"  # before the run's first event
    assert widget.result is not None and widget.result.epochs_done == 1


def test_a_file_named_as_the_new_model_in_the_output_folder_is_stepped_around(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path
):
    """Start raised NotADirectoryError (a traceback, no word in the widget) when the output
    folder held a file named as the model typed: the run goes to <name>-2 beside it."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mine").write_text("a person's notes")
    widget.settings.out_dir_edit.setText(str(runs))
    widget.settings.name_edit.setText("mine")
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert widget.run_folder == runs / "mine-2"
    assert widget.result.registered_name == "mine"
    assert widget.result.exported_model_path == runs / "mine-2" / "model.pth"
    assert (runs / "mine").read_text() == "a person's notes"


def test_continue_in_a_read_only_run_folder_is_refused_with_what_to_do(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, monkeypatch, notifications
):
    """A run folder that cannot be written (another person's run on a read-only share) was
    not checked by Continue…: for a user who is not root, taking the run's lock file raised
    PermissionError on the main thread (a traceback, nothing in the widget); here, where the
    lock is taken, the run started, cleared the plot and failed saying 'give a folder
    (created if missing)'. It is now refused at once, saying to continue a copy."""
    import os

    from napari_samtune.core import checkpoints

    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    _run_once(qtbot, widget, tmp_path / "runs")
    folder = widget.run_folder
    assert (folder / "checkpoints" / "last.pt").is_file()
    writable = os.access  # root may write anywhere: the folder is made read-only to access()

    def access(path, mode, **kwargs):
        read_only = mode & os.W_OK and os.path.realpath(path) == str(folder.resolve())
        return False if read_only else writable(path, mode, **kwargs)

    monkeypatch.setattr(checkpoints.os, "access", access)
    widget.settings.epochs_spin.setValue(2)
    assert widget.continue_run(folder) is None and not widget.is_running
    error = widget.settings.settings_error.text()
    assert "cannot be continued in its folder" in error and "read-only" in error
    assert "continue the copy" in error
    assert any("cannot start training: the run in" in n for n in notifications)
