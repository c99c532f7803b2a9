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


def test_continue_names_the_settings_it_keeps_when_they_could_not_start_a_run(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tiny_checkpoint, tmp_path, notifications
):
    """Continue… compared the run's settings with the config Start would build, and said
    nothing when Start would refuse it: objects per batch beyond the preset, or another
    model file since moved, went unmentioned though the run kept its own."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    folder = _run_once(qtbot, widget, tmp_path / "runs")
    settings = widget.settings
    settings.epochs_spin.setValue(2)
    settings.objects_spin.setValue(10000)  # more than the preset fits: Start refuses it
    assert "n_objects_per_batch=10000" in _start_refusal(widget)
    notifications.clear()
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    assert widget.result is not None and widget.result.epochs_done == 2
    kept = [w for w in _warnings(notifications) if "continues with its own" in w]
    assert len(kept) == 1 and "objects per batch (2; 10000 set here)" in kept[0]

    other = tmp_path / "other.pth"
    _with_own_weights(qtbot, widget, tiny_checkpoint, other)
    settings.objects_spin.setValue(2)
    settings.epochs_spin.setValue(3)
    other.unlink()  # the model chosen here is gone: Start refuses it
    notifications.clear()
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    kept = [w for w in _warnings(notifications) if "continues with its own" in w]
    assert len(kept) == 1 and f"model ({tiny_checkpoint}; {other} set here)" in kept[0]
    assert "objects per batch" not in kept[0]


def _start_refusal(widget) -> str:
    """Press Start, which must refuse; the message under the model."""
    assert widget.start() is None
    return widget.settings.settings_error.text()


def test_continue_with_no_model_chosen_here_still_names_what_the_run_keeps(finetune_on_cells):
    """Settings that make no config at all (the file entry chosen, no path typed): the
    warning still lists what the continued run keeps, and why nothing was compared."""
    from napari_samtune._qt.model_picker import FILE_ENTRY
    from napari_samtune._qt.train_continue import kept_settings_warning
    from napari_samtune.core.presets import TrainConfig

    _, widget = finetune_on_cells(1)
    widget.settings.model_picker.select_model(FILE_ENTRY)
    widget.settings.model_picker.path_edit.setText("")
    message = kept_settings_warning(widget.settings, TrainConfig(model="vit_b"))
    assert message.startswith("the run continues with its own model, preset, objects per")
    assert "could not be compared" in message and "no checkpoint file chosen" in message
