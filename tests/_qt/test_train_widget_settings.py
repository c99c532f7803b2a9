"""The training widget's settings while a person changes their mind about the model and
the device."""

from __future__ import annotations

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
