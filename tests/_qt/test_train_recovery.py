"""The training widget when things go wrong or are taken back: damaged run folders for
Continue…, red messages once their cause is fixed, a Start cancelled while it waits for the
folder check, Stop before the first training step, a run folder that another run holds, and a
disk that fills at the first last.pt.

Runs use the tiny model (one epoch of two patches, frozen encoder) in a real viewer.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import tifffile

from napari_samtune._qt.continued_runs import past_epochs
from napari_samtune._qt.train_run import TRAIN_TASK
from napari_samtune._qt.train_settings import READ_TASK
from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.config_checks import MODEL_PARTS
from napari_samtune.core.presets import MachineResources, TrainConfig
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.run_lock import TRAINING_LOCK_NAME, training_lock

WAIT_MS = 120_000
SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


@pytest.fixture
def widget(qtbot, cells_viewer, use_tiny_model, tmp_path):
    """A docked training widget set for one tiny epoch; two layer pairs in the viewer, none
    added yet."""
    viewer = cells_viewer()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    viewer.window.add_dock_widget(widget, name="Finetune SAM")
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    widget.use_model_check.setChecked(False)
    yield widget
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)


def _add_pair(widget: TrainWidget, i: int) -> bool:
    widget.train_data.image_combo.setCurrentText(f"cells{i}")
    widget.train_data.labels_combo.setCurrentText(f"cells{i} labels")
    return widget.train_data.add_current_pair()


def _run_folder(tmp_path, config: dict, metrics: str):
    """A run folder as training leaves it, with the given config.json and metrics.jsonl;
    Continue… refuses a damaged one before reading the checkpoint."""
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"not read before the checks")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text(metrics)
    return folder


GOOD_RECORD = '{"epoch": 0, "train_loss": 0.5, "val_metrics": {"val_iou": 0.4}, "is_best": true}\n'


@pytest.mark.parametrize(
    "config_change, metrics, named",
    [
        ({}, '{"epoch": 0}\n', ["line 1 of", "metrics.jsonl", "no 'train_loss'"]),
        ({}, GOOD_RECORD + "null\n", ["line 2 of", "metrics.jsonl", "it holds null"]),
        ({"freeze": 5}, GOOD_RECORD, ["config.json", "freeze=5", repr(list(MODEL_PARTS))]),
    ],
    ids=["record without train_loss", "null line", "freeze not a list"],
)
def test_continue_on_a_damaged_run_folder_says_which_file_and_what_to_do(
    qtbot, widget, tmp_path, monkeypatch, notifications, config_change, metrics, named
):
    from qtpy.QtWidgets import QFileDialog

    assert _add_pair(widget, 0)
    config = asdict(TrainConfig(model="random:tiny", epochs=1)) | config_change
    folder = _run_folder(tmp_path, config, metrics)
    widget.settings.epochs_spin.setValue(3)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args: str(folder))
    widget.continue_button.click()  # an exception here would fail the test (pytest-qt)
    errors = [m for m in notifications if m.startswith("cannot start training")]
    assert len(errors) == 1 and all(part in errors[0] for part in named)
    fix = "correct that field" if config_change else "restore the file the run wrote"
    assert fix in errors[0]
    assert widget.settings.settings_error.text() in errors[0]
    assert not widget.is_running and widget.continue_button.isEnabled()  # still usable
    assert widget.start_button.isEnabled()


def test_past_epochs_keep_a_diverged_loss_and_end_at_a_half_written_line(tmp_path):
    record = json.loads(GOOD_RECORD) | {"epoch": 1, "train_loss": None, "is_best": False}
    folder = _run_folder(tmp_path, {}, GOOD_RECORD + json.dumps(record) + '\n{"epo')
    first, second = past_epochs(folder)
    assert (first.epoch, first.train_loss, first.val_iou) == (0, 0.5, 0.4)
    assert second.epoch == 1 and second.train_loss != second.train_loss  # NaN: null on disk


def test_past_epochs_skip_an_empty_line(tmp_path):
    """An empty line (the file saved in an editor) ended the list: the epochs after it
    were missing from the plot of a continued run."""
    record = json.loads(GOOD_RECORD) | {"epoch": 1, "is_best": False}
    folder = _run_folder(tmp_path, {}, GOOD_RECORD + "\n  \n" + json.dumps(record) + "\n")
    assert [epoch.epoch for epoch in past_epochs(folder)] == [0, 1]


def test_red_messages_clear_once_their_cause_is_fixed(qtbot, widget):
    data, settings_error = widget.train_data, widget.settings.settings_error
    assert widget.start() is None  # no data yet
    assert data.list_error.isVisibleTo(widget) and widget.start_error.isVisibleTo(widget)
    assert _add_pair(widget, 0)  # fixed: both messages go at once
    assert not data.list_error.isVisibleTo(widget)
    assert not widget.start_error.isVisibleTo(widget)

    widget.settings.name_edit.setText("bad/name")
    assert not widget.settings.advanced.isExpanded()
    assert widget.start() is None and "'bad/name' is not allowed" in settings_error.text()
    # named once, and in view: the message shows under the model picker, the field in
    # Advanced (it said "new model name: model_name='bad/name'")
    assert settings_error.text().startswith("new model name 'bad/name' is not allowed")
    assert widget.settings.advanced.isExpanded()
    widget.settings.name_edit.setText("good_name")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
        assert not settings_error.isVisibleTo(widget)  # gone with the successful Start
    folder = widget.run_folder

    assert widget.continue_run(folder) is None  # 1 epoch set, 1 done
    assert "set epochs above that" in settings_error.text()
    widget.settings.epochs_spin.setValue(2)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
        assert not settings_error.isVisibleTo(widget)  # gone with the successful Continue
    assert widget.result.epochs_done == 2


def test_a_run_continued_with_a_gpu_preset_chosen_on_a_cpu_machine_trains_on_the_cpu(
    qtbot, widget, monkeypatch
):
    """The run keeps its own preset, but its device came from the one chosen in the panel:
    an A100's cuda on a machine without CUDA, and the run failed saying to use device
    'auto', which the picker said already."""
    from napari_samtune.core import devices

    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert _add_pair(widget, 0)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    combo = widget.settings.preset_combo
    combo.setCurrentIndex([combo.itemText(i) for i in range(combo.count())].index("A100"))
    assert widget.settings.device() == "cuda"  # the chosen preset's
    widget.settings.epochs_spin.setValue(2)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(widget.run_folder) is not None
    assert widget.result is not None and widget.result.epochs_done == 2


def test_separate_validation_ticked_but_not_added_is_refused(qtbot, widget, notifications):
    """A pair chosen in the validation combo boxes but never added trained on a held-out
    share of the training data instead, without a word."""
    assert _add_pair(widget, 0)
    widget.separate_val_check.setChecked(True)
    val = widget.val_data
    val.image_combo.setCurrentText("cells1")
    val.labels_combo.setCurrentText("cells1 labels")  # "Add pair" not clicked
    assert widget.start() is None and not widget.is_running
    assert "or validation folders" in val.list_error.text()
    assert val.list_error.isVisibleTo(widget) and widget.start_error.isVisibleTo(widget)
    assert any("cannot start training: add at least one" in m for m in notifications)
    assert val.add_current_pair()
    assert not val.list_error.isVisibleTo(widget) and not widget.start_error.isVisibleTo(widget)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert widget.result.epochs_done == 1


def test_stop_cancels_a_start_that_waits_for_the_folder_check(qtbot, widget, tmp_path):
    for kind, layer in (("images", "cells0"), ("labels", "cells0 labels")):
        (tmp_path / kind).mkdir()
        tifffile.imwrite(tmp_path / kind / "a.tif", widget.viewer.layers[layer].data)
    widget.train_data.image_dir_edit.setText(str(tmp_path / "images"))
    widget.train_data.labels_dir_edit.setText(str(tmp_path / "labels"))
    started = []
    widget.training_started.connect(started.append)
    assert widget.start() is None  # waits for the check of the folders
    assert widget.stop_button.isEnabled() and not widget.start_button.isEnabled()
    assert "Stop cancels" in widget.status_label.text()
    widget.stop_button.click()
    assert "start cancelled" in widget.status_label.text()
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    qtbot.waitSignal(widget.train_data.folders_checked, timeout=WAIT_MS).wait()
    assert not widget.is_running and not widget.runner.is_running(TRAIN_TASK)
    assert widget.train_data.check_folders() is True  # the check itself went on
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None  # checked: a new Start runs at once
    assert len(started) == 1 and widget.result.epochs_done == 1


def test_stop_before_the_first_step_registers_no_model(qtbot, widget, notifications):
    assert _add_pair(widget, 0)
    with qtbot.waitSignal(widget.training_finished, timeout=WAIT_MS) as finished:
        assert widget.start() is not None
        widget.stop()  # while the model loads
        stopping = "stopping before the first training step: nothing to save"
        assert widget.status_label.text() == stopping  # not "saving and exporting the model"
        qtbot.waitSignal(widget.training_started, timeout=WAIT_MS).wait()
        assert widget.status_label.text() == stopping  # not "training on cpu: ..."
    result = finished.args[0]
    assert result.registered_name is None and not list(user_models_dir().glob("*.json"))
    assert result.stopped_by_user and result.steps_done == 0
    assert not list(widget.settings.output_folder().rglob("model.pth"))
    message = "training stopped before any training step; no model saved"
    assert widget.result_label.text() == message and message in notifications
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=WAIT_MS)
    assert widget.run_folder is None  # no folder made: none for Continue…'s dialog to open


def test_an_unusable_user_models_folder_is_not_called_a_bad_model_name(
    widget, tmp_path, monkeypatch
):
    taken = tmp_path / "models-file"
    taken.write_text("a file where the user-models folder should be")
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(taken))
    assert _add_pair(widget, 0)
    assert widget.start() is None
    text = widget.settings.settings_error.text()
    assert text.startswith(f"the user models folder {str(taken)!r}")
    assert "set SAMTUNE_MODELS_DIR to a folder you can write to" in text


def test_continue_takes_the_learning_rate_set_as_a_diverged_run_is_told_to(qtbot, widget):
    """A diverged run says to resume "with a lower learning_rate" and the widget points at
    Continue…, which kept the run's own learning rate whatever was set: it diverged again."""
    from napari_samtune.core.train import StepDone

    assert _add_pair(widget, 0)
    widget.settings.lr_edit.setText("0.001")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert widget.result.epochs_done == 1
    widget.settings.lr_edit.setText("1e-4")  # what the divergence message proposes
    widget.settings.epochs_spin.setValue(2)
    steps = []
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        worker = widget.continue_run(widget.run_folder)
        worker.yielded.connect(lambda e: steps.append(e) if isinstance(e, StepDone) else None)
    assert widget.started.config.learning_rate == 1e-4 and widget.result.epochs_done == 2
    assert steps and steps[0].learning_rate == 1e-4  # the optimizer's, not only the config's


def test_start_while_the_weights_file_is_read_starts_once_it_is_read(
    qtbot, widget, tiny_checkpoint, tmp_path, notifications
):
    """Start pressed while a chosen weights file was still being read was refused with
    "cannot start training: reading <file>…" and "fix the problems marked in red", where
    there was nothing to fix but to wait and press Start again."""
    assert _add_pair(widget, 0)
    other = tmp_path / "other.pth"
    other.write_bytes(tiny_checkpoint.read_bytes())
    widget.settings.model_picker.select_model(str(other))  # read in the background
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS) as started:
        assert widget.start() is None
        assert "reading the model file" in widget.status_label.text()
        assert widget.stop_button.isEnabled() and not widget.start_button.isEnabled()
    assert started.args[0].config.model == str(other)
    assert not any("cannot start" in m for m in notifications)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        widget.stop()  # the model's own defaults (100 epochs): not waited for


def _contents(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_continue_into_a_folder_another_run_is_training_in_is_refused(
    qtbot, widget, tmp_path, monkeypatch, notifications
):
    """``samtune train`` holds its folder; the widget's runs did not ask, so Continue… (or
    a second window) wrote into the folder of a run that was still training."""
    assert _add_pair(widget, 0)
    config = asdict(TrainConfig(model="random:tiny", epochs=1))
    folder = _run_folder(tmp_path, config, GOOD_RECORD)
    before = _contents(folder)
    widget.settings.epochs_spin.setValue(3)
    widget.plot.add_epoch(1, 0.5, 0.7, is_best=True)  # the run before, in view
    widget.result_label.setText("the run before's result")
    with training_lock(folder):  # as a run in another process holds it
        assert widget.continue_run(folder) is None  # refused before it began
        assert _contents(folder).keys() - before.keys() == {Path(TRAINING_LOCK_NAME)}
    assert _contents(folder) == before  # nothing of the refused run written
    assert (widget.plot.epochs, widget.plot.best_epoch) == ([1], 1)  # its plot kept
    assert widget.result_label.text() == "the run before's result"
    assert widget.run_folder != folder  # Continue…'s dialog still opens where it did
    shown = widget.settings.settings_error.text()
    assert shown.startswith(f"the run {str(folder)!r} is in use by another training run (process ")
    assert ": this napari, another Finetune panel)" in shown
    assert shown.endswith("still going; wait for it to finish, then continue it")
    assert widget.start_error.isVisibleTo(widget)
    assert any("is in use by another training run" in m for m in notifications)
    assert "training failed" not in widget.result_label.text()  # it never began
    assert widget.continue_button.isEnabled() and widget.start_button.isEnabled()
    assert not widget.stop_button.isEnabled()


def test_continue_into_a_run_still_in_its_first_epoch_says_it_is_in_use(
    qtbot, widget, tmp_path, notifications
):
    """A run in its first epoch has written no last.pt yet: Continue… into it said the
    folder "holds no training run to continue" (made by Start, it is one, and running)."""
    assert _add_pair(widget, 0)
    folder = _run_folder(tmp_path, asdict(TrainConfig(model="random:tiny", epochs=1)), "")
    (folder / "checkpoints" / "last.pt").unlink()
    widget.settings.epochs_spin.setValue(3)
    with training_lock(folder):  # the run training there
        assert widget.continue_run(folder) is None
    shown = widget.settings.settings_error.text()
    assert "is in use by another training run" in shown, shown
    assert not any("holds no training run" in m for m in notifications)


def test_a_folder_taken_after_the_start_was_checked_is_refused_by_the_run(
    qtbot, widget, tmp_path, monkeypatch, notifications
):
    """Another run may take the folder between Continue…'s check and the run: the run's own
    hold on it refuses it then, shown as a refused Start, not as a failed run."""

    import napari_samtune._qt.train_request as train_request

    monkeypatch.setattr(train_request, "check_not_in_use", lambda *args: None)  # too late
    assert _add_pair(widget, 0)
    folder = _run_folder(tmp_path, asdict(TrainConfig(model="random:tiny", epochs=1)), GOOD_RECORD)
    before = _contents(folder)
    widget.settings.epochs_spin.setValue(3)
    with training_lock(folder):
        with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
            assert widget.continue_run(folder) is not None
    assert _contents(folder) == before
    assert widget.run_folder is None  # as when refused before the run: not this run's folder
    shown = widget.settings.settings_error.text()  # in the panel's words, as before Start
    assert shown.startswith(f"the run {str(folder)!r} is in use by another training run (process ")
    assert ": this napari, another Finetune panel)" in shown and "then continue it" in shown
    assert widget.start_error.isVisibleTo(widget)
    assert "training failed" not in widget.result_label.text()
    assert widget.continue_button.isEnabled() and not widget.stop_button.isEnabled()


def test_start_on_a_full_disk_is_no_traceback_but_a_failed_run_naming_the_fix(
    qtbot, widget, monkeypatch
):
    """Start's check of the folder took the run's lock, writing into the folder: on a full
    disk "OSError: [Errno 28] No space left on device" raised out of Start, with no path.
    The check only reads now; the run itself says where the disk is full."""
    from napari_samtune.core import run_lock

    real = run_lock._write_holder
    monkeypatch.setattr(run_lock, "_write_holder", lambda lock, path: real(_FullFile(), path))
    assert _add_pair(widget, 0)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None  # no exception out of the button's handler
    shown = widget.result_label.text()
    assert shown.startswith("training failed: could not write ") and ".samtune-train.lock" in shown
    assert "no space left on the device holding" in shown, shown
    assert widget.start_button.isEnabled()


class _FullFile:
    """An open file on a full disk: writing raises ENOSPC."""

    def seek(self, offset: int) -> None:
        pass

    def truncate(self) -> None:
        pass

    def write(self, text: str) -> int:
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass


def test_a_run_holds_its_folder_until_it_ends(qtbot, widget):
    """A ``samtune train`` into the folder of a run the widget is training is refused."""
    assert _add_pair(widget, 0)
    widget.settings.epochs_spin.setValue(50)
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        assert widget.start() is not None
    folder = widget.run_folder
    with pytest.raises(ValueError, match="is in use by another training run"):
        with training_lock(folder):
            pass
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        widget.stop()
    with training_lock(folder):  # free once the run has ended
        pass


def test_a_full_disk_at_the_first_last_pt_says_where_the_best_weights_are(
    qtbot, widget, disk_full_at_last_pt
):
    """The disk fills between the first epoch's best.pt and its last.pt: the result says
    where the weights are and how to use them, and does not offer Continue…, which needs a
    last.pt."""
    disk_full_at_last_pt()
    assert _add_pair(widget, 0) and _add_pair(widget, 1)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    best = widget.run_folder / "checkpoints" / "best.pt"
    assert best.is_file() and not best.with_name("last.pt").exists()
    text = widget.result_label.text()
    assert text.startswith("training failed") and "no space left" in text
    assert f"the weights of its best epoch are in {best}: to use them, choose" in text
    assert "Continue…" not in text
    settings = widget.settings
    settings.model_picker.select_model(str(best))  # as the advice says: it reads as a model
    qtbot.waitUntil(lambda: not settings.runner.is_running(READ_TASK), timeout=WAIT_MS)
    assert settings.architecture() is not None and not settings.settings_error.text()
