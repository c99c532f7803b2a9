"""Setting up a finetuning run: model (+ LoRA), frozen parts, precision, optimizer, scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from segment_anything.modeling import Sam

from napari_samtune.core.accelerate import cpu_has_fast_bf16, warn_if_cpu_bf16_is_slow
from napari_samtune.core.architectures import SamArchitecture
from napari_samtune.core.config_checks import MODEL_PARTS
from napari_samtune.core.devices import resolve_device
from napari_samtune.core.lora import apply_lora
from napari_samtune.core.model_source import load_base_model
from napari_samtune.core.presets import TrainConfig

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(mode: str, device: torch.device) -> str:
    """Turn ``TrainConfig.mixed_precision`` into "bf16", "fp16" or "no" for ``device``.

    "auto" picks bf16 on GPUs that support it and on CPUs that compute it natively,
    fp16 (with a GradScaler) on older GPUs, and full precision elsewhere.
    """
    if mode == "no":
        return "no"
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if mode == "bf16" and not bf16_ok:
            raise ValueError(
                "mixed_precision='bf16' but this GPU does not support bfloat16; "
                "use 'fp16' or 'auto'"
            )
        return ("bf16" if bf16_ok else "fp16") if mode == "auto" else mode
    if mode == "fp16":
        raise ValueError(
            f"mixed_precision='fp16' needs a CUDA GPU, but training runs on {device.type!r}; "
            "use 'bf16', 'no' or 'auto'"
        )
    if device.type == "cpu":
        if mode == "bf16":
            warn_if_cpu_bf16_is_slow()
        return "bf16" if mode == "bf16" or cpu_has_fast_bf16() else "no"
    if mode == "bf16":
        raise ValueError(f"mixed_precision='bf16' is not supported on {device.type!r}; use 'no'")
    return "no"


def continued_precision(recorded: str, device: str | torch.device) -> str:
    """The precision to continue a run with on ``device`` (what ``--device`` or the widget
    names) when none is asked for: the one its files record. Runs written before
    2026-12-06 recorded the precision their machine resolved from "auto": "fp16" (an older
    GPU), which no CPU runs, and "bf16", which a CPU without native bf16 emulates at a
    fraction of the speed; either continues with "auto" where it would fail or crawl."""
    try:
        kind = resolve_device(device).type
    except ValueError:  # a device this machine lacks: training says so, naming the fix
        return recorded
    if recorded == "fp16" and kind != "cuda":
        return "auto"
    if recorded == "bf16" and kind == "cpu" and not cpu_has_fast_bf16():
        return "auto"
    return recorded


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision ("no": a no-op)."""
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def build_training_model(
    config: TrainConfig, base: tuple[Sam, SamArchitecture, str] | None = None
) -> tuple[Sam, SamArchitecture, str]:
    """Load ``config.model`` (or take ``base``, as :func:`load_base_model` returns it) and
    add LoRA adapters if asked: ``(sam, architecture, model_id)``.

    Adapters are initialised from a generator seeded with ``config.seed``.
    """
    sam, arch, model_id = load_base_model(config.model, seed=config.seed) if base is None else base
    if config.lora_rank:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            apply_lora(sam.image_encoder, config.lora_rank, config.lora_alpha)
    return sam, arch, model_id


def frozen_modules(sam: Sam, config: TrainConfig) -> list[torch.nn.Module]:
    """Parts whose own weights do not train (the encoder too when LoRA adapts it)."""
    names = set(config.freeze) | ({"image_encoder"} if config.lora_rank else set())
    return [getattr(sam, part) for part in MODEL_PARTS if part in names]


def trainable_names(sam: Sam, config: TrainConfig) -> set[str]:
    """Names of the parameters that train per ``config``: those of the parts not frozen,
    and with LoRA only its adapters of the image encoder."""

    def trains(name: str) -> bool:
        part = name.split(".", 1)[0]
        if config.lora_rank and part == "image_encoder":
            return name.endswith(("lora_a", "lora_b"))
        return part in MODEL_PARTS and part not in config.freeze

    return {name for name, _ in sam.named_parameters() if trains(name)}


def set_trainable(sam: Sam, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Mark what trains per ``config``; returns the trainable parameters in a fixed order."""
    names = trainable_names(sam, config)
    for name, param in sam.named_parameters():
        param.requires_grad_(name in names)
    return [p for p in sam.parameters() if p.requires_grad]


def may_leave_parameters_unused(sam: Sam) -> bool:
    """Whether a training step can leave a trainable parameter without a gradient: a
    box-prompted pass leaves the point embeddings unused (and vice versa), a pass
    without a mask prompt the mask embedding, a single-mask pass three of the four
    mask heads. The image encoder, when it trains, is used whole by every step."""
    parts = (sam.prompt_encoder, sam.mask_decoder)
    return any(p.requires_grad for part in parts for p in part.parameters())


def set_train_mode(sam: Sam, config: TrainConfig) -> None:
    """Training mode, except frozen parts: their batch-norm statistics must not drift."""
    sam.train()
    for module in frozen_modules(sam, config):
        module.eval()


def make_optimizer(
    params: list[torch.nn.Parameter], config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau]:
    """Adam and ReduceLROnPlateau on a higher-is-better metric.

    Adam runs as one fused kernel where the parameters live on a CPU or CUDA device: on a
    2-core CPU a step over ViT-B's 93.7M parameters took 63 ms instead of 176-309 ms (the
    per-tensor loop and the foreach version), over vit_t's decoder 2.4 ms instead of 8.9 ms.
    """
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, fused=fused or None)
    if fused:
        optimizer.register_step_post_hook(_count_fused_step)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.scheduler_factor, patience=config.scheduler_patience
    )
    return optimizer, scheduler


def _count_fused_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """A fused step writes the parameters without bumping their version counters, by which
    results computed from them once (:func:`.weight_cache.kept`: a Segmenter over a model
    finetuned in the same process) see that they changed: bump them."""
    for group in optimizer.param_groups:
        for param in group["params"]:  # one by one: older torch takes one tensor
            torch.autograd.graph.increment_version(param)


def iter_chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
