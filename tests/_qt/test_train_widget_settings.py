"""The training widget's settings while a person changes their mind about the model and
the device."""

from __future__ import annotations

import pytest

from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.presets import MachineResources

SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


def test_the_device_or_the_same_file_again_keeps_the_advanced_settings_typed(
    make_napari_viewer, use_tiny_model
):
    """Neither changes the preset's defaults: picking the device after setting epochs and
    the learning rate (or leaving the file field again) reset them to the preset's, unseen
    in the collapsed Advanced settings."""
    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    settings = widget.settings
    use_tiny_model(widget, epochs=7)
    settings.lr_edit.setText("0.0003")
    settings.freeze_checks["mask_decoder"].setChecked(True)
    settings.model_picker.device_combo.setCurrentText("cpu")
    settings.model_picker.path_edit.editingFinished.emit()  # focus left the file field
    assert (settings.epochs_spin.value(), settings.lr_edit.text()) == (7, "0.0003")
    assert settings.freeze_checks["mask_decoder"].isChecked()
    config = settings.build_config()
    assert (config.device, config.epochs, config.learning_rate) == ("cpu", 7, 3e-4)
    settings.model_picker.select_model("vit_t_lm")  # another model: its defaults
    assert settings.epochs_spin.value() != 7 and settings.lr_edit.text() != "0.0003"


def test_a_weights_file_chosen_again_after_it_could_not_be_read_is_read_again(
    qtbot, make_napari_viewer, tiny_checkpoint, tmp_path, monkeypatch
):
    """A file copied in full since it could not be read, chosen again with Browse…, kept
    the complaint ("download it again or pick another file") and Start stayed refused."""
    from qtpy.QtWidgets import QFileDialog

    from napari_samtune._qt.model_picker import FILE_ENTRY

    weights = tmp_path / "copying.pth"
    weights.write_bytes(tiny_checkpoint.read_bytes()[:100])  # a copy not yet complete
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args: (str(weights), ""))
    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    settings = widget.settings
    picker, error = settings.model_picker, settings.settings_error
    picker.select_model(FILE_ENTRY)
    picker.browse_button.click()
    qtbot.waitUntil(lambda: not settings.runner.is_running(), timeout=10_000)
    assert "cannot use" in error.text()
    assert "could not read the checkpoint" in error.text() and settings.architecture() is None

    weights.write_bytes(tiny_checkpoint.read_bytes())  # the copy has finished
    with qtbot.waitSignal(settings.architecture_known, timeout=10_000):
        picker.browse_button.click()
    assert settings.architecture().name == "tiny" and not error.text()
    assert settings.build_config().model == str(weights)


def test_the_preset_line_describes_the_device_chosen(make_napari_viewer):
    """Choosing the CPU with a GPU preset trains on the CPU, but the line under the preset
    still said "on cuda" and promised the preset's GPU memory."""
    gpu = MachineResources(gpu_memory_gb=80.0, ram_gb=256.0, n_cores=32, gpu_name="A100")
    settings = TrainWidget(make_napari_viewer(), machine=gpu).settings
    line = settings.preset_label.text
    assert " on cuda: " in line() and "expected memory up to 80 GB GPU memory" in line()
    settings.model_picker.device_combo.setCurrentText("cpu")
    assert settings.build_config().device == "cpu"
    assert " on cpu: " in line() and "expected memory" not in line()
    assert line().endswith("settings measured on cuda (up to 80 GB GPU memory), not on cpu")
    settings.model_picker.device_combo.setCurrentText("auto")  # the preset's own device
    assert " on cuda: " in line() and "expected memory up to 80 GB GPU memory" in line()


def test_advanced_settings_typed_while_the_weights_file_is_read_are_kept(
    qtbot, make_napari_viewer, tiny_checkpoint
):
    """The preset's values for a weights file are filled in once it has been read; they
    replaced the epochs and learning rate a person typed while it was being read."""
    from napari_samtune._qt.train_settings import READ_TASK

    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    settings = widget.settings
    settings.objects_spin.setValue(999)  # for the model chosen before: not kept
    settings.model_picker.select_model(str(tiny_checkpoint))
    assert settings.runner.is_running(READ_TASK)  # the preset's values come later
    settings.epochs_spin.setValue(7)
    settings.lr_edit.setText("0.0003")
    qtbot.waitUntil(lambda: settings.architecture() is not None, timeout=10_000)
    assert (settings.epochs_spin.value(), settings.lr_edit.text()) == (7, "0.0003")
    preset = settings.preset.setting_for(settings.architecture())
    assert settings.objects_spin.value() == preset.n_objects_per_batch  # filled for the file
    config = settings.build_config()
    assert (config.epochs, config.learning_rate) == (7, 3e-4)
    settings.model_picker.select_model("vit_t_lm")  # a model chosen after: its own values
    assert settings.epochs_spin.value() != 7 and settings.lr_edit.text() != "0.0003"


def test_refusals_name_the_widget_s_fields_not_the_core_s(make_napari_viewer):
    """ "patch_size=16; ... or None" (the field shows 0), "lower n_objects_per_batch or
    batch_size" (no such field), "freeze=()": the widget's fields are named now."""
    import pytest

    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    settings = widget.settings
    settings.model_picker.select_model("vit_b")
    settings.preset_combo.setCurrentIndex(settings.preset_combo.findData("cpu-8gb"))
    settings.patch_spin.setValue(16)
    with pytest.raises(ValueError) as err:
        settings.build_config()
    assert str(err.value).startswith("'patch size' 16; use at least 32 pixels, or 0 (the model")
    settings.patch_spin.setValue(0)
    settings.objects_spin.setValue(1000)
    with pytest.raises(ValueError) as err:
        settings.build_config()
    said = str(err.value)
    assert said.startswith("'objects per batch' 1000 per step is far above what preset 'cpu-8gb'")
    assert "lower 'objects per batch', or" in said and "batch_size" not in said
    settings.objects_spin.setValue(1)
    settings.freeze_checks["image_encoder"].setChecked(False)
    with pytest.raises(ValueError) as err:
        settings.build_config()
    said = str(err.value)
    assert "but 'freeze' (nothing ticked); tick 'image encoder' under 'freeze'" in said
    assert "freeze=" not in said


def test_a_gpu_preset_without_cuda_is_refused_with_the_panel_s_fix(
    make_napari_viewer, use_tiny_model, monkeypatch
):
    """Start was accepted and the run failed: "device='cuda' but CUDA is not available ...;
    use device='cpu' or 'auto'", though the device field said auto already."""
    from napari_samtune.core import devices

    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    settings = widget.settings
    use_tiny_model(widget, epochs=1)
    settings.preset_combo.setCurrentIndex(settings.preset_combo.findData("gtx1080"))
    with pytest.raises(
        ValueError, match="the preset GTX 1080 trains on cuda, but CUDA is not"
    ) as info:
        settings.build_config()
    assert "set the device to cpu to train with its settings on the CPU" in str(info.value)
    settings.model_picker.device_combo.setCurrentText("cuda")
    with pytest.raises(ValueError, match="the device is cuda, but CUDA is not available"):
        settings.build_config()
    settings.model_picker.device_combo.setCurrentText("cpu")
    assert settings.build_config().device == "cpu"  # the GPU preset's settings, on the CPU


def test_a_gpu_that_could_not_be_read_is_named_in_the_detected_preset_s_reason(
    make_napari_viewer,
):
    """The reason said "no CUDA GPU found", and the panel showed the note nowhere."""
    note = "the GPU could not be read (CUDA error: busy), so it is not counted"
    busy = MachineResources(None, 16.0, 8, None, note)
    widget = TrainWidget(make_napari_viewer(), machine=busy)
    assert widget.settings.detect_reason.startswith(note + "; CPU with 16.0 GB RAM")
    assert "no CUDA GPU found" not in widget.settings.detect_reason


def test_the_preset_line_warns_of_a_preset_for_more_memory_than_the_machine_has(
    make_napari_viewer,
):
    """It was said in the combo's tooltip alone; the line promised the preset's memory."""
    small = MachineResources(gpu_memory_gb=None, ram_gb=12.0, n_cores=2, gpu_name=None)
    settings = TrainWidget(make_napari_viewer(), machine=small).settings
    line = settings.preset_label.text
    assert settings.preset.key == "cpu-8gb" and "Warning" not in line()
    smaller = MachineResources(gpu_memory_gb=None, ram_gb=5.0, n_cores=2, gpu_name=None)
    detected = TrainWidget(make_napari_viewer(), machine=smaller).settings
    assert detected.preset.key == "cpu-8gb"  # the smallest, detected: no advice to switch
    assert "Warning" not in detected.preset_label.text()
    settings.preset_combo.setCurrentIndex(settings.preset_combo.findData("cpu-64gb"))
    assert line().endswith(
        "Warning: preset cpu-64gb is for 64 GB and this machine has 12.0 GB RAM: training "
        "may run out of memory; cpu-8gb is the preset detected for its RAM"
    )


def test_the_preset_line_of_a_gpu_preset_without_cuda_says_so_at_once(
    make_napari_viewer, monkeypatch
):
    """It described a CUDA run on a machine without CUDA; Start then refused it."""
    from napari_samtune.core import devices

    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    settings = TrainWidget(make_napari_viewer(), machine=SMALL_CPU).settings
    settings.preset_combo.setCurrentIndex(settings.preset_combo.findData("gtx1080"))
    line = settings.preset_label.text()
    assert " on cuda: " in line and "Warning: the preset GTX 1080 trains on cuda, but" in line
    settings.model_picker.device_combo.setCurrentText("cpu")
    assert "Warning" not in settings.preset_label.text()


def test_the_lora_and_frozen_encoder_refusal_names_the_ticks(make_napari_viewer):
    """It said "remove 'image_encoder' from freeze", a list the panel does not show."""
    settings = TrainWidget(make_napari_viewer(), machine=SMALL_CPU).settings
    settings.freeze_checks["image_encoder"].setChecked(True)
    settings.lora_spin.setValue(4)
    with pytest.raises(ValueError) as refused:
        settings.build_config()
    assert str(refused.value) == (
        "'LoRA rank' 4 trains adapters inside the image encoder, which is ticked under "
        "'freeze'; untick 'image encoder' under 'freeze' or set 'LoRA rank' 0"
    )


def test_the_memory_advice_of_a_run_to_continue_names_what_continue_can_change(
    make_napari_viewer, tmp_path
):
    """Continue… keeps the preset, objects per batch and what trains: advising those for a
    run with a checkpoint (continued, or stopped after its first epoch) left no way on."""
    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    advice = widget.memory_advice()
    assert advice == (
        "choose a preset for less memory, or in Advanced settings choose fewer objects per "
        "batch or a frozen image encoder"
    )
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"")
    widget.run_folder = tmp_path / "run"
    assert widget.memory_advice() == (
        "continue it on a device with more memory, or start a new run from its model with a "
        "preset for less memory or a frozen image encoder"
    )


def test_the_memory_advice_names_only_what_the_run_can_still_lower(make_napari_viewer):
    """On cpu-8gb's setting (1 object, the encoder frozen, the smallest preset) the advice
    named all three."""
    from dataclasses import replace
    from types import SimpleNamespace

    from napari_samtune.core.presets import TrainConfig

    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    smallest = replace(TrainConfig(), model="vit_b", preset="cpu-8gb", n_objects_per_batch=1,
                       batch_size=1, freeze=("image_encoder",))  # fmt: skip
    widget.started = SimpleNamespace(config=smallest)
    assert widget.memory_advice().startswith("its settings are already the smallest")
    assert "train a smaller model (vit_t)" in widget.memory_advice()
    widget.started = SimpleNamespace(config=replace(smallest, n_objects_per_batch=3))
    assert widget.memory_advice() == "in Advanced settings choose fewer objects per batch"
    lora = replace(smallest, freeze=(), lora_rank=4)
    widget.started = SimpleNamespace(config=lora)
    assert widget.memory_advice() == (
        "in Advanced settings choose LoRA rank 0 and a frozen image encoder"
    )


def test_the_detected_preset_takes_a_smaller_one_s_setting_for_a_model_it_has_none_for(
    make_napari_viewer,
):
    """vit_b with cpu-16gb "(detected)": refused in red ("cannot fit model 'vit_b'"), the
    presets to choose instead including some that do not fit the machine; cpu-8gb's vit_b
    setting fits, and is used, saying so."""
    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    settings = widget.settings
    settings.model_picker.select_model("vit_b")
    assert settings.preset.key == "cpu-16gb" and settings.preset is settings.detected
    line = settings.preset_label.text()
    assert "cpu-16gb, detected here, has no setting measured for vit_b, so that of cpu-8gb" in line
    assert not settings.settings_error.isVisible() or not settings.settings_error.text()
    config = settings.build_config()
    assert config.preset == "cpu-8gb" and "image_encoder" in config.freeze


def test_device_mps_without_apple_s_mps_is_refused_at_once(make_napari_viewer, monkeypatch):
    """mps is listed on every system: chosen on Linux, Start launched a run that failed in
    the background ("device='mps' but Apple MPS is not available here")."""
    from napari_samtune.core import devices

    monkeypatch.setattr(devices, "mps_available", lambda: False)
    widget = TrainWidget(make_napari_viewer(), machine=SMALL_CPU)
    settings = widget.settings
    settings.model_picker.select_model("vit_t")
    settings.model_picker.device_combo.setCurrentText("mps")
    assert "the device is mps, but Apple MPS is not available here" in settings.preset_label.text()
    with pytest.raises(ValueError, match="choose cpu or auto"):
        settings.build_config()


def test_continue_compares_a_detected_preset_s_step_down_with_the_run_s(make_napari_viewer):
    """A vit_b run (cpu-8gb's setting, cpu-16gb detected) continued with objects per batch
    beyond the preset (Start would refuse): "preset (cpu-8gb; cpu-16gb set here)", which
    Continue… keeps, though nothing of the preset was changed."""
    from dataclasses import replace

    from napari_samtune._qt.train_continue import kept_settings_warning

    settings = TrainWidget(make_napari_viewer(), machine=SMALL_CPU).settings
    settings.model_picker.select_model("vit_b")
    run = settings.build_config()
    assert run.preset == "cpu-8gb"
    settings.objects_spin.setValue(1000)  # refused by Start: compared as shown
    warning = kept_settings_warning(settings, replace(run, n_objects_per_batch=1))
    assert "preset" not in warning and "objects per batch" in warning


def test_lora_on_a_preset_that_freezes_the_encoder_is_not_told_to_freeze_it(
    make_napari_viewer,
):
    """With the encoder unticked for LoRA, the preset's memory refusal said to tick it
    again (and nothing of LoRA), which LoRA's own refusal then said to untick."""
    settings = TrainWidget(make_napari_viewer(), machine=SMALL_CPU).settings
    settings.preset_combo.setCurrentIndex(settings.preset_combo.findData("cpu-8gb"))
    settings.model_picker.select_model("vit_b")
    settings.lora_spin.setValue(4)
    settings.freeze_checks["image_encoder"].setChecked(False)
    with pytest.raises(ValueError) as refused:
        settings.build_config()
    assert "set 'LoRA rank' 0 and tick 'image encoder' under 'freeze' or choose a preset" in str(
        refused.value
    )  # both: with the encoder ticked and LoRA set, LoRA's own refusal said to untick it
