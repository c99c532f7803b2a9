"""The line under the Finetune widget's preset choice: what a resource preset does with
the chosen model on the chosen device (what trains, objects per batch, expected memory).
Plain text from the core's presets, the names of the model parts shown in the widget, and
the core's messages in the widget's words (:func:`in_field_terms`)."""

from __future__ import annotations

import re

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


# the TrainConfig fields the Finetune widget sets, by the label of their field
FIELD_LABELS = {
    "n_objects_per_batch": "objects per batch", "min_samples_per_epoch": "patches per epoch",
    "learning_rate": "learning rate", "patch_size": "patch size", "lora_rank": "LoRA rank",
    "early_stopping": "early stopping", "epochs": "epochs", "freeze": "freeze",
}  # fmt: skip
# what a field shows for None
NONE_SHOWN = {"patch_size": "0 (the model's input size)", "early_stopping": "0 (never stop)"}


def in_field_terms(message: str) -> str:
    """A core message about a ``TrainConfig`` in the Finetune widget's words: the field
    names as the labels shown (``n_objects_per_batch=11`` -> ``'objects per batch' 11``),
    None as the field shows it (``patch_size=None`` -> ``'patch size' 0 (the model's input
    size)``) and the parts to freeze as their ticks. Names inside quotes or paths are left."""
    # the preset sets the batch size (1 but on GPUs), which the widget does not show
    message = re.sub(r" x batch_size=1 = \d+ objects per step", " per step", message)
    message = message.replace(" or batch_size,", ",")
    for verb, tick in ((r"add '(\w+)' to", "tick"), (r"remove '(\w+)' from", "untick")):
        message = re.sub(
            rf"{verb} freeze",
            lambda found, tick=tick: (
                f"{tick} '{PART_LABELS.get(found.group(1), found.group(1))}' under 'freeze'"
            ),
            message,
        )
    # the part named as ticked, where the core says the list holds it
    message = re.sub(
        r"inside the (image encoder|prompt encoder|mask decoder), which freeze also lists",
        r"inside the \1, which is ticked under 'freeze'",
        message,
    )
    for name, label in FIELD_LABELS.items():
        key, before = re.escape(name), message
        message = re.sub(
            rf"(?<![\w/\\.-]){key}=('[^']*'|\([^()]*\)|[^\s;,]+)",
            lambda found, name=name, label=label: f"'{label}' {_shown(name, found.group(1))}",
            message,
        )
        if "_" in name:
            message = re.sub(rf"(?<![\w'\"/\\.-]){key}(?![\w'\"/\\-]|\.\w)", f"'{label}'", message)
        if message != before and name in NONE_SHOWN:
            message = re.sub(r"\bNone\b", NONE_SHOWN[name], message)
    return message


def _shown(name: str, value: str) -> str:
    if value == "None":
        return NONE_SHOWN.get(name, "0")
    if name == "freeze":
        parts = [PART_LABELS.get(part, part) for part in re.findall(r"'(\w+)'", value)]
        return f"({', '.join(parts)} ticked)" if parts else "(nothing ticked)"
    return value
