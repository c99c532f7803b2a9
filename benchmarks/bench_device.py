"""What the benchmarks need to know of the device they run on: its name, time, peak memory.

The benchmarks measure on the CPU by default and on a CUDA GPU with ``--device cuda``; the
code paths are the same, these helpers are where they differ:

* timing waits for the GPU's queued work (:func:`synchronize`) before reading the clock;
* peak memory (:func:`peak_memory_mb`) is, on a CPU, the process's peak resident set
  (``VmHWM``); on a GPU, the most device memory the process held: PyTorch's peak reserved
  memory plus what lies outside its allocator (the CUDA context, cuBLAS and cuDNN
  workspaces), read as the device's used memory minus the reserved memory when asked.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

MIB = 2**20


def resolve(name: str) -> torch.device:
    """The ``--device`` argument as a torch device; a clear error where CUDA is missing."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this machine has no CUDA GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name!r}: the benchmarks run on 'cpu' or 'cuda'")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_seconds(fn, calls: int, device: torch.device | str = "cpu") -> list[float]:
    """Wall time of each of ``calls`` calls of ``fn()``, seconds, the work it queued on
    ``device`` included."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def describe(device: torch.device | str) -> str:
    """One line naming the machine the numbers come from."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def peak_memory_mb(device: torch.device | str) -> float:
    """The most memory this process has held on ``device`` so far, in MiB (see the module)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        outside_allocator = max(0, total - free - torch.cuda.memory_reserved(device))
        return (torch.cuda.max_memory_reserved(device) + outside_allocator) / MIB
    return process_status_mb("VmHWM")


def process_status_mb(field: str) -> float:
    """A memory ``field`` of this process's ``/proc/self/status`` (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_kind(device: torch.device | str) -> str:
    """What :func:`peak_memory_mb` measures on ``device``, for table headers."""
    device = torch.device(device)
    if device.type == "cuda":
        return "peak GPU memory (reserved by PyTorch + CUDA context and libraries)"
    return "peak RSS (VmHWM of the child process)"
