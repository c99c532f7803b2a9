"""What auto-detection measures is this process's share: cgroup memory and CPU limits (SLURM,
containers), the GPU that training uses, and a GPU that cannot be read is not a crash."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from napari_samtune.core import machine, presets
from napari_samtune.core.config_checks import MAX_SEED
from napari_samtune.core.machine import measure_machine, ram_gb, usable_cores
from napari_samtune.core.presets import TrainConfig, config_from_preset, detect_preset

GiB = 2**30


def _physical() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cgroups(tmp_path, lines: list[str], files: dict[str, str]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    proc.write_text("\n".join(lines) + "\n")
    root = tmp_path / "cgroup"
    for name, value in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(value + "\n")
    return proc, root


def test_a_slurm_jobs_v2_memory_limit_is_the_ram(tmp_path):
    """sbatch --mem=2G on a node with more: the job's group (or a parent's) limit counts."""
    proc, root = _cgroups(
        tmp_path,
        ["0::/system.slice/slurmstepd.scope/job_7/step_0"],
        {
            "system.slice/slurmstepd.scope/job_7/memory.max": str(2 * GiB),
            "system.slice/slurmstepd.scope/job_7/step_0/memory.max": "max",
            "memory.max": "max",
        },
    )
    assert ram_gb(proc, root) == pytest.approx(min(2.0, _physical() / GiB))
    unlimited, _ = _cgroups(tmp_path / "u", ["0::/"], {"memory.max": "max"})
    assert ram_gb(unlimited, tmp_path / "u" / "cgroup") == pytest.approx(_physical() / GiB)


def test_a_v1_container_limit_seen_at_the_root_of_its_mount_counts(tmp_path):
    """docker --memory=1g with cgroup v1: /proc/self/cgroup names a host path that the
    container's mount does not have; its own group is the mount's root."""
    proc, root = _cgroups(
        tmp_path,
        ["4:memory:/docker/0123abcd", "3:cpu,cpuacct:/docker/0123abcd", "0::/"],
        {"memory/memory.limit_in_bytes": str(GiB), "cpu.max": "max 100000"},
    )
    assert ram_gb(proc, root) == pytest.approx(min(1.0, _physical() / GiB))


def test_a_cpu_quota_and_the_affinity_bound_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    proc, root = _cgroups(tmp_path, ["0::/job"], {"job/cpu.max": "250000 100000"})
    assert usable_cores(proc, root) == 3  # 2.5 cores of quota: 3 threads can use them
    proc, root = _cgroups(tmp_path / "n", ["0::/job"], {"job/cpu.max": "max 100000"})
    assert usable_cores(proc, tmp_path / "n" / "cgroup") == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # taskset -c 3
    assert usable_cores(proc, tmp_path / "n" / "cgroup") == 1


class _FakeGpus:
    """torch.cuda as seen on a machine with GPUs of the given sizes (GiB)."""

    def __init__(self, sizes: list[float], busy: bool = False):
        self.sizes, self.busy, self.read = sizes, busy, []

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return len(self.sizes)

    def get_device_properties(self, index: int):
        self.read.append(index)
        if self.busy:
            raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")
        return SimpleNamespace(total_memory=int(self.sizes[index] * GiB), name=f"GPU{index}")

    def mem_get_info(self, index: int):  # made a context, and raised on a busy GPU
        raise AssertionError("mem_get_info must not be called")


def test_a_busy_gpu_is_left_out_with_a_note_instead_of_a_crash(monkeypatch):
    monkeypatch.setattr(torch, "cuda", _FakeGpus([80.0], busy=True))
    found = measure_machine()
    assert found.gpu_memory_gb is None and found.gpu_name is None
    assert found.note.startswith("the GPU could not be read (CUDA error: all CUDA-capable")
    preset, reason = presets.resolve_preset("auto")
    # it began "no CUDA GPU found" and ended saying the GPU could not be read
    assert preset.device == "cpu" and reason.startswith(found.note + "; CPU with ")
    assert "no CUDA GPU found" not in reason


def test_a_v1_cpu_quota_bounds_the_cores(tmp_path, monkeypatch):
    """Docker --cpus=2 on cgroup v1 counted every core of the host."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    lines = ["4:memory:/job", "1:cpu,cpuacct:/job"]
    quota = {"cpu,cpuacct/job/cpu.cfs_quota_us": "200000"}
    quota["cpu,cpuacct/job/cpu.cfs_period_us"] = "100000"
    proc, root = _cgroups(tmp_path, lines, quota)
    assert usable_cores(proc, root) == 2
    unlimited = {**quota, "cpu,cpuacct/job/cpu.cfs_quota_us": "-1"}
    proc, root = _cgroups(tmp_path / "u", lines, unlimited)
    assert usable_cores(proc, root) == 16


def test_torchrun_processes_measure_the_smallest_of_their_gpus(monkeypatch):
    fake = _FakeGpus([80.0, 8.0, 80.0])
    monkeypatch.setattr(torch, "cuda", fake)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # GPUs 0 and 1: the 8 GB one trains too
    found = measure_machine()
    assert (found.gpu_memory_gb, found.gpu_name, fake.read) == (8.0, "GPU1", [0, 1])
    assert detect_preset(found.gpu_memory_gb, found.ram_gb, found.n_cores)[0].key == "gtx1080"
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert measure_machine().gpu_memory_gb == 80.0  # a lone process trains on GPU 0


def test_machine_resources_keep_their_place_in_presets():
    assert presets.MachineResources is machine.MachineResources
    assert presets.measure_machine is machine.measure_machine


def test_auto_and_preset_names_are_read_like_the_python_api_reads_them(monkeypatch):
    monkeypatch.setattr(
        presets, "measure_machine", lambda: machine.MachineResources(None, 16, 8, None)
    )
    assert presets.resolve_preset("AUTO")[0].key == "cpu-16gb"
    assert presets.resolve_preset(" cpu-8gb ")[0].key == "cpu-8gb"


def test_a_seed_torch_cannot_take_is_refused_up_front():
    config_from_preset("cpu-16gb", "random:tiny", seed=MAX_SEED)
    for seed in (MAX_SEED + 1, 2**64, -1):
        with pytest.raises(ValueError, match=rf"seed={seed}; use a whole number from 0 to "):
            config_from_preset("cpu-16gb", "random:tiny", seed=seed)
    assert TrainConfig().seed <= MAX_SEED


def test_windows_reads_its_ram_instead_of_assuming_8_gb(monkeypatch):
    """Without os.sysconf (Windows) every machine was taken for an 8 GB one (cpu-8gb)."""
    import ctypes

    seen = []

    def global_memory_status_ex(reference):
        status = reference._obj
        seen.append(status.dwLength)
        status.ullTotalPhys = 16 * 2**30
        return 1

    kernel32 = SimpleNamespace(GlobalMemoryStatusEx=global_memory_status_ex)
    monkeypatch.setattr(ctypes, "windll", SimpleNamespace(kernel32=kernel32), raising=False)
    monkeypatch.delattr(os, "sysconf")
    assert ram_gb() == 16.0
    assert seen == [64]  # sizeof(MEMORYSTATUSEX), which Windows checks
    monkeypatch.setattr(machine, "windows_physical_memory", lambda: None)
    assert ram_gb() == machine.SMALLEST_RAM_GB  # unreadable: the smallest preset's


def test_windows_memory_is_not_read_elsewhere():
    from napari_samtune.core.machine import windows_physical_memory

    assert windows_physical_memory() is None  # no ctypes.windll here
