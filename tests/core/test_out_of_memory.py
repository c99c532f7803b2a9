"""Running out of memory is recognised, on the CPU too, so that the advice comes with it."""

from __future__ import annotations

import pytest

from napari_samtune.core.devices import is_out_of_memory

# torch's own words, as its CPU allocator says them under `ulimit -v` (no overcommit)
CPU_ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
    "memory: you tried to allocate 7526400 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    "err",
    [
        RuntimeError(CPU_ALLOCATOR),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
    ],
)
def test_torch_allocation_failures_are_out_of_memory(err):
    assert is_out_of_memory(err)


def test_other_errors_are_not():
    assert not is_out_of_memory(RuntimeError("shape mismatch: value tensor of shape [3]"))


def test_the_training_advice_follows_a_cpu_allocation_failure():
    from napari_samtune.cli.train_report import memory_advice

    assert "choose a --preset for less memory" in memory_advice(RuntimeError(CPU_ALLOCATOR))
