"""The whole loop in one viewer, as a person runs it: annotate two images with the packaged
nano model, finetune on those annotations while annotating on, annotate the third image with
the finetuned model, then finetune that model again on more annotations."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_jobs import AUTO_TASK, LOAD_TASK
from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.architectures import NANO, TINY
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.presets import MachineResources
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.user_models import register_user_model
from tests._qt.plugin_viewer import as_plugin_sees_it

WAIT_MS = 120_000
SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


@pytest.fixture
def loop(make_napari_viewer, qtbot, run_job, tmp_path):
    """A viewer with three images, the Annotate widget on nano and the Finetune widget."""
    viewer = make_napari_viewer()
    for i in range(3):
        viewer.add_image(make_image((96, 96), seed=i)[0], name=f"cells{i}")
    yield from _iter_docked(viewer, qtbot, run_job, tmp_path)


def _iter_docked(viewer, qtbot, run_job, tmp_path):
    """A fixture's body: docks the Annotate widget (on nano) and the Finetune widget in
    ``viewer``, yields (viewer, annotate, train), then waits for what still runs."""
    annotate = AnnotateWidget(as_plugin_sees_it(viewer))
    annotate.ui.folder_edit.setText(str(tmp_path / "annotations"))
    viewer.window.add_dock_widget(annotate, name="Annotate with SAM")
    train = TrainWidget(as_plugin_sees_it(viewer), machine=SMALL_CPU)
    train.settings.out_dir_edit.setText(str(tmp_path / "training"))
    viewer.window.add_dock_widget(train, name="Finetune SAM")
    annotate.select_model("nano")
    run_job(annotate, annotate.load_model, LOAD_TASK)
    yield viewer, annotate, train
    train.stop()
    qtbot.waitUntil(lambda: not train.is_running, timeout=WAIT_MS)
    viewer.layers.clear()
    qtbot.waitUntil(lambda: not annotate.runner.is_running(), timeout=WAIT_MS)


def annotate_image(qtbot, annotate, name, run_job, drain_jobs):
    annotate.ui.image_combo.setCurrentText(name)
    drain_jobs(annotate)
    run_job(annotate, annotate.segment_automatically, AUTO_TASK)
    layers = annotate.session.layers
    layers.points.add([48, 48])
    assert layers.preview.data.any()
    annotate.ui.overwrite_check.setChecked(True)
    assert annotate.commit()
    layer = layers.annotations
    layer.brush_size = 5
    with qtbot.waitSignal(annotate.annotations_saved, timeout=WAIT_MS):
        layer.paint((10, 10), 99)
    drain_jobs(annotate)


def small_settings(train, qtbot, model, epochs=1):
    settings = train.settings
    settings.model_picker.select_model(model)
    qtbot.waitUntil(lambda: settings.architecture() is not None, timeout=WAIT_MS)
    settings.epochs_spin.setValue(epochs)
    settings.samples_spin.setValue(2)
    settings.objects_spin.setValue(2)
    settings.patch_spin.setValue(64)
    settings.freeze_checks["image_encoder"].setChecked(True)


def test_an_image_not_annotated_yet_is_not_offered_another_image_s_annotations(
    qtbot, loop, run_job, drain_jobs
):
    """cells2 has no annotations yet: the labels suggested for it are its own (empty)
    annotations layer, which Add pair refuses with a reason, never cells0's annotations
    (cells2's pixels would train on cells0's outlines) nor cells2's uncommitted preview."""
    viewer, annotate, train = loop
    annotate_image(qtbot, annotate, "cells0", run_job, drain_jobs)
    annotate.ui.image_combo.setCurrentText("cells2")
    drain_jobs(annotate)
    data = train.train_data
    data.image_combo.setCurrentText("cells2")
    assert data.labels_combo.currentText() == "cells2 annotations"
    assert not data.add_current_pair()
    assert "contain no objects" in data.pair_error.text()
    annotate.session.layers.points.add([30, 30])  # a preview, not committed
    assert annotate.session.layers.preview.data.any()
    data.image_combo.setCurrentText("cells0")
    assert data.labels_combo.currentText() == "cells0 annotations"
    data.image_combo.setCurrentText("cells2")
    assert data.labels_combo.currentText() == "cells2 annotations"


@pytest.fixture
def stack_loop(make_napari_viewer, qtbot, run_job, tmp_path):
    """A viewer with a (3, 96, 96) stack, the Annotate widget on nano and the Finetune
    widget set for the smallest runs."""
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([make_image((96, 96), seed=s)[0] for s in range(3)]), name="stack")
    for widgets in _iter_docked(viewer, qtbot, run_job, tmp_path):
        small_settings(widgets[2], qtbot, "nano")
        yield widgets


def test_one_annotated_plane_without_objects_in_its_held_out_rows_is_refused_at_start(
    qtbot, stack_loop, drain_jobs, notifications
):
    """Objects painted near the top of one plane of a stack: that plane is the only training
    image, and the rows held out of it for validation have no object. The run says so as its
    first step, in the widget's terms (no val_fraction field here), without loading the
    model first."""
    viewer, annotate, train = stack_loop
    viewer.dims.set_current_step(0, 1)
    drain_jobs(annotate)
    layer = annotate.session.layers.annotations
    layer.brush_size = 9
    with qtbot.waitSignal(annotate.annotations_saved, timeout=WAIT_MS):
        layer.paint((1, 20, 20), 1)
        layer.paint((1, 20, 60), 2)
    drain_jobs(annotate)
    data = train.train_data
    data.image_combo.setCurrentText("stack")
    assert data.labels_combo.currentText() == "stack annotations"
    assert data.add_current_pair()
    with qtbot.waitSignal(train.run_ended, timeout=WAIT_MS):
        assert train.start() is not None
    assert train.started is None
    assert "separate validation data" in train.start_error.text()
    refusals = [n for n in notifications if n.startswith("training not started")]
    assert refusals and "rows 86..95 (the validation part)" in refusals[-1]
    assert "separate validation data" in refusals[-1]
    assert not any("val_fraction" in n for n in notifications)
    with qtbot.waitSignal(annotate.annotations_saved, timeout=WAIT_MS):
        layer.paint((1, 90, 40), 3)  # what the message says to do: an object there
    drain_jobs(annotate)
    with qtbot.waitSignal(train.training_finished, timeout=WAIT_MS) as finished:
        assert train.start() is not None
    assert not train.start_error.isVisible()
    assert finished.args[0].registered_name is not None


def test_a_brush_correction_of_an_image_annotated_before_is_autosaved(
    qtbot, loop, run_job, drain_jobs, tmp_path
):
    """Annotating cells2 (e.g. while training runs), the person corrects cells0's
    annotations layer, still in the viewer, with the brush: the correction is autosaved to
    cells0's file, as it is while cells0 is chosen, not lost when napari closes."""
    viewer, annotate, train = loop
    annotate_image(qtbot, annotate, "cells0", run_job, drain_jobs)
    annotate.ui.image_combo.setCurrentText("cells2")
    drain_jobs(annotate)
    layer = viewer.layers["cells0 annotations"]
    layer.brush_size = 5
    saved = tmp_path / "annotations" / "cells0.labels.tif"
    with qtbot.waitSignal(
        annotate.annotations_saved, check_params_cb=lambda path: path == str(saved)
    ):
        layer.paint((80, 80), 55)
    drain_jobs(annotate)
    np.testing.assert_array_equal(tifffile.imread(saved), layer.data)
    assert (layer.data == 55).any()
    annotate.ui.image_combo.setCurrentText("cells0")  # chosen again: the correction stays
    drain_jobs(annotate)
    assert (annotate.session.annotations == 55).any()
    with qtbot.waitSignal(annotate.annotations_saved):
        annotate.session.layers.annotations.paint((60, 20), 56)
    drain_jobs(annotate)
    saved_labels = tifffile.imread(saved)
    assert (saved_labels == 55).any() and (saved_labels == 56).any()


def test_the_finetuned_model_chosen_for_a_second_round_keeps_the_settings_typed(
    qtbot, loop, tiny_checkpoint
):
    """The second round starts from the model the first made, of the same architecture, so
    the preset has the same values for it: the epochs, patches and frozen encoder the person
    set for the first round stay, not reset to the preset's (unseen in the collapsed
    Advanced settings, a 1-epoch round would become a 100-epoch one)."""
    viewer, annotate, train = loop
    settings = train.settings
    small_settings(train, qtbot, "nano", epochs=3)
    nano_file = tiny_checkpoint.with_name("nano_copy.pth")
    torch.save(load_model("nano").sam.state_dict(), nano_file)
    register_user_model(nano_file, "nano-round1", NANO)
    register_user_model(tiny_checkpoint, "tiny-model", TINY)
    settings.model_picker.refresh_models()
    settings.model_picker.select_model("nano-round1")
    qtbot.waitUntil(lambda: settings.architecture() is not None, timeout=WAIT_MS)
    assert settings.epochs_spin.value() == 3
    assert (settings.samples_spin.value(), settings.patch_spin.value()) == (2, 64)
    assert settings.freeze_checks["image_encoder"].isChecked()
    assert settings.build_config().model == "nano-round1"
    settings.model_picker.select_model("tiny-model")  # another architecture: its defaults
    assert settings.epochs_spin.value() != 3


def test_annotate_finetune_annotate_with_the_new_model_then_finetune_it_again(
    qtbot, loop, run_job, drain_jobs, tmp_path
):
    """The whole loop in one viewer: two images annotated (automatic, a point, the brush),
    finetuned on while cells2 is annotated on (its previews keep coming), the new model
    offered and used for cells2 at once (previews and objects by it), then finetuned again
    from it on cells2 too, under a name of its own."""
    viewer, annotate, train = loop
    for name in ("cells0", "cells1"):
        annotate_image(qtbot, annotate, name, run_job, drain_jobs)
    data = train.train_data
    for name in ("cells0", "cells1"):
        data.image_combo.setCurrentText(name)
        assert data.labels_combo.currentText() == f"{name} annotations"
        assert data.add_current_pair()
    small_settings(train, qtbot, "nano", epochs=2)
    with qtbot.waitSignal(train.training_started, timeout=WAIT_MS):
        assert train.start() is not None
    annotate.ui.image_combo.setCurrentText("cells2")  # annotating on while it trains
    qtbot.waitUntil(lambda: annotate.is_embedded(None), timeout=WAIT_MS)
    annotate.session.layers.points.add([30, 30])
    assert annotate.session.layers.preview.data.any()
    with qtbot.waitSignal(train.training_finished, timeout=WAIT_MS) as finished:
        viewer.layers["cells0 annotations"].paint((80, 80), 55)  # an edit during training
    first = finished.args[0].registered_name
    assert first is not None and first in annotate.ui.model_picker.model_names()
    qtbot.waitUntil(lambda: annotate.model_name == first, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: annotate.is_embedded(None), timeout=WAIT_MS)
    drain_jobs(annotate)
    segmenter = Segmenter(load_model(first).sam)  # the preview is the new model's
    segmenter.set_image(viewer.layers["cells2"].data)
    point = dict(points_xy=np.array([[30, 30]]), point_labels=np.array([1]), multimask=True)
    expected = segmenter.predict(**point).mask
    np.testing.assert_array_equal(annotate.session.layers.preview.data > 0, expected)
    assert annotate.commit()
    run_job(annotate, annotate.segment_automatically, AUTO_TASK)
    assert {record["model"] for record in annotate.session.records} == {first}
    saved = tmp_path / "annotations"
    for name in ("cells0", "cells1", "cells2"):
        np.testing.assert_array_equal(
            tifffile.imread(saved / f"{name}.labels.tif"), viewer.layers[f"{name} annotations"].data
        )

    settings = train.settings  # round two: from the new model, with cells2 added
    settings.model_picker.select_model(first)
    qtbot.waitUntil(lambda: settings.architecture() is not None, timeout=WAIT_MS)
    data.image_combo.setCurrentText("cells2")
    assert data.add_current_pair()
    with qtbot.waitSignal(train.training_started, timeout=WAIT_MS) as started:
        assert train.start() is not None
    assert started.args[0].config.model == first and started.args[0].config.epochs == 2
    assert started.args[0].n_train + started.args[0].n_val == 3
    with qtbot.waitSignal(train.training_finished, timeout=WAIT_MS) as finished:
        pass
    second = finished.args[0].registered_name
    assert second not in (None, first)
    assert {first, second} <= set(annotate.ui.model_picker.model_names())
    qtbot.waitUntil(lambda: annotate.model_name == second, timeout=WAIT_MS)


def test_one_folder_pair_without_objects_in_its_held_out_rows_is_told_in_the_widget_s_terms(
    tmp_path, monkeypatch
):
    """Folders are read by the run's worker, so Start cannot check them: the core's error
    said to 'set val_fraction=0', a field the widget does not have; and it came only after
    the model's download, which may take minutes."""
    import threading

    from napari_samtune._qt import train_run
    from napari_samtune._qt.train_folders import FolderSource
    from napari_samtune._qt.train_run import HeldOutPartEmpty, TrainRequest, iter_training_job
    from napari_samtune.core.presets import TrainConfig

    labels = np.zeros((96, 96), np.uint16)
    labels[10:30, 10:30], labels[10:30, 50:70] = 1, 2  # none in the rows held out below
    for folder, array in (("images", (labels * 100).astype(np.uint8)), ("labels", labels)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "cells.tif", array)
    request = TrainRequest(
        TrainConfig(model="random:tiny", epochs=1, mixed_precision="no"),
        (),
        FolderSource(tmp_path / "images", tmp_path / "labels"),
        (),
        None,
        tmp_path / "run",
        "cells-model",
    )
    fetched = []
    monkeypatch.setattr(train_run, "fetch_model_file", lambda *args: fetched.append(args[0]))
    with pytest.raises(HeldOutPartEmpty, match="tick 'separate validation data'") as raised:
        list(iter_training_job(request, threading.Event(), lambda _progress: None, []))
    assert "the validation part" in str(raised.value)
    assert "val_fraction" not in str(raised.value)
    assert fetched == []  # told before the model's download
