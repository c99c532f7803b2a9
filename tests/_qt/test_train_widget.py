"""The training widget in a real viewer: annotate -> train -> re-apply, with the tiny model.

Runs are tiny (2 patches per epoch, frozen encoder, small images) so the file
stays fast; what is checked is the loop itself: progress and plot follow the
core's events, the result is registered and offered to the annotation widget
and segments, Stop leaves a loadable model, the event loop stays responsive,
bad data is flagged before Start, and worker errors reach the user.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import QTimer

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.layer_pairs import layer_pairs
from napari_samtune._qt.train_progress import format_duration
from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.architectures import TINY
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.presets import MachineResources
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.user_models import register_user_model

WAIT_MS = 120_000
SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


@pytest.fixture
def viewer(cells_viewer):
    return cells_viewer(3, 96)


@pytest.fixture
def docked(qtbot, viewer, use_tiny_model):
    """(viewer, annotation widget, training widget), both docked, two layer pairs added."""
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate with SAM")
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    viewer.window.add_dock_widget(widget, name="Finetune SAM")
    for i in range(2):
        widget.train_data.image_combo.setCurrentText(f"cells{i}")
        widget.train_data.labels_combo.setCurrentText(f"cells{i} labels")
        assert widget.train_data.add_current_pair()
    use_tiny_model(widget, epochs=2)
    yield viewer, annotate, widget
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    # Removing the layers makes the annotation widget detach; let its jobs end before
    # the viewer closes, so none reports back to a deleted widget.
    viewer.layers.clear()
    qtbot.waitUntil(lambda: not annotate.runner.is_running(), timeout=WAIT_MS)


class LagProbe:
    """A 20 ms QTimer; records how late each tick fires (a blocked event loop shows here)."""

    def __init__(self, interval_ms: int = 20) -> None:
        self.interval = interval_ms / 1000
        self.lags: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self._last = time.perf_counter()
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.lags.append(now - self._last - self.interval)
        self._last = now

    def stop(self) -> float:
        self.timer.stop()
        return max(self.lags)


def test_train_two_epochs_then_annotate_with_the_new_model(
    qtbot, docked, notifications, better_each_epoch
):
    viewer, annotate, widget = docked
    widget.separate_val_check.setChecked(True)
    widget.val_data.image_combo.setCurrentText("cells2")
    widget.val_data.labels_combo.setCurrentText("cells2 labels")
    assert widget.val_data.add_current_pair()
    before = {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}
    epochs_seen = []
    widget.epoch_done.connect(
        lambda _e: epochs_seen.append((widget.progress_bar.value(), widget.progress_bar.format()))
    )
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS) as started:
        worker = widget.start()
    assert worker is not None
    # the test process's garbage (earlier tests' viewers) took Python's full collection to
    # 180-350 ms here, which a probe then counted against the panel (2 of 7 runs failed)
    gc.collect()
    probe = LagProbe()
    assert widget.start() is None  # a second Start while running is refused ...
    assert any("already running" in message for message in notifications)  # ... and said so
    with qtbot.waitSignal(widget.training_finished, timeout=WAIT_MS) as finished:
        pass
    max_lag = probe.stop()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)

    assert (started.args[0].n_train, started.args[0].n_val) == (2, 1)  # cells2 validates
    steps = started.args[0].steps_per_epoch
    assert widget.progress_bar.maximum() == 2 * steps
    assert [value for value, _ in epochs_seen] == [steps, 2 * steps]
    assert "epoch 1/2" in epochs_seen[0][1] and "ETA" in epochs_seen[0][1]
    plot = widget.plot
    assert plot.epochs == [1, 2] and len(plot.step_losses) == 2 * steps
    assert plot.metric_epochs == [0, 1, 2] and all(np.isfinite(plot.metric_values))
    assert [len(line.get_xdata()) for line in plot.loss_axes.lines] == [2 * steps, 2]
    assert len(plot.metric_axes.lines[0].get_ydata()) == 3  # from the score before training

    result = finished.args[0]
    assert not result.stopped_by_user and result.epochs_done == 2
    assert result.exported_model_path.is_file()
    assert result.registered_name in annotate.ui.model_picker.model_names()
    assert any(str(result.exported_model_path) in message for message in notifications)
    qtbot.waitUntil(lambda: annotate.model_name == result.registered_name, timeout=WAIT_MS)

    image = viewer.layers["cells0"].data
    segmenter = Segmenter(load_model(result.registered_name).sam)
    segmenter.set_image(image)
    mask = segmenter.predict(box_xyxy=np.array([10, 10, 60, 60])).mask
    assert mask.shape == image.shape and mask.dtype == bool

    for name, data in before.items():  # the user's layers are untouched
        np.testing.assert_array_equal(viewer.layers[name].data, data)
    assert max_lag < 0.2, f"the event loop was blocked for {max_lag * 1000:.0f} ms"


def test_a_model_no_better_than_before_training_is_said_to_be(
    qtbot, docked, notifications, monkeypatch
):
    from napari_samtune.core.trainer import Trainer

    monkeypatch.setattr(Trainer, "_optimizer_step", lambda self, batches, epoch: 0.5)
    _, annotate, widget = docked
    formats = []
    widget.training_started.connect(lambda _e: formats.append(widget.progress_bar.format()))
    with qtbot.waitSignal(widget.training_finished, timeout=WAIT_MS) as finished:
        widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    result = finished.args[0]
    assert formats == ["scoring the model before training on 1 validation image(s)"]
    assert widget.plot.metric_epochs[0] == 0
    assert widget.plot.metric_values[0] == result.start_metric == result.best_metric
    assert f"val_iou {result.start_metric:.3f} before training" in widget.result_label.text()
    assert any("scores no better on the validation images" in m for m in notifications)
    # the warning says to keep using the model it started from: it was loaded in its place
    qtbot.waitUntil(lambda: not annotate.runner.is_running(), timeout=WAIT_MS)
    assert annotate.model_name != result.registered_name
    assert result.registered_name in annotate.ui.model_picker.model_names()
    assert widget.result_label.text().endswith(
        "added to the annotation widget's model list; not loaded there, as it scores no "
        "better than the model it started from: to try it, choose it there and press Load model"
    )


def test_why_a_finished_model_is_not_loaded_for_annotation():
    """A run stopped in its first epoch completed none, and one that scores no better than
    its start is worse to annotate with than the model in use (which it replaced)."""
    import math
    from pathlib import Path

    from napari_samtune._qt.train_progress import _not_to_use
    from napari_samtune.core.train import TrainingFinished

    ended = TrainingFinished(
        best_epoch=1, best_metric=0.7, metric_name="val_iou", time_to_best_s=1.0,
        total_time_s=2.0, epochs_done=2, best_checkpoint_path=Path("best.pt"),
        last_checkpoint_path=Path("last.pt"), exported_model_path=Path("model.pth"),
        registered_name="mine", stopped_early=False, stopped_by_user=False, steps_done=4,
        start_metric=0.5,
    )  # fmt: skip
    assert _not_to_use(ended) == ""
    stopped = dataclasses.replace(ended, best_epoch=None, best_metric=math.nan, epochs_done=0)
    assert _not_to_use(stopped) == "it completed no epoch"
    worse = dataclasses.replace(ended, best_metric=0.5)
    assert _not_to_use(worse) == "it scores no better than the model it started from"
    random = dataclasses.replace(worse, from_random=True)
    assert _not_to_use(random) == "it scores no better than the random weights it started from"


def test_stop_mid_run_leaves_a_loadable_model(qtbot, docked, tmp_path, notifications):
    viewer, annotate, widget = docked
    for kind, layer in (("images", "cells2"), ("labels", "cells2 labels")):
        (tmp_path / kind).mkdir()
        tifffile.imwrite(tmp_path / kind / "c2.tif", viewer.layers[layer].data)
        tifffile.imwrite(tmp_path / kind / "empty.tif", np.zeros((96, 96), np.uint8))
    widget.train_data.image_dir_edit.setText(str(tmp_path / "images"))
    widget.train_data.labels_dir_edit.setText(str(tmp_path / "labels"))
    widget.settings.epochs_spin.setValue(50)
    widget.settings.samples_spin.setValue(4)
    widget.use_model_check.setChecked(False)
    widget.separate_val_check.setChecked(True)  # on a training pair: warned about
    widget.val_data.image_combo.setCurrentText("cells0")
    widget.val_data.labels_combo.setCurrentText("cells0 labels")
    assert widget.val_data.add_current_pair()
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS) as started:
        assert widget.start() is None  # it starts by itself once the folders are checked
    assert (started.args[0].n_train, started.args[0].n_val) == (3, 1)  # 2 layer + 1 file pair
    assert started.args[0].left_out == ("empty.tif / empty.tif",)  # an empty field of view
    assert any("left out 1 pair(s) without any object" in m for m in notifications)
    assert started.args[0].val_repeats == ("cells0 / cells0 labels",)
    assert any("1 of 1 validation pair(s) are also training pairs" in m for m in notifications)
    qtbot.waitUntil(lambda: len(widget.plot.step_losses) >= 1, timeout=WAIT_MS)
    with qtbot.waitSignal(widget.training_finished, timeout=WAIT_MS) as finished:
        widget.stop()
        assert not widget.stop_button.isEnabled()
        assert widget.status_label.text().endswith("saving and exporting the model…")
    result = finished.args[0]
    assert result.stopped_by_user and result.epochs_done < 50
    bar = widget.progress_bar.format()  # a stopped run's time to go was left shown
    assert bar.startswith("epoch ") and " · step " in bar and "ETA" not in bar
    loaded = load_model(result.exported_model_path)
    assert loaded.architecture.name == "tiny"
    assert load_model(result.registered_name).model_id == loaded.model_id
    assert result.registered_name in annotate.ui.model_picker.model_names()
    assert annotate.model_name is None  # "use the new model" was off: nothing loaded
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=WAIT_MS)


def _long_run_started(qtbot, widget) -> None:
    widget.settings.epochs_spin.setValue(50)
    widget.use_model_check.setChecked(False)
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        widget.start()
    qtbot.waitUntil(lambda: len(widget.plot.step_losses) >= 1, timeout=WAIT_MS)


def test_continue_resumes_a_stopped_run_in_its_folder(qtbot, docked, tmp_path):
    _, _, widget = docked
    _long_run_started(qtbot, widget)
    qtbot.waitSignal(widget.epoch_done, timeout=WAIT_MS).wait()  # a history to plot again
    with qtbot.waitSignal(widget.training_finished, timeout=WAIT_MS) as first:
        widget.stop()
    stopped, folder, first_config = first.args[0], widget.run_folder, widget.started.config
    qtbot.waitUntil(lambda: widget.continue_button.isEnabled(), timeout=WAIT_MS)
    widget.settings.freeze_checks["image_encoder"].setChecked(False)  # the run keeps its own
    saved = json.loads((folder / "config.json").read_text())  # as if trained on a GPU machine
    (folder / "config.json").write_text(json.dumps({**saved, "device": "cuda:7"}))
    widget.settings.epochs_spin.setValue(stopped.epochs_done + 1)
    results = []
    widget.training_finished.connect(results.append)
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS) as started:
        assert widget.continue_run(folder) is not None
    qtbot.waitUntil(lambda: bool(results) and not widget.is_running, timeout=WAIT_MS)
    resumed = results[0]
    assert started.args[0].start_epoch == stopped.epochs_done
    assert stopped.epochs_done >= 1
    assert widget.plot.epochs[: stopped.epochs_done] == list(range(1, stopped.epochs_done + 1))
    assert started.args[0].config.freeze == first_config.freeze
    assert started.args[0].config.device == "cpu"  # this machine's, as the picker says
    assert resumed.epochs_done == stopped.epochs_done + 1 and not resumed.stopped_by_user
    assert widget.run_folder == folder and resumed.exported_model_path == folder / "model.pth"
    assert resumed.registered_name == stopped.registered_name  # the run's model, updated
    assert load_model(resumed.registered_name).model_id == load_model(folder / "model.pth").model_id
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == resumed.epochs_done

    error = widget.settings.settings_error
    assert widget.continue_run(folder) is None  # epochs set = epochs done
    assert f"has done {resumed.epochs_done} epochs; set epochs above" in error.text()
    assert widget.continue_run(tmp_path / "nothing here") is None
    assert "holds no training run to continue" in error.text() and not widget.is_running


def test_closing_the_viewer_by_code_mid_run_saves_and_exports_first(qtbot, docked):
    """A dock widget gets no closeEvent when napari closes, and napari would end the worker
    at its next event: the run must still finish its step, checkpoint and export."""
    viewer, annotate, widget = docked
    _long_run_started(qtbot, widget)
    run_folder = widget.run_folder
    viewer.layers.clear()  # as the fixture does: the annotation widget's jobs end first
    qtbot.waitUntil(lambda: not annotate.runner.is_running(), timeout=WAIT_MS)
    viewer.close()  # returns once the run has ended; no late callback reaches the widget
    assert not widget.is_running
    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["stopped_by_user"] and summary["epochs_done"] < 50
    registered = load_model(summary["registered_name"])
    assert registered.model_id == load_model(run_folder / "model.pth").model_id
    assert (run_folder / "checkpoints" / "last.pt").is_file()


def test_closing_the_panel_mid_run_stops_the_run_and_saves_its_model(qtbot, docked, notifications):
    """napari's close button on the panel un-docks the widget without a close event; the
    run must not go on unseen to its last epoch."""
    viewer, _, widget = docked
    _long_run_started(qtbot, widget)
    viewer.window.remove_dock_widget(widget)  # what the panel's close button does
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert widget.result.stopped_by_user and widget.result.epochs_done < 50
    assert widget.result.exported_model_path.is_file()
    assert any("panel was closed: training stops after this step" in m for m in notifications)


def test_closing_the_panel_before_the_first_step_promises_nothing_saved(
    qtbot, docked, notifications, monkeypatch
):
    """Closed while the run loaded its model, the panel said the run "saves its checkpoint
    and model in <folder>", then that it saved nothing; the folder never came. A person
    closing the window was told the same by the question asked."""
    import threading

    from qtpy.QtWidgets import QMessageBox

    from napari_samtune._qt import train_run
    from napari_samtune.core.train import TrainingStarted

    real, first_step = train_run.iter_train, threading.Event()

    def held_before_the_first_step(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, TrainingStarted):
                assert first_step.wait(WAIT_MS / 1000)

    monkeypatch.setattr(train_run, "iter_train", held_before_the_first_step)
    viewer, _, widget = docked
    widget.use_model_check.setChecked(False)
    asked = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a: asked.append(a[2]) or QMessageBox.StandardButton.No
    )
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        widget.start()
    try:
        assert not widget.close_after_run(ask=True)
        viewer.window.remove_dock_widget(widget)
    finally:
        first_step.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    said = [m for m in notifications if "panel was closed" in m]
    assert said and "saves nothing new" in said[0] and "checkpoint" not in said[0]
    assert "nothing new is saved" in asked[0] and "checkpoint is written" not in asked[0]
    assert widget.result.exported_model_path is None


def test_a_person_closing_the_viewer_is_asked_and_the_window_closes_after_export(
    qtbot, docked, monkeypatch, close_blocker
):
    from qtpy.QtWidgets import QMessageBox

    _, _, widget = docked
    _long_run_started(qtbot, widget)
    answers = [QMessageBox.StandardButton.No]
    monkeypatch.setattr(QMessageBox, "question", lambda *args: answers.pop())
    assert not widget.close_after_run(ask=True)  # "No": the run and the window stay
    assert widget.is_running and not widget.stop_event.is_set()
    closes = close_blocker(widget.window())
    answers.append(QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.close_after_run(ask=True)
        assert widget.is_running  # the viewer stays usable while the step finishes
        assert closes.count == 0
    assert widget.result.stopped_by_user and widget.result.exported_model_path.is_file()
    qtbot.waitUntil(lambda: closes.count == 1, timeout=WAIT_MS)  # then the window closes


def test_closing_the_window_from_napari_s_menu_mid_run_asks_and_never_blocks(
    qtbot, docked, monkeypatch, close_blocker
):
    """File > Close Window, Ctrl+W and Ctrl+Q close the window by code (the event is not
    spontaneous): they were taken for Viewer.close() from a script, not asked, and the
    window froze until the step, checkpoint and export were done."""
    from qtpy.QtWidgets import QMessageBox

    viewer, _, widget = docked
    window = viewer.window._qt_window
    closes = close_blocker(window)  # before the run's filter: that one sees the close first
    asked = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda *args: asked.append(1) or QMessageBox.StandardButton.Yes
    )
    _long_run_started(qtbot, widget)
    assert not window.close(quit_app=False, confirm_need=False)  # what the menu calls
    assert asked == [1] and widget.is_running  # asked, and not blocked: the run goes on
    assert closes.count == 0
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert widget.result.stopped_by_user and widget.result.exported_model_path.is_file()
    qtbot.waitUntil(lambda: closes.count == 1, timeout=WAIT_MS)  # then the window closes


def test_the_window_closed_after_the_panel_mid_run_still_closes_once_saved(
    qtbot, docked, monkeypatch, close_blocker
):
    """The panel closed mid-run leaves napari's window; a person then closing the window
    (and answering Yes) saw it stay open after the run had saved its model."""
    from qtpy.QtWidgets import QMessageBox

    viewer, _, widget = docked
    _long_run_started(qtbot, widget)
    window = viewer.window._qt_window
    viewer.window.remove_dock_widget(widget)  # the run stops after its step
    closes = close_blocker(window)
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    assert widget.close_after_run(ask=True)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert widget.result.stopped_by_user and widget.result.exported_model_path.is_file()
    qtbot.waitUntil(lambda: closes.count == 1, timeout=WAIT_MS)  # then the window closes


def test_bad_data_is_flagged_before_start(qtbot, viewer, tmp_path, notifications):
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    assert widget.start() is None  # nothing chosen yet
    assert "add at least one" in data.list_error.text()

    viewer.add_image(viewer.layers["cells0 labels"].data.astype(np.float32), name="float mask")
    viewer.add_labels(np.zeros((96, 96), np.uint16), name="empty")
    viewer.add_labels(np.ones((50, 50), np.uint16), name="small")
    data.image_combo.setCurrentText("cells0")
    for labels, complaint in (("float mask", "float32"), ("empty", "no objects"), ("small", "")):
        data.labels_combo.setCurrentText(labels)
        assert not data.add_current_pair()
        assert data.pair_error.isVisibleTo(widget) and complaint in data.pair_error.text()
    assert "same pixels" in data.pair_error.text()  # shape mismatch
    channels = np.stack([viewer.layers["cells0"].data] * 3).astype(np.float32)  # (3, H, W)
    viewer.add_image(channels, name="channels")
    data.image_combo.setCurrentText("channels")
    data.labels_combo.setCurrentText("cells0 labels")
    assert not data.add_current_pair()  # napari's own way, not channel_axis, which it lacks
    assert "image layer 'channels' has shape (3, 96, 96), with 1 more axis than labels" in (
        data.pair_error.text()
    )
    assert "choose Split Stack to pair one channel, or Merge to RGB" in data.pair_error.text()

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    tifffile.imwrite(images / "a.tif", viewer.layers["cells0"].data)
    halves = viewer.layers["cells0 labels"].data.astype(np.float32) / 2  # not labels
    tifffile.imwrite(labels / "a.tif", halves)
    data.image_dir_edit.setText(str(images))
    data.labels_dir_edit.setText(str(labels))
    with qtbot.waitSignal(data.folders_checked, timeout=WAIT_MS):  # read off the main thread
        assert widget.start() is None and "checking the data folders" in widget.status_label.text()
    assert not widget.is_running  # the queued Start found the problem
    assert "float32" in data.folder_error.text() and "fractions" in data.folder_error.text()
    assert data.folder_error.isVisibleTo(widget)
    assert widget.start_error.isVisibleTo(widget)
    assert any("cannot start training" in message for message in notifications)
    assert data.check() is False  # known for these files: no second reading

    tifffile.imwrite(labels / "a.tif", viewer.layers["cells0 labels"].data)  # fixed
    assert _checked(qtbot, data) and not data.folder_error.isVisibleTo(widget)
    assert not data.folder_note.isVisibleTo(widget)

    for folder in (images, labels):  # an empty field of view is left out, and that is said
        tifffile.imwrite(folder / "b.tif", np.zeros((96, 96), np.uint8))
    assert _checked(qtbot, data) and not data.folder_error.isVisibleTo(widget)
    assert data.folder_note.isVisibleTo(widget)
    assert "1 of 2 pairs have no object and will be left out: b.tif / b.tif" in (
        data.folder_note.text()
    )
    tifffile.imwrite(labels / "a.tif", np.zeros((96, 96), np.uint8))  # nothing left to train
    assert not _checked(qtbot, data)
    assert "none of the 2 training folder pairs" in data.folder_error.text()
    assert not data.folder_note.isVisibleTo(widget)
    tifffile.imwrite(labels / "a.tif", viewer.layers["cells0 labels"].data)
    (images / "b.tif").unlink(), (labels / "b.tif").unlink()

    tifffile.imwrite(images / "a_mask.tif", viewer.layers["cells0 labels"].data)
    data.labels_dir_edit.setText(str(images))  # one folder holding a.tif and a_mask.tif
    assert _checked(qtbot, data) and not data.folder_error.isVisibleTo(widget)


def test_autosaves_train_the_images_annotated_so_far(qtbot, viewer, tmp_path):
    """The annotate -> finetune loop: a folder of images, some annotated in the annotation
    widget; its autosave folder also holds the annotations of an image from elsewhere."""
    from napari_samtune._qt.train_folders import load_folder_pairs
    from napari_samtune.core.annotation_files import default_annotation_folder, save_annotations
    from napari_samtune.core.label_files import image_fingerprint

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        tifffile.imwrite(images / f"cell {i}.tif", viewer.layers[f"cells{i}"].data)
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate with SAM")
    annotate.ui.folder_edit.setText(str(tmp_path / "my annotations"))
    for name, layer in (("cell 0", "cells0"), ("cell 2", "cells2"), ("elsewhere", "cells1")):
        record = {"image_fingerprint": image_fingerprint(viewer.layers[layer].data)}
        labels = viewer.layers[f"{layer} labels"].data
        save_annotations(annotate.annotation_folder(), name, labels, record)
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    viewer.window.add_dock_widget(widget, name="Finetune SAM")
    data = widget.train_data
    data.image_dir_edit.setText(str(images))
    data.autosaves_button.click()
    assert data.labels_dir_edit.text() == str(tmp_path / "my annotations")
    assert _checked(qtbot, data) and not data.folder_error.isVisibleTo(widget)
    assert data.folder_note.text() == (
        "left out 1 image(s) without a label file (not annotated yet?): cell 1.tif and 1 label "
        "file(s) without an image: elsewhere.labels.tif (napari saves an image's annotations "
        "under its layer's name: to pair a file renamed so with its image, rename the file or "
        "the layer back)"
    )
    tifffile.imwrite(images / "cell 2.tif", viewer.layers["cells1"].data)  # another image now
    assert _checked(qtbot, data)
    assert "the labels of 1 pair(s) were saved (by napari-samtune" in data.folder_note.text()
    tifffile.imwrite(images / "cell 2.tif", viewer.layers["cells2"].data)
    pairs = load_folder_pairs(data.folder_source())
    assert [p.name for p in pairs] == [
        "cell 0.tif / cell_0.labels.tif",
        "cell 2.tif / cell_2.labels.tif",
    ]
    np.testing.assert_array_equal(pairs[1].labels, viewer.layers["cells2 labels"].data)

    viewer.window.remove_dock_widget(annotate)  # no annotation widget: its default folder
    data.autosaves_button.click()
    assert data.labels_dir_edit.text() == str(default_annotation_folder())

    opened = viewer.open(images / "cell 1.tif")[0]  # annotating a file: its folder
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate with SAM")
    annotate.ui.image_combo.setCurrentText(opened.name)
    data.image_dir_edit.setText("")
    data.autosaves_button.click()
    assert data.image_dir_edit.text() == str(images)


def test_multichannel_folders_train_on_the_channels_typed(qtbot, viewer, tmp_path):
    """Two-channel TIFF files (a noise channel, then the cells): refused until the channels
    field names the channel, then read as that channel."""
    from napari_samtune._qt.train_folders import load_folder_pairs
    from napari_samtune.core.data import prepare_pair
    from napari_samtune.core.images import to_sam_rgb

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    for i in range(2):
        cells = viewer.layers[f"cells{i}"].data
        tifffile.imwrite(images / f"c{i}.tif", np.stack([cells, noise], axis=-1))  # (H, W, 2)
        tifffile.imwrite(labels / f"c{i}.tif", viewer.layers[f"cells{i} labels"].data)
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    data.image_dir_edit.setText(str(images))
    data.labels_dir_edit.setText(str(labels))
    assert not _checked(qtbot, data)
    assert "image of 'c0.tif / c0.tif': image has shape (96, 96, 2)" in data.folder_error.text()
    assert "ambiguous; fill in the channels field" in data.folder_error.text()
    assert "channel_axis" not in data.folder_error.text()  # the panel has no such field

    data.channels_edit.setText("first")
    assert not _checked(qtbot, data)
    assert "channels: 'first' is not a channel list" in data.folder_error.text()
    data.channels_edit.setText("0")
    assert _checked(qtbot, data) and not data.folder_error.isVisibleTo(widget)
    pairs = load_folder_pairs(data.snapshot()[1])
    for i, pair in enumerate(pairs):
        assert np.array_equal(prepare_pair(pair).rgb, to_sam_rgb(viewer.layers[f"cells{i}"].data))
    data.channels_edit.setText("2")  # the files have channels 0 and 1: checked again
    assert not _checked(qtbot, data) and "channels=(2,) is invalid" in data.folder_error.text()


def test_a_stack_with_channels_in_folders_is_told_to_fill_in_the_channels_field(
    qtbot, viewer, tmp_path
):
    """A (Z, C, H, W) stack's channel axis cannot be guessed: the panel said "pass
    channel_axis (counted in the stack ...)", a field it does not have; the channels field
    alone reads it."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    cells = viewer.layers["cells0"].data
    noise = np.random.default_rng(0).integers(0, 256, cells.shape, dtype=cells.dtype)
    planes = np.stack([np.stack([cells, noise])] * 3)  # (3, 2, H, W)
    tifffile.imwrite(images / "zc.tif", planes)
    tifffile.imwrite(labels / "zc.tif", np.stack([viewer.layers["cells0 labels"].data] * 3))
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    data.image_dir_edit.setText(str(images))
    data.labels_dir_edit.setText(str(labels))
    assert not _checked(qtbot, data)
    said = data.folder_error.text()
    assert "3 planes with a channel axis SAM cannot guess; fill in the channels field" in said
    assert "channel_axis" not in said
    data.channels_edit.setText("0")
    assert _checked(qtbot, data) and not data.folder_error.isVisibleTo(widget)


def _checked(qtbot, data) -> bool:
    """``data.check()``, after waiting for the background check of its folders."""
    result = data.check()
    if result is None:  # the ended signal arrives through the event loop: not missed here
        qtbot.waitSignal(data.folders_checked, timeout=WAIT_MS).wait()
        result = data.check()
    return result


def test_folders_are_read_and_checked_off_the_main_thread(qtbot, viewer, tmp_path, monkeypatch):
    """50 images of 1024 x 1024 took 6 s to check: the viewer must not freeze for it."""
    import napari_samtune._qt.train_data as train_data

    checked = []

    def slow_check(*args):
        time.sleep(0.5)
        checked.append(args[0])
        return train_data_check(*args)

    train_data_check = train_data.check_folder_pairs
    monkeypatch.setattr(train_data, "check_folder_pairs", slow_check)
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    for folder, layer in (("images", "cells0"), ("labels", "cells0 labels")):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "a.tif", viewer.layers[layer].data)
    data.image_dir_edit.setText(str(tmp_path / "images"))
    data.labels_dir_edit.setText(str(tmp_path / "labels"))
    begin = time.perf_counter()
    assert data.check_folders() is None  # running in the background ...
    assert time.perf_counter() - begin < 0.3
    assert data.folder_progress.isVisibleTo(widget)
    qtbot.waitSignal(data.folders_checked, timeout=WAIT_MS).wait()
    assert data.check_folders() is True and len(checked) == 1  # ... once for these files
    tifffile.imwrite(tmp_path / "labels" / "a.tif", np.zeros((96, 96), np.uint8))
    assert data.check_folders() is None  # a file changed: checked again
    qtbot.waitSignal(data.folders_checked, timeout=WAIT_MS).wait()
    assert data.check_folders() is False and "no objects" in data.folder_error.text()
    assert len(checked) == 2

    def broken_check(*args):
        checked.append(args[0])
        raise MemoryError("no memory left")

    monkeypatch.setattr(train_data, "check_folder_pairs", broken_check)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", viewer.layers["cells0 labels"].data)
    assert data.check_folders() is None
    qtbot.waitSignal(data.folders_checked, timeout=WAIT_MS).wait()
    assert data.check_folders() is False and "out of memory" in data.folder_error.text()
    assert len(checked) == 3  # a failed check is not retried over and over


def test_worker_error_is_reported_and_the_widget_stays_usable(qtbot, docked, tmp_path, monkeypatch):
    _, _, widget = docked
    errors: list[str] = []
    monkeypatch.setattr("napari_samtune._qt.workers.show_error", errors.append)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
        yield  # a generator, as iter_train is

    monkeypatch.setattr("napari_samtune._qt.train_run.iter_train", full_disk)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert len(errors) == 1 and "training failed" in errors[0] and "No space left" in errors[0]
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    assert widget.result is None and "training failed" in widget.result_label.text()


def test_a_torch_error_mid_run_is_reported_and_start_works_again(
    qtbot, viewer, use_tiny_model, tmp_path, monkeypatch, notifications
):
    """torch's out-of-memory (and CUDA) errors are RuntimeErrors, which superqt's generator
    workers used to swallow: the run looked alive for ever, and closing napari hung."""
    import torch

    from napari_samtune._qt import train_run
    from napari_samtune.core.train import EpochDone, StepDone

    widget = TrainWidget(viewer, machine=SMALL_CPU)  # not docked: no close to wait for
    use_tiny_model(widget, epochs=2)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    assert widget.train_data.add_current_pair()
    real_iter_train = train_run.iter_train

    def out_of_memory_after(event_type):
        def run(*args, **kwargs):
            for event in real_iter_train(*args, **kwargs):
                yield event
                if isinstance(event, event_type):
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

        return run

    monkeypatch.setattr(train_run, "iter_train", out_of_memory_after(StepDone))
    with qtbot.waitSignal(widget.run_ended, timeout=30_000):
        assert widget.start() is not None
    assert not widget.is_running
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    assert "training failed: out of memory (CUDA out of memory" in widget.result_label.text()
    assert "Continue…" not in widget.result_label.text()  # no epoch ended: no checkpoint
    assert any(m.startswith("training failed: out of memory") for m in notifications)
    advice = "choose a preset for less memory, or in Advanced settings choose fewer objects"
    assert advice in widget.result_label.text()  # not "a smaller image", as for prompting
    assert any(advice in m for m in notifications)

    monkeypatch.setattr(train_run, "iter_train", out_of_memory_after(EpochDone))
    with qtbot.waitSignal(widget.run_ended, timeout=30_000):
        assert widget.start() is not None
    assert (widget.run_folder / "checkpoints" / "last.pt").is_file()
    assert (
        f"the checkpoint of its last finished epoch is in {widget.run_folder}: Continue… goes on"
        in widget.result_label.text()
    )  # said, so that the user knows the epoch is not lost
    monkeypatch.setattr(train_run, "iter_train", real_iter_train)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None  # the widget is usable again
    assert widget.result is not None and widget.result.epochs_done == 2


def test_an_output_folder_that_is_a_file_is_refused_before_start(docked, tmp_path, notifications):
    _, _, widget = docked
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("a file where the output folder should be")
    widget.settings.out_dir_edit.setText(str(not_a_folder))
    assert widget.start() is None and not widget.is_running
    assert "is a file; give a folder" in widget.settings.settings_error.text()
    assert any("cannot start training" in message for message in notifications)
    assert not_a_folder.read_text() == "a file where the output folder should be"


def test_preset_defaults_follow_the_machine(viewer):
    small_widget = TrainWidget(viewer, machine=MachineResources(None, 7.5, 4, None))
    small = small_widget.settings
    assert small.preset.key == "cpu-8gb" and "(detected)" in small.preset_combo.currentText()
    assert "image encoder frozen" in small.preset_label.text()
    assert "8 GB RAM" in small.preset_label.text()
    assert small.freeze_checks["image_encoder"].isChecked()
    big_widget = TrainWidget(viewer, machine=MachineResources(80.0, 256.0, 32, "A100"))
    big = big_widget.settings
    assert big.preset.key == "a100" and "GPU memory" in big.preset_label.text()
    assert not big.freeze_checks["image_encoder"].isChecked()
    big.objects_spin.setValue(10_000)  # far above what the preset fits: the core refuses
    with pytest.raises(ValueError, match="far above"):
        big.build_config()


def test_settings_survive_a_refresh_of_the_model_list(viewer, tiny_checkpoint):
    """A finished run registers its model and refreshes the list; what the user set for
    the chosen model stays (it was reset to the preset's defaults after every run)."""
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    settings = widget.settings
    chosen = settings.model_picker.model_source()
    settings.epochs_spin.setValue(7)
    settings.lr_edit.setText("0.0003")
    settings.freeze_checks["mask_decoder"].setChecked(True)
    register_user_model(tiny_checkpoint, "just_trained", TINY)
    settings.model_picker.refresh_models()
    assert "just_trained" in settings.model_picker.model_names()
    assert settings.model_picker.model_source() == chosen
    assert (settings.epochs_spin.value(), settings.lr_edit.text()) == (7, "0.0003")
    assert settings.freeze_checks["mask_decoder"].isChecked()
    settings.model_picker.select_model("just_trained")  # another model: its defaults
    assert settings.epochs_spin.value() != 7


def test_stacks_give_one_pair_per_annotated_plane(viewer):
    image, labels = make_image((64, 64), seed=5)
    labels_stack = np.stack([labels, np.zeros_like(labels), labels])
    image_layer = viewer.add_image(np.stack([image] * 3), name="stack")
    labels_layer = viewer.add_labels(labels_stack, name="stack labels")
    pairs = layer_pairs(image_layer, labels_layer, copy=True)
    assert [pair.name for pair in pairs] == [
        "stack / stack labels plane 0",
        "stack / stack labels plane 2",
    ]
    assert pairs[0].image.shape == (64, 64) and pairs[0].labels.shape == (64, 64)
    pairs[0].labels[:] = 0  # a copy: the layer keeps its labels
    assert labels_layer.data[0].any()


def test_the_planes_of_a_stack_left_out_are_named_at_start(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    image, labels = make_image((64, 64), seed=5)
    viewer.add_image(np.stack([image] * 4), name="stack")
    viewer.add_labels(np.stack([labels, 0 * labels, labels, 0 * labels]), name="stack labels")
    assert widget.train_data.add_current_pair()
    pairs, _ = widget.train_data.snapshot()
    assert len(pairs) == 2
    assert (
        "training data: left out the planes without objects of 1 stack(s): "
        "stack / stack labels: 2 of 4 planes"
    ) in notifications


def test_format_duration():
    assert format_duration(3723) == "1:02:03"
    assert format_duration(65.4) == "1:05"
    assert format_duration(float("nan")) == "?"


def test_the_labels_offered_pair_with_the_image_chosen(make_napari_viewer):
    """With the annotation widget open, a sample's image arrives with its (empty)
    annotations layer before its labels: those labels are offered, not the empty layer."""
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    image, labels = make_image((64, 64), seed=1)
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.zeros_like(labels), name="cells annotations")
    viewer.add_labels(labels[:32], name="other labels")  # another shape
    viewer.add_labels(labels, name="cells labels")
    assert data.labels_combo.currentText() == "cells labels"
    assert data.add_current_pair()
    viewer.add_image(np.zeros((32, 64), np.uint8), name="small")
    data.image_combo.setCurrentText("small")
    assert data.labels_combo.currentText() == "other labels"  # its shape
    data.labels_combo.setCurrentText("cells annotations")
    data.labels_combo.activated.emit(data.labels_combo.currentIndex())  # a person's choice
    viewer.add_labels(labels, name="more labels")
    assert data.labels_combo.currentText() == "cells annotations"  # kept


def test_napari_s_numbered_copies_are_offered_each_other(make_napari_viewer):
    """A sample opened twice: "cells [1]" was offered "cells labels" (neither candidate began
    with "cells [1]", so the first won), another image's outlines of the same shape."""
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    for seed in (1, 2):
        image, labels = make_image((64, 64), seed=seed)
        viewer.add_image(image, name="cells")  # napari names the second "cells [1]"
        viewer.add_labels(labels, name="cells labels")
    viewer.add_labels(make_image((64, 64), seed=3)[1], name="cells2 labels")
    assert [layer.name for layer in viewer.layers][:4] == [
        "cells", "cells labels", "cells [1]", "cells labels [1]"
    ]  # fmt: skip
    data.image_combo.setCurrentText("cells [1]")
    assert data.labels_combo.currentText() == "cells labels [1]"
    data.image_combo.setCurrentText("cells")
    assert data.labels_combo.currentText() == "cells labels"


def test_a_closed_panel_stops_following_the_viewer_s_layers(qtbot, docked, notifications):
    """A closed panel kept its connections: it re-ranked its pairs at every layer added and
    told of pairs removed ("... was removed, and with it the training pair(s) ...")."""
    viewer, _, widget = docked
    events = viewer.layers.events
    before = [len(e.callbacks) for e in (events.inserted, events.removed, events.renamed)]
    viewer.window.remove_dock_widget(widget)  # the panel's close button
    widget.close()  # and a close event after it: nothing is disconnected twice
    after = [len(e.callbacks) for e in (events.inserted, events.removed, events.renamed)]
    assert [b - a for b, a in zip(before, after, strict=True)] == [2, 2, 2]  # training, validation
    notifications.clear()
    viewer.layers.remove("cells0 labels")
    qtbot.wait(50)  # removals are told once the layers removed together are gone
    assert not any("training pair" in m for m in notifications)
