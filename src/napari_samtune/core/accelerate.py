"""Precision choices for fast CPU/GPU compute, and the switch to every fast path.

The fast modules themselves live in :mod:`napari_samtune.core.fast_encoder` and
:mod:`napari_samtune.core.fast_decoder`; the CPU allocator's settings in
:mod:`napari_samtune.core.heap`.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Iterator

import torch

from napari_samtune.core.fast_encoder import use_fast_attention
from napari_samtune.core.fast_neck import use_fast_layer_norm_2d
from napari_samtune.core.fast_tinyvit import use_fast_tinyvit
from napari_samtune.core.mask_upscaling import use_fast_upscaling


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("fp32", "bf16", "fp16", "auto") on ``device``.

    "auto" picks bf16 where the hardware runs it fast (CPUs where :func:`cpu_has_fast_bf16`,
    CUDA GPUs of compute capability >= 8.0), fp16 on older CUDA GPUs, else fp32 (None).
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision={precision!r}; choose 'auto', 'fp32', 'bf16' or 'fp16'")
    if precision == "fp32":
        return None
    if precision != "auto":
        if precision == "bf16" and device.type == "cpu":
            warn_if_cpu_bf16_is_slow()
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


BF16_MIN_SPEEDUP = 1.5  # bf16 must beat fp32 products by this much to be worth its rounding


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX) and they pay.

    The flags alone do not say: on an AMX Xeon bf16 products ran 6x faster than fp32, but on
    a Xeon VM that shows AVX-512 BF16 without AMX they ran at half the fp32 rate (ViT-B
    encoder 9.2 s in bf16, 4.4 s in fp32). So the rates are measured once per process
    (:func:`bf16_speedup`, 60 ms there). CPUs without the flags are not measured: emulated bf16
    is ~100x slower.
    """
    return _has_bf16_instructions() and bf16_speedup() >= BF16_MIN_SPEEDUP


def warn_if_cpu_bf16_is_slow() -> None:
    """Warn that bf16, asked for by name on the CPU, runs slower here than fp32 would.

    Without AVX-512 BF16 or AMX torch emulates bf16 products (a 2-core AVX2 EPYC: 0.001
    TFLOP/s against 0.17 in fp32); with the flags they may still be slower (a Xeon VM
    without AMX: half the fp32 rate). The run goes on in bf16, as asked.
    """
    if not _has_bf16_instructions():
        why = "it has no bf16 instructions (AVX-512 BF16 or AMX), so bf16 is emulated"
    elif bf16_speedup() < BF16_MIN_SPEEDUP:
        why = f"its bf16 matrix products run at {bf16_speedup():.2g}x the fp32 speed"
    else:
        return
    warnings.warn(
        f"precision 'bf16' was asked for, but this CPU computes bf16 slowly: {why}. "
        "Choose 'auto' (fp32 on this CPU) for speed.",
        UserWarning,
        stacklevel=3,
    )


def _has_bf16_instructions() -> bool:
    """AVX-512 BF16 or AMX in this CPU's flags (without them torch emulates bf16)."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def has_amx() -> bool:
    """AMX bf16 tiles in this CPU's flags: torch's CPU flash-attention kernel packs bf16
    operands for them, and runs slowly without (see ``fast_encoder._pick_kernel``)."""
    return "amx_bf16" in _cpu_flags()


def _cpu_flags() -> set[str]:
    """The feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(flags.split()[2:])


@functools.cache
def bf16_speedup(n_rows: int = 1024, width: int = 768) -> float:
    """Measured fp32 / bf16 time of a ViT-sized linear layer on the CPU (>1: bf16 is faster).

    (n_rows, width) x (width, width): the shape of ViT-B's projections, best of 3 each.
    """
    x = torch.randn(n_rows, width)
    weight = torch.randn(width, width)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        x_d, w_d = x.to(dtype), weight.to(dtype)
        torch.nn.functional.linear(x_d, w_d)  # warm-up: oneDNN builds its kernel
        times = []
        for _ in range(3):
            start = time.perf_counter()
            torch.nn.functional.linear(x_d, w_d)
            times.append(time.perf_counter() - start)
        seconds[dtype] = min(times)
    return seconds[torch.float32] / seconds[torch.bfloat16]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def use_fast_paths(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every module of ``model`` that has a fast path to it, in place; returns ``model``.

    SAM ViT blocks and attention, TinyViT (blocks, attention, convolutions, MLPs; see
    :mod:`~napari_samtune.core.fast_tinyvit`), the encoders' neck norms
    (:mod:`~napari_samtune.core.fast_neck`) and the decoder's 2x2 transposed convolutions.
    The state dict is unchanged and results are the stock ones up to rounding.
    """
    model = use_fast_layer_norm_2d(use_fast_tinyvit(use_fast_attention(model)))
    return use_fast_upscaling(model)
