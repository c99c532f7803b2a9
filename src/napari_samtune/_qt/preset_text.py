"""The line under the Finetune widget's preset choice: what a resource preset does with
the chosen model on the chosen device (what trains, objects per batch, expected memory).
Plain text from the core's presets, and the names of the model parts shown in the widget."""

from __future__ import annotations

from napari_samtune.core.architectures import SamArchitecture
from napari_samtune.core.presets import ResourcePreset

PART_LABELS = {"image_encoder": "image encoder", "prompt_encoder": "prompt encoder",
               "mask_decoder": "mask decoder"}  # fmt: skip


def describe_preset(preset: ResourcePreset, model: str, arch: SamArchitecture, device: str) -> str:
    """One line: what ``preset`` does with ``model`` on ``device``, the device chosen for
    training. The preset's memory figure was measured on its own device, so on another
    one the line says where it holds instead of promising it."""
    setting = preset.setting_for(arch)
    frozen = [PART_LABELS[p] for p in setting.freeze]
    trains = f"{', '.join(frozen)} frozen" if frozen else "all parts trained"
    batch = f", {setting.batch_size} patches per step" if setting.batch_size > 1 else ""
    memory = f"{preset.memory_gb:g} GB {'GPU memory' if preset.device == 'cuda' else 'RAM'}"
    if device == preset.device:
        expected = f"expected memory up to {memory}"
    else:
        expected = f"settings measured on {preset.device} (up to {memory}), not on {device}"
    return (
        f"{model} ({arch.name}) on {device}: {trains}, {setting.n_objects_per_batch} "
        f"objects per batch{batch}; {expected}"
    )
