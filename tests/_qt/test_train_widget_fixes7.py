"""The Finetune widget: a weights file moved after it was read, and what Continue… says it
keeps when the settings here cannot start a run."""

from __future__ import annotations

import shutil

from tests._qt.test_train_widget_fixes3 import WAIT_MS, _run_once, _two_pairs_one_epoch


def _warnings(notifications) -> list[str]:
    return [str(n) for n in notifications if n.severity == "warning"]


def _errors(notifications) -> list[str]:
    return [str(n) for n in notifications if n.severity == "error"]


def _with_own_weights(qtbot, widget, tiny_checkpoint, path):
    """Choose a copy of the tiny weights at ``path`` as the widget's model, read."""
    shutil.copy(tiny_checkpoint, path)
    settings = widget.settings
    settings.model_picker.select_model(str(path))
    qtbot.waitUntil(lambda: not settings.runner.is_running(), timeout=WAIT_MS)
    assert settings.architecture() is not None


def test_a_weights_file_moved_after_it_was_read_is_refused_at_start(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tiny_checkpoint, tmp_path, notifications
):
    """The file's architecture, read once, stood for the file: moved or deleted before Start,
    the run began and failed in the worker ("training failed: ... Check the path"). Start is
    refused now, naming the file and the fix under the model; the last run stays shown."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    weights = tmp_path / "mine.pth"
    _with_own_weights(qtbot, widget, tiny_checkpoint, weights)
    folder = _run_once(qtbot, widget, tmp_path / "runs")
    plotted = list(widget.plot.step_losses)
    assert folder is not None and plotted
    weights.rename(tmp_path / "moved.pth")

    assert widget.start() is None
    assert not widget.is_running and widget.run_folder == folder
    assert widget.plot.step_losses == plotted
    shown = widget.settings.settings_error.text()
    assert repr(str(weights)) in shown and "does not exist" in shown and "Browse…" in shown
    assert any(repr(str(weights)) in e for e in _errors(notifications))
    assert widget.start_error.text()

    (tmp_path / "moved.pth").rename(weights)  # put back: Start is accepted again
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert widget.result is not None and not widget.settings.settings_error.text()
