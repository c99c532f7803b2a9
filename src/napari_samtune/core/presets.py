"""Resource presets for finetuning, as immutable data, and the training configuration.

A :class:`ResourcePreset` records settings measured to fit a machine of a given
size (CPU RAM or GPU memory): per model, which parts are frozen, how many
objects a batch holds and the batch size. Fixed for every preset (measured):
batch size 1 (A100: 2), at least 50 samples per epoch (by oversampling), Adam
at learning rate 1e-5 with ReduceLROnPlateau, early stopping after 10 epochs
without improvement, at most 100 epochs.

The measurements used 512x512 patches. Patches default to the model's input
size instead (``TrainConfig.patch_size=None``): inference embeds images larger
than the input in tiles of exactly that size without rescaling, so training on
such patches shows objects at the scale inference sees them. Memory does not
depend on the patch size, as the encoder input is always the model's input size
(smaller patches are resized up to it, as ``SamPredictor`` resizes images).

:func:`detect_preset` picks a preset from measured resources given as
parameters (so it is testable without a GPU); :func:`measure_machine` measures
this machine. :class:`TrainConfig` is the one configuration of a training run;
:func:`config_from_preset` makes one from a preset and refuses a combination the
preset cannot fit, before any training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Literal

from napari_samtune.core.architectures import ARCHITECTURES, SamArchitecture, as_architecture
from napari_samtune.core.config_checks import (
    check_lora_rank,
    check_override_names,
    kind_of,
)
from napari_samtune.core.machine import MachineResources as MachineResources
from napari_samtune.core.machine import measure_machine as measure_machine
from napari_samtune.core.train_config import TrainConfig as TrainConfig  # its home till now

# GPU / RAM sizes are nominal ("32 GB") while machines report a little less (31.7 GiB).
MEMORY_TOLERANCE = 0.9
# A request above this multiple of a preset's objects per step is "far above": refused.
MAX_OBJECTS_FACTOR = 2.0
FROZEN = ("image_encoder",)


@dataclass(frozen=True)
class ModelSetting:
    """What a preset trains for one model."""

    model: str  # architecture name: "vit_t", "vit_b", "vit_l" or "vit_h"
    freeze: tuple[str, ...]  # parts kept fixed, a subset of config_checks.MODEL_PARTS
    n_objects_per_batch: int  # objects sampled per patch
    batch_size: int = 1  # patches per step


@dataclass(frozen=True)
class ResourcePreset:
    """Training settings measured to fit one kind of machine."""

    key: str  # short name for the command line, e.g. "cpu-16gb", "v100"
    name: str  # human-readable name, e.g. "CPU, 16 GB, 8 cores"
    device: Literal["cpu", "cuda"]  # where training runs
    memory_gb: float  # RAM (CPU presets) or GPU memory, nominal GB
    n_cores: int | None  # CPU cores the measurement used (None for GPU presets)
    settings: tuple[ModelSetting, ...]  # per model, smallest model first
    min_samples_per_epoch: int = 50  # oversampling target per epoch
    learning_rate: float = 1e-5  # Adam learning rate
    epochs: int = 100  # at most this many epochs
    early_stopping: int = 10  # stop after this many epochs without improvement

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(s.model for s in self.settings)

    def setting_for(self, arch: SamArchitecture) -> ModelSetting:
        """The setting for ``arch``: its own row, or that of the smallest listed model it fits.

        Raises ``ValueError`` when ``arch`` is larger than every model of the preset.
        """
        size = approx_encoder_params(arch)
        for setting in self.settings:  # smallest first
            if size <= approx_encoder_params(ARCHITECTURES[setting.model]) * 1.05:
                return setting
        raise ValueError(
            f"preset {self.key!r} ({self.name}) cannot fit model {arch.name!r}: it was measured "
            f"for {', '.join(self.models)} only; choose {' or '.join(self.models)}, or a preset "
            f"measured for {arch.name!r} or a larger one "
            f"({', '.join(p.key for p in PRESETS if fits_encoder_size(p, size))})"
        )


def approx_encoder_params(arch: SamArchitecture) -> float:
    """Rough parameter count of the image encoder (12 d^2 per transformer block)."""
    if arch.encoder == "tiny_vit":
        return float(
            sum(
                12 * d * w * w
                for d, w in zip(arch.tinyvit_depths, arch.tinyvit_embed_dims, strict=True)
            )
        )
    return float(12 * arch.depth * arch.embed_dim**2)


def fits_encoder_size(preset: ResourcePreset, size: float) -> bool:
    return any(size <= approx_encoder_params(ARCHITECTURES[m]) * 1.05 for m in preset.models)


def for_model(preset: ResourcePreset, arch: SamArchitecture) -> tuple[ResourcePreset, str]:
    """A detected ``preset`` for ``arch``: itself, or where it has no setting for ``arch``
    the largest preset of its device and no more memory that has one (cpu-16gb, measured
    with vit_t alone, refused vit_b on the machines it is detected on, though cpu-8gb's
    setting fits there), with a note saying so; ``preset`` again where none has one
    (:meth:`ResourcePreset.setting_for` then says why). Not for a preset chosen by name."""
    size = approx_encoder_params(arch)
    if fits_encoder_size(preset, size):
        return preset, ""
    smaller = [
        p
        for p in PRESETS
        if p.device == preset.device
        and p.memory_gb <= preset.memory_gb
        and fits_encoder_size(p, size)
    ]
    if not smaller:
        return preset, ""
    chosen = max(smaller, key=lambda p: p.memory_gb)
    return chosen, (
        f"{preset.key}, detected here, has no setting measured for {arch.name}, so that of "
        f"{chosen.key}, the largest preset below it that has one, is used"
    )


def _cpu(key: str, memory: int, cores: int, *settings: ModelSetting) -> ResourcePreset:
    name = f"CPU, {memory} GB, {cores} cores"
    return ResourcePreset(key, name, "cpu", float(memory), cores, settings)


def _gpu(key: str, name: str, memory: int, *settings: ModelSetting) -> ResourcePreset:
    return ResourcePreset(key, name, "cuda", float(memory), None, settings)


M = ModelSetting
PRESETS: tuple[ResourcePreset, ...] = (
    _cpu("cpu-8gb", 8, 8, M("vit_t", FROZEN, 1), M("vit_b", FROZEN, 1)),
    _cpu("cpu-16gb", 16, 8, M("vit_t", (), 5)),
    _cpu("cpu-32gb", 32, 16, M("vit_b", (), 10)),
    _cpu("cpu-64gb", 64, 16, M("vit_b", (), 15)),
    _gpu("gtx1080", "GTX 1080", 8, M("vit_t", (), 5), M("vit_b", FROZEN, 10)),
    _gpu("rtx5000", "RTX 5000", 16, M("vit_t", (), 20), M("vit_b", (), 10)),
    _gpu("v100", "V100", 32, M("vit_t", (), 45), M("vit_b", (), 35)),
    _gpu(
        "a100",
        "A100",
        80,
        M("vit_t", (), 50, 2),
        M("vit_b", (), 40, 2),
        M("vit_l", (), 30, 2),
        M("vit_h", (), 25, 2),
    ),
)
del M


def get_preset(key: str) -> ResourcePreset:
    """The preset called ``key`` (its short key, or its full name, case-insensitive)."""
    _check_key(key)
    if key.strip().lower() == "auto":
        raise ValueError(
            "get_preset('auto'): 'auto' picks a preset for this machine; call "
            "resolve_preset('auto') (or config_from_preset('auto', model)) for it"
        )
    for preset in PRESETS:
        if key.strip().lower() in (preset.key, preset.name.lower()):
            return preset
    raise ValueError(
        f"unknown preset {key!r}; choose one of {[p.key for p in PRESETS]!r} or 'auto'"
    )


def detect_preset(
    gpu_memory_gb: float | None,
    ram_gb: float,
    n_cores: int,
    n_processes: int = 1,
    gpu_problem: str = "",
) -> tuple[ResourcePreset, str]:
    """Choose the largest preset that fits the measured resources, and say why.

    Args:
        gpu_memory_gb: GPU memory in GiB, or None when there is no usable GPU.
        ram_gb: physical memory in GiB.
        n_cores: number of CPU cores.
        n_processes: training processes on this machine (``torchrun --nproc-per-node``):
            each has a GPU of its own, but on the CPU they share the RAM and cores.
        gpu_problem: why a GPU there is not counted (busy, in exclusive use), said instead
            of "no CUDA GPU found" (:attr:`MachineResources.note`).

    Returns:
        ``(preset, reason)``; a GPU preset whenever the GPU has at least the
        smallest GPU preset's memory, else a CPU preset chosen by RAM.
    """
    gpu_presets = [p for p in PRESETS if p.device == "cuda"]
    cpu_presets = [p for p in PRESETS if p.device == "cpu"]
    if gpu_memory_gb is not None:
        fitting = [p for p in gpu_presets if p.memory_gb * MEMORY_TOLERANCE <= gpu_memory_gb]
        if fitting:
            chosen = fitting[-1]
            return chosen, (
                f"GPU with {gpu_memory_gb:.1f} GB: the largest GPU preset that fits is "
                f"{chosen.name} ({chosen.memory_gb:g} GB)"
            )
        gpu_note = (
            f"the GPU has {gpu_memory_gb:.1f} GB, less than the smallest GPU preset "
            f"({gpu_presets[0].name}, {gpu_presets[0].memory_gb:g} GB); "
        )
    else:
        gpu_note = f"{gpu_problem}; " if gpu_problem else "no CUDA GPU found; "
    reason = f"{gpu_note}CPU with {ram_gb:.1f} GB RAM and {n_cores} cores"
    if n_processes > 1:
        ram_gb, n_cores = ram_gb / n_processes, max(1, n_cores // n_processes)
        reason += f" shared by {n_processes} training processes ({ram_gb:.1f} GB each)"
    fitting = [p for p in cpu_presets if p.memory_gb * MEMORY_TOLERANCE <= ram_gb]
    chosen = fitting[-1] if fitting else cpu_presets[0]
    reason += f": {chosen.name}"
    if not fitting:
        reason += (
            " (the smallest preset; this machine has less RAM, training may run out of memory)"
        )
    elif chosen.n_cores and n_cores < chosen.n_cores:
        reason += f" (measured with {chosen.n_cores} cores: expect slower steps here)"
    return chosen, reason


def resolve_preset(
    key: str, device: str | None = None, arch: SamArchitecture | None = None
) -> tuple[ResourcePreset, str]:
    """The preset named ``key``, or for "auto" the one :func:`detect_preset` picks on this
    machine for each of its training processes (``torchrun``'s ``LOCAL_WORLD_SIZE``); with
    a line saying why. ``device`` (e.g. "cpu", "cuda:1"; None or "auto": the default) is
    the one the run trains on: "cpu" gets a CPU preset whatever GPU there is (it got the
    GPU's, an A100's settings on the CPU), "cuda:1" one for that GPU's memory. With the
    model's ``arch``, a detected preset without a setting for it steps down
    (:func:`for_model`), and the line says so."""
    _check_key(key)
    if key.strip().lower() != "auto":
        return get_preset(key), f"chosen as {key!r}"
    preset, reason = detect_on(machine_for(device), processes_on_this_machine())
    if arch is None:
        return preset, reason
    preset, note = for_model(preset, as_architecture(arch))
    return preset, f"{reason}; {note}" if note else reason


def machine_for(device: str | None) -> MachineResources:
    """What :func:`measure_machine` finds for training on ``device``: the GPU it names
    (``cuda:1``, not GPU 0), or none counted for one off the GPU ("cpu")."""
    index = gpu_index(device)
    found = measure_machine() if index is None else measure_machine(index)
    if device_kind(device) not in ("auto", "cuda") and found.gpu_memory_gb is not None:
        not_counted = f"training on {device}, the GPU ({found.gpu_name}) is not counted"
        found = replace(found, gpu_memory_gb=None, gpu_name=None, note=not_counted)
    return found


def device_kind(device: str | None) -> str:
    """ "cuda" of "cuda:1", "cpu" of "cpu", "auto" of None: read alike by what sizes a
    preset for a device (``memory_short`` compared " cuda:1" with the RAM)."""
    return (device or "auto").partition(":")[0].strip().lower()


def gpu_index(device: str | None) -> int | None:
    """The index of a GPU named as "cuda:N", else None."""
    index = (device or "").partition(":")[2].strip()
    return int(index) if device_kind(device) == "cuda" and index.isdigit() else None


def detect_on(found: MachineResources, n_processes: int = 1) -> tuple[ResourcePreset, str]:
    """:func:`detect_preset` for what :func:`measure_machine` ``found``: a GPU that could
    not be read is said to be so, where the reason said "no CUDA GPU found" and then, at its
    end, that the GPU could not be read."""
    return detect_preset(
        found.gpu_memory_gb, found.ram_gb, found.n_cores, n_processes, gpu_problem=found.note
    )


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(
            f"preset={key!r} is {kind_of(key)}; pass a preset key such as "
            f"{PRESETS[0].key!r} (one of {[p.key for p in PRESETS]!r}) or 'auto'"
        )


def processes_on_this_machine() -> int:
    """How many training processes ``torchrun`` started on this machine (1 without it)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def config_from_preset(
    preset: ResourcePreset | str,
    model: str | os.PathLike,
    architecture: SamArchitecture | str | None = None,
    check: bool = True,
    **overrides,
) -> TrainConfig:
    """The preset's settings for ``model``, with ``overrides`` applied (``dataclasses.replace``).

    Args:
        preset: a resource preset, or its key or name, or "auto" (see :func:`resolve_preset`).
        model: what to finetune (see ``TrainConfig.model``).
        architecture: the model's architecture, or its name ("vit_b"); looked up from
            ``model`` when None.
        check: refuse (``ValueError``) overrides the preset cannot fit.
        overrides: ``TrainConfig`` fields to change.

    Unless overridden, ``checkpoint_trainable_only`` is on when the image encoder is frozen:
    checkpoints then hold the trained weights, which complete the base model when loaded.
    """
    if not isinstance(preset, (str, ResourcePreset)):
        raise TypeError(
            f"preset={preset!r}; pass a preset key such as 'cpu-16gb' (see PRESETS), 'auto' "
            "for this machine's, or a ResourcePreset"
        )
    model = os.fspath(model) if isinstance(model, os.PathLike) else model
    if not isinstance(model, str):
        # None: e.g. TrainingFinished.registered_name of a run stopped early
        stopped = "; a training run stopped before its first step registered none"
        raise TypeError(
            f"model={model!r} names no model: give a model name (see 'samtune models'), a "
            f"weights file or 'random:<architecture>'{stopped if model is None else ''}"
        )
    if architecture is None:
        from napari_samtune.core.model_source import architecture_of

        architecture = architecture_of(model)
    architecture = as_architecture(architecture)
    if isinstance(preset, str):  # "auto": detected for this model (see resolve_preset)
        preset = resolve_preset(preset, arch=architecture)[0]
    setting = preset.setting_for(architecture)
    base = TrainConfig(
        model=model,
        epochs=preset.epochs,
        learning_rate=preset.learning_rate,
        n_objects_per_batch=setting.n_objects_per_batch,
        batch_size=setting.batch_size,
        freeze=setting.freeze,
        early_stopping=preset.early_stopping,
        min_samples_per_epoch=preset.min_samples_per_epoch,
        device=preset.device,
        preset=preset.key,
    )
    check_override_names(overrides, [f.name for f in fields(TrainConfig)])
    _check_lora_in_frozen_encoder(preset, architecture, setting, overrides)
    config = replace(base, **overrides)
    if "checkpoint_trainable_only" not in overrides:
        # a frozen encoder is the base model's own, which loading completes: a ViT-B run
        # wrote its 360 MB twice an epoch (best.pt and last.pt), on a 2-core VM longer than
        # training 10 samples on their cached embeddings
        config = replace(config, checkpoint_trainable_only="image_encoder" in config.freeze)
    check_lora_rank(config.lora_rank, architecture)
    if check:
        check_fits(preset, architecture, config)
    return config


def _check_lora_in_frozen_encoder(
    preset: ResourcePreset, arch: SamArchitecture, setting: ModelSetting, overrides: dict
) -> None:
    """``ValueError`` for LoRA asked of a preset that freezes the image encoder, unless
    ``freeze`` is given too: the config's own check would blame a freeze nobody passed."""
    if not overrides.get("lora_rank") or "freeze" in overrides:
        return
    if "image_encoder" not in setting.freeze:
        return
    raise ValueError(
        f"lora_rank={overrides['lora_rank']!r} trains adapters inside the image encoder, "
        f"which preset {preset.key!r} keeps frozen for {arch.name} (freeze={setting.freeze!r}) "
        f"to fit its memory; training adapters backpropagates through the encoder: {MORE_MEMORY}"
        f", or set lora_rank=0, or give freeze=() and {SKIP_CHECKS}"
    )


MORE_MEMORY = "choose a preset with more memory"  # how a refusal of check_fits ends
SKIP_CHECKS = "skip the preset's memory checks (check=False)"  # the command line: --force


def check_fits(preset: ResourcePreset, arch: SamArchitecture, config: TrainConfig) -> None:
    """Raise ``ValueError`` when ``config`` asks for clearly more memory than ``preset``'s
    setting for ``arch`` (see :meth:`ResourcePreset.setting_for`) fits."""
    setting = preset.setting_for(arch)
    subject = arch.name if arch.name in ARCHITECTURES else repr(config.model)
    row = ""  # says which row applies when the preset has none of the model's own
    if arch.name != setting.model:
        row = (
            f", going by its {setting.model} row (it has no row for {subject}; "
            f"{setting.model} is the smallest model with a row that is at least as large)"
        )
    asked = config.n_objects_per_batch * config.batch_size
    measured = setting.n_objects_per_batch * setting.batch_size
    if asked > MAX_OBJECTS_FACTOR * measured:
        raise ValueError(
            f"n_objects_per_batch={config.n_objects_per_batch!r} x batch_size="
            f"{config.batch_size!r} = {asked} objects per step is far above what preset "
            f"{preset.key!r} fits for {subject} ({measured}){row}; lower n_objects_per_batch "
            f"or batch_size, or {MORE_MEMORY}"
        )
    if "image_encoder" in setting.freeze and not config.encoder_frozen:
        fix = "add 'image_encoder' to freeze"  # LoRA's adapters train inside it: no LoRA
        fix = f"set lora_rank=0 and {fix}" if config.lora_rank else fix
        raise ValueError(
            f"preset {preset.key!r} fits {subject} only with the image encoder frozen{row}, "
            f"but freeze={config.freeze!r}; {fix} or {MORE_MEMORY}"
        )
