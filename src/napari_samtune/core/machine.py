"""What this process may use: GPU memory, RAM and CPU cores, as the presets see them.

A job's share, not the host's: a SLURM job started with ``--mem=16G`` or a container run
with ``--memory=16g`` sees the node's 256 GB in ``/proc/meminfo`` but is killed past 16,
so the RAM is the smallest of the physical memory and the cgroup limits (v2
``memory.max``, v1 ``memory.limit_in_bytes``) of this process's group and its parents;
the cores are those this process may run on (affinity, cgroup CPU quota). The GPU is the
one training will use (torchrun: the smallest of the processes' GPUs), read from its
properties, which need no context on it: ``mem_get_info`` made one, and raised on a GPU
that is busy or in exclusive use by another job.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
SMALLEST_RAM_GB = 8.0  # assumed where the RAM cannot be read (no sysconf: Windows)


@dataclass(frozen=True)
class MachineResources:
    """What :func:`measure_machine` found."""

    gpu_memory_gb: float | None  # total memory of the GPU training uses, GiB; None: no GPU
    ram_gb: float  # memory this process may use in GiB (physical, or less by cgroup limits)
    n_cores: int  # logical CPU cores this process may run on
    gpu_name: str | None  # e.g. "NVIDIA A100-SXM4-80GB"
    note: str = ""  # what the numbers left out ("GPU 0 could not be read: ..."), or ""


def measure_machine(gpu_index: int | None = None) -> MachineResources:
    """Measure the GPU memory, RAM and CPU cores this process may use; of GPU ``gpu_index``
    (``cuda:1``) where given, else of the GPUs training uses (:func:`_training_gpus`)."""
    gpu_memory, gpu_name, note = _gpu(gpu_index)
    return MachineResources(gpu_memory, ram_gb(), usable_cores(), gpu_name, note)


def _gpu(gpu_index: int | None = None) -> tuple[float | None, str | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, None, ""
    count = torch.cuda.device_count()
    indices = _training_gpus(count) if gpu_index is None else [gpu_index]
    if any(index >= count for index in indices):
        return None, None, f"there is no GPU cuda:{max(indices)} ({count} found)"
    try:
        found = [torch.cuda.get_device_properties(i) for i in indices]
    except (RuntimeError, AssertionError) as err:  # busy, exclusive, lost: train on the CPU
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, None, f"the GPU could not be read ({first}), so it is not counted"
    smallest = min(found, key=lambda properties: properties.total_memory)
    return smallest.total_memory / 2**30, smallest.name, ""


def _training_gpus(n_gpus: int) -> list[int]:
    """The GPUs this machine's training processes use: ``cuda:LOCAL_RANK`` each under
    torchrun, else the current one (0 unless ``CUDA_VISIBLE_DEVICES`` says otherwise)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1:
        return list(range(min(int(local), n_gpus)))
    return [0]


def ram_gb(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> float:
    """GiB of memory this process may use: the physical memory, or a cgroup limit below it."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf: Windows
        physical = windows_physical_memory()
        return physical / 2**30 if physical else SMALLEST_RAM_GB
    limits = [*cgroup_values(proc_cgroup, cgroup_root, "memory", "memory.limit_in_bytes")]
    limits += cgroup_values(proc_cgroup, cgroup_root, "", "memory.max")
    return min([physical, *limits]) / 2**30


def windows_physical_memory() -> int | None:
    """Bytes of physical memory from Windows' ``GlobalMemoryStatusEx``; None elsewhere or
    where it fails. (Every Windows laptop was taken for an 8 GB one: ``cpu-8gb``.)"""
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [  # MEMORYSTATUSEX
            ("dwLength", ctypes.c_uint32),
            ("dwMemoryLoad", ctypes.c_uint32),
            *((name, ctypes.c_uint64) for name in _MEMORY_STATUS_SIZES),
        ]

    windll = getattr(ctypes, "windll", None)
    if windll is None:
        return None
    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    try:
        if not windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return None
    except (AttributeError, OSError):
        return None
    return int(status.ullTotalPhys) or None


_MEMORY_STATUS_SIZES = (
    "ullTotalPhys",
    "ullAvailPhys",
    "ullTotalPageFile",
    "ullAvailPageFile",
    "ullTotalVirtual",
    "ullAvailVirtual",
    "ullAvailExtendedVirtual",
)


def usable_cores(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPU cores this process may run on (affinity), fewer under a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity (macOS, Windows)
        cores = os.cpu_count() or 1
    for path in cgroup_files(proc_cgroup, cgroup_root, "", "cpu.max"):
        quota, _, period = _read(path).partition(" ")
        cores = min(cores, _quota_cores(quota, period.strip()))
    for path in cgroup_files(proc_cgroup, cgroup_root, "cpu", "cpu.cfs_quota_us"):  # v1
        period = _read(path.with_name("cpu.cfs_period_us"))
        cores = min(cores, _quota_cores(_read(path), period))
    return max(1, cores)


def _quota_cores(quota: str, period: str) -> int | float:
    """Cores a CPU quota of ``quota`` per ``period`` microseconds allows; inf for none
    ("max" in v2, -1 in v1, or numbers that cannot be read)."""
    if not (quota.isdigit() and period.isdigit() and int(period) > 0):
        return math.inf
    return max(1, math.ceil(int(quota) / int(period)))


def cgroup_files(proc_cgroup: Path, cgroup_root: Path, controller: str, name: str) -> list[Path]:
    """The existing files ``name`` of this process's cgroup and its parents: v2 (controller
    "") or the v1 hierarchy of ``controller``. A container often sees its own group as the
    root of the mount, whatever path ``/proc/self/cgroup`` names, so the root counts too."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        names = controllers.split(",") if controllers else []
        if (controller and controller not in names) or (not controller and names):
            continue
        # v1 mounts a hierarchy by its controllers' joined names ("cpu,cpuacct"), mostly
        # with a link of each name to it
        bases = [cgroup_root]
        if controller:
            bases = [cgroup_root / controller, cgroup_root / controllers]
        parts = Path(group.strip() or "/").parts[1:]
        for base in bases:
            for depth in range(len(parts), -1, -1):
                path = base.joinpath(*parts[:depth], name)
                if path.is_file() and path.resolve() not in [p.resolve() for p in found]:
                    found.append(path)
    return found


def cgroup_values(proc_cgroup: Path, cgroup_root: Path, controller: str, name: str) -> list[int]:
    """The numeric values (bytes) of :func:`cgroup_files`; "max" (no limit) left out."""
    values = (_read(path) for path in cgroup_files(proc_cgroup, cgroup_root, controller, name))
    return [int(value) for value in values if value.isdigit()]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
