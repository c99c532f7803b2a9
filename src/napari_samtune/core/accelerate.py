"""Precision and allocator choices for fast CPU/GPU compute, and the switch to every fast path.

The fast modules themselves live in :mod:`napari_samtune.core.fast_encoder` and
:mod:`napari_samtune.core.fast_decoder`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import sys
import threading
import time
from collections.abc import Iterator

import torch

from napari_samtune.core.fast_decoder import use_fast_upscaling
from napari_samtune.core.fast_encoder import use_fast_attention
from napari_samtune.core.fast_tinyvit import use_fast_tinyvit


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
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"}) and bf16_speedup() >= BF16_MIN_SPEEDUP


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


_MIB = 1 << 20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
TRIM_MIB = 256  # free heap kept for reuse (1 GiB measured no faster for inference; 64 slower)
TRAINING_TRIM_MIB = 2047  # while training (mallopt takes an int: just under 2 GiB)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@functools.cache
def tune_cpu_allocator() -> bool:
    """Let glibc keep large freed blocks for reuse instead of unmapping them; once per process.

    By default glibc serves every block over 128 KiB (adaptively up to 32 MiB) with a fresh
    ``mmap`` and unmaps it on free, so every large tensor of every layer pays page faults on
    first touch (PyTorch's CPU tuning guide swaps in jemalloc/tcmalloc for the same reason).
    Raising the mmap and trim thresholds keeps them in the heap: SAM's prompt decoding went
    from 24 to 17 ms and its encoders ran 10-15% faster on a 2-core CPU. Peak memory is
    unchanged; freed memory is returned to the system less eagerly. Returns False where this
    is not glibc (nothing done) or glibc refused a setting.
    """
    libc = _glibc()
    if libc is None:
        return False
    # 256 MiB covers vit_t's 33 MB first-stage activations and the decoder's batched masks
    # (vit_t encoder 13% faster than with 32 MiB); older glibc caps the threshold at 32 MiB
    mmap_ok = any(libc.mallopt(M_MMAP_THRESHOLD, mib * _MIB) == 1 for mib in (256, 32))
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_MIB * _MIB) == 1
    return mmap_ok and trim_ok


_training_heaps = 0  # trainings running in this process (the setting is process-wide)
_training_heaps_lock = threading.Lock()


@contextlib.contextmanager
def training_heap() -> Iterator[bool]:
    """While training on the CPU, keep up to ~2 GiB of freed heap for reuse (yields whether set).

    A training step's decoder allocates its tensors above the encoder's saved activations;
    with the inference setting (:data:`TRIM_MIB`) glibc handed them back to the system after
    every step and the next step faulted them in again: ViT-B with 10 objects took ~400k page
    faults per step, its decoder 2.7 + 2.6 s (forward + backward) instead of 1.0 + 1.2 s.
    Afterwards the inference setting returns and the surplus goes back (``malloc_trim``).
    """
    global _training_heaps
    libc = _glibc() if tune_cpu_allocator() else None
    if libc is None:
        yield False
        return
    with _training_heaps_lock:
        _training_heaps += 1
        done = libc.mallopt(M_TRIM_THRESHOLD, TRAINING_TRIM_MIB * _MIB) == 1
    try:
        yield done
    finally:
        with _training_heaps_lock:
            _training_heaps -= 1
            if _training_heaps == 0:
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_MIB * _MIB)
                libc.malloc_trim(0)


def use_fast_paths(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every module of ``model`` that has a fast path to it, in place; returns ``model``.

    SAM ViT blocks and attention, TinyViT (blocks, attention, convolutions, MLPs; see
    :mod:`~napari_samtune.core.fast_tinyvit`) and the decoder's 2x2 transposed convolutions.
    The state dict is unchanged and results are the stock ones up to rounding.
    """
    return use_fast_upscaling(use_fast_tinyvit(use_fast_attention(model)))
