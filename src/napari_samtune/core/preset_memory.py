"""Whether a resource preset fits the memory of the machine and device trained on, and
what to choose instead where it does not: the warnings of ``samtune train``, the demo and
the Finetune panel. Presets themselves are in :mod:`napari_samtune.core.presets`."""

from __future__ import annotations

from dataclasses import replace

from napari_samtune.core.architectures import ARCHITECTURES, SamArchitecture, as_architecture
from napari_samtune.core.machine import MachineResources
from napari_samtune.core.presets import (
    MEMORY_TOLERANCE,
    PRESETS,
    ResourcePreset,
    approx_encoder_params,
    detect_on,
    device_kind,
    fits_encoder_size,
    for_model,
    get_preset,
    machine_for,
    processes_on_this_machine,
)


def memory_short(
    preset: ResourcePreset,
    found: MachineResources,
    device: str,
    arch: SamArchitecture | None = None,
    n_processes: int = 1,
) -> str:
    """Where ``preset`` is for more memory than this machine ``found`` has on ``device``
    (the device trained on: its GPU's memory, else the RAM, shared by its ``n_processes``
    training processes), a sentence saying so, with the preset to choose instead for model
    ``arch`` (any model: None); "" where it fits, or where that memory is unknown (no GPU:
    another check says so)."""
    on_gpu = device_kind(device) == "cuda"
    have = found.gpu_memory_gb if on_gpu else found.ram_gb
    if have is None:
        return ""
    what = "GPU memory" if on_gpu else "RAM"
    has = f"this machine has {have:.1f} GB {what}"
    if not on_gpu and n_processes > 1:  # (each process has a GPU of its own)
        have = have / n_processes
        has += f" for {n_processes} training processes ({have:.1f} GB each)"
        found = replace(found, ram_gb=have)
    if preset.memory_gb * MEMORY_TOLERANCE <= have:
        return ""
    short = f"preset {preset.key} is for {preset.memory_gb:g} GB and {has}"
    short += ": training may run out of memory"
    return f"{short}; {_instead(preset, found, on_gpu, have, arch, n_processes)}"


def _instead(
    preset: ResourcePreset, found: MachineResources, on_gpu: bool, have: float, arch, n: int
) -> str:
    """The preset detected for the device trained on and the model ('samtune presets' named
    the machine's: on a GPU machine training on the CPU, the GPU preset warned about), or
    what to do where that is ``preset`` itself (the smallest of its kind; ``n`` training
    processes share the RAM)."""
    fits = detect_on(found if on_gpu else replace(found, gpu_memory_gb=None, note=""))[0]
    if on_gpu and fits.device != "cuda":
        return f"no GPU preset fits its {have:.1f} GB: train on the CPU (device cpu)"
    if arch is not None:
        fits = for_model(fits, arch)[0]
        if not fits_encoder_size(fits, approx_encoder_params(arch)):
            return f"no preset measured for {arch.name} fits it: choose a smaller model"
    if fits.key == preset.key:  # it was named as what to choose instead of itself
        fewer = ", start fewer training processes on it" if not on_gpu and n > 1 else ""
        return (
            f"{preset.key} is the smallest preset for it: free memory (close other "
            f"programs){fewer}, or train a smaller model or fewer objects per patch"
        )
    return f"{fits.key} is the preset detected for {'its GPU' if on_gpu else 'its RAM'}"


def preset_memory_short(config) -> str:
    """:func:`memory_short` of a run's preset (a :class:`TrainConfig`'s) on the device it
    trains on: "" where it fits, as the one detected here always does."""
    from napari_samtune.core.model_source import architecture_of

    preset = get_preset(config.preset)
    device = preset.device if device_kind(config.device) == "auto" else config.device
    found, processes = machine_for(device), processes_on_this_machine()
    if not memory_short(preset, found, device, n_processes=processes):  # fits: the model (a
        return ""  # file, say) is not read
    arch = as_architecture(architecture_of(config.model))
    return memory_short(preset, found, device, arch, processes)


def smaller_settings(config) -> set[str]:
    """What a run's :class:`~napari_samtune.core.presets.TrainConfig` (None: unknown) can
    still lower where it ran out of memory: "preset" (one for less memory on its device
    that has a setting for its model), "objects" and "batch" (above 1), "freeze" (the image
    encoder trains). On cpu-8gb's setting (1 object, batch 1, encoder frozen) the advice
    named all four, none possible; for vit_h on the a100 it named a smaller preset, which
    none measured for vit_h is."""
    unknown = {"preset", "objects", "batch", "freeze"}
    if config is None:
        return unknown
    try:
        preset = get_preset(config.preset)
    except (AttributeError, ValueError, TypeError):  # a config of its own: say them all
        return unknown
    room = {"preset"} if _smaller_preset_for(preset, _architecture(config)) else set()
    if config.n_objects_per_batch > 1:
        room.add("objects")
    if config.batch_size > 1:
        room.add("batch")
    if not config.encoder_frozen:
        room.add("freeze")
    return room


def _architecture(config) -> SamArchitecture | None:
    """The run's model's architecture, or None where it cannot be told (then any fits)."""
    from napari_samtune.core.model_source import architecture_of

    try:
        return as_architecture(architecture_of(config.model))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _smaller_preset_for(preset: ResourcePreset, arch: SamArchitecture | None) -> bool:
    """Whether a preset for less memory than ``preset``, on its device, has a setting for
    ``arch`` (any model: None)."""
    for other in PRESETS:
        if other.device != preset.device or other.memory_gb >= preset.memory_gb:
            continue
        if arch is None or fits_encoder_size(other, approx_encoder_params(arch)):
            return True
    return False


def nothing_smaller(config) -> str:
    """What is left where nothing of ``config`` (a TrainConfig, or None) can be lowered:
    a smaller model or a GPU only where the run has neither."""
    ways = ["free memory (close other programs)"]
    arch = None if config is None else _architecture(config)
    vit_t = approx_encoder_params(ARCHITECTURES["vit_t"])
    if arch is None or approx_encoder_params(arch) > vit_t * 1.05:
        ways.append("train a smaller model (vit_t)")
    try:
        on_gpu = get_preset(config.preset).device == "cuda"
    except (AttributeError, ValueError, TypeError):
        on_gpu = False
    if not on_gpu:
        ways.append("train on a GPU")
    return (
        "its settings are already the smallest (1 object, batch size 1, the image encoder "
        f"frozen, the smallest preset for its model): {or_list(ways)}"
    )


def or_list(items: list[str]) -> str:
    """``'a, b or c'``: the ways a memory advice names, as one phrase."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def trains_adapters(config) -> bool:
    """Whether the run (a TrainConfig, or None) trains LoRA adapters in the image encoder:
    freezing it is then refused unless LoRA's rank is set to 0 too (the advice "--freeze
    image_encoder" alone was refused: "lora_rank=4 trains adapters inside the image
    encoder")."""
    return bool(getattr(config, "lora_rank", 0))
