"""Multi-process training: the same run under ``torchrun --nproc-per-node N``.

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`context_from_env` joins the process group (NCCL on
GPUs, gloo on the CPU). Every rank builds the same seeded model and samples
the same epoch order, then takes its own samples from it (:func:`shard`, like
``DistributedSampler`` but with a fixed sample-to-rank assignment);
DistributedDataParallel averages gradients; metrics are summed over ranks
(:func:`all_reduce_sum`); only rank 0 writes files. Without those variables
(or with ``WORLD_SIZE=1``) everything here is a no-op. When one process fails, the
others' next exchange with it fails: :func:`peer_failures_explained` says so as a
:class:`PeerLostError` rather than a backend's traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from napari_samtune.core.checkpoints import first_line

# How torch.distributed's backends word an exchange with a process that is gone.
PEER_LOST_SIGNS = (
    "Connection closed by peer",  # gloo: the other process exited
    "Connection reset by peer",
    "remote worker",  # gloo's hint: "typically caused by a remote worker crashing"
    "remote process exited",  # NCCL
)


class PeerLostError(ConnectionError):
    """Another process of a distributed run failed or was stopped, so this one cannot go
    on; that process's own error says why."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0  # global rank of this process
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine: picks the GPU
    backend: str | None = None  # "nccl", "gloo", or None when not distributed
    owns_group: bool = False  # this run created the process group and must destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, exports and logs."""
        return self.rank == 0


def context_from_env(device_type: str) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Args:
        device_type: "cuda" (NCCL backend) or anything else (gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise ValueError(
            f"WORLD_SIZE={world_size} asks for distributed training, but this torch build has "
            "no torch.distributed; run a single process (unset WORLD_SIZE)"
        )
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        owns = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistributedContext(
        dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), owns
    )


def is_main_process() -> bool:
    """Whether this process is the first of a ``torchrun`` job (env ``RANK``, else
    ``LOCAL_RANK``, is 0) or runs alone; known before the process group is joined."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return not rank.isdigit() or int(rank) == 0


def device_for(ctx: DistributedContext, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for GPU runs, else ``device``.
    ``ValueError`` when this machine has fewer GPUs than torchrun started processes, or
    when ``device`` names a GPU index that is not the one every process here would use."""
    if ctx.enabled and device.type == "cuda":
        _check_a_gpu_each(ctx)
        _check_no_gpu_index(ctx, device)
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def _local_processes(ctx: DistributedContext) -> int:
    """How many processes of the run share this machine (``LOCAL_WORLD_SIZE``)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(int(local) if local.isdigit() else 0, ctx.local_rank + 1)


def _check_no_gpu_index(ctx: DistributedContext, device: torch.device) -> None:
    """``cuda:1`` was silently replaced by each rank's own GPU. Every process of this
    machine gets the same device, so the index can only be meant for a lone process on
    GPU 0; decided alike on every rank, so none waits for one that refused."""
    n_processes = _local_processes(ctx)
    if device.index is None or (n_processes == 1 and device.index == ctx.local_rank):
        return
    raise ValueError(
        f"device={str(device)!r} names one GPU, but under torchrun each process trains on "
        f"the GPU of its LOCAL_RANK (cuda:0..cuda:{n_processes - 1} for the {n_processes} "
        "process(es) on this machine); pass device='cuda' (no index), and choose the GPUs "
        "with CUDA_VISIBLE_DEVICES"
    )


def _check_a_gpu_each(ctx: DistributedContext) -> None:
    """Every process of this machine (``LOCAL_WORLD_SIZE``) needs a GPU of its own; on
    every rank alike, so the first says it (else CUDA's "invalid device ordinal")."""
    n_gpus = torch.cuda.device_count()
    n_processes = _local_processes(ctx)
    if n_processes > n_gpus:
        raise ValueError(
            f"torchrun started {n_processes} training processes on this machine, but it has "
            f"{n_gpus} CUDA GPU(s), and each process trains on a GPU of its own: pass "
            f"--nproc-per-node {n_gpus} (or fewer), or --device cpu to train on the CPU"
        )


def shard(order: np.ndarray, ctx: DistributedContext) -> np.ndarray:
    """This rank's samples of an epoch, in the epoch's order.

    ``order`` is a permutation of the sample indices 0..n-1. Rank ``r`` always
    owns the samples ``i`` with ``i % world_size == r`` (so a frozen encoder's
    cached embeddings stay valid on their rank across epochs); ranks with fewer
    samples repeat some, because every rank must take the same number of steps
    (each step all-reduces gradients).
    """
    if not ctx.enabled:
        return order
    order = np.asarray(order)
    per_rank = -(-len(order) // ctx.world_size)
    mine = order[order % ctx.world_size == ctx.rank]
    if mine.size == 0:  # fewer samples than ranks
        mine = order[ctx.rank % len(order) :][:1]
    return np.resize(mine, per_rank)


def all_reduce_sum(values: np.ndarray, ctx: DistributedContext, device: torch.device) -> np.ndarray:
    """Element-wise sum of a float array over all ranks (float64, like ``values``)."""
    values = np.asarray(values, dtype=np.float64)
    if not ctx.enabled:
        return values
    tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def any_rank(flag: bool, ctx: DistributedContext, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (e.g. a stop request seen by rank 0)."""
    return bool(all_reduce_sum(np.array([float(flag)]), ctx, device)[0] > 0)


def wrap_module(
    module: nn.Module, ctx: DistributedContext, device: torch.device, may_leave_unused: bool
) -> nn.Module:
    """DistributedDataParallel around ``module`` when distributed, else ``module`` itself.

    ``may_leave_unused``: some trainable parameters can go without a gradient in a step,
    so DDP must look for them every step (``find_unused_parameters``). Without them that
    search is wasted work; with them, torch's C++ code warned on every rank whenever a
    step happened to use them all (a warning Python cannot filter), so ``module`` gets a
    parameter that no step uses and the search never comes up empty.
    """
    if not ctx.enabled:
        return module
    if may_leave_unused:
        module.register_parameter("never_used", nn.Parameter(torch.zeros((), device=device)))
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=may_leave_unused
    )


@contextmanager
def peer_failures_explained() -> Iterator[None]:
    """Raise a backend's error of an exchange with a process that is gone (another rank
    failed: bad data, a full disk, out of memory) as a :class:`PeerLostError` that says
    so, instead of gloo's "Connection closed by peer" traceback; other errors pass."""
    try:
        yield
    except RuntimeError as err:
        lost = isinstance(err, getattr(dist, "DistNetworkError", ())) or any(
            sign in str(err) for sign in PEER_LOST_SIGNS
        )
        if not lost:
            raise
        # from the environment: the process group may be gone by now (shut down)
        rank, world_size = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
        raise PeerLostError(
            f"training process {rank} of {world_size} lost contact with the others: "
            "another process of this run failed or was stopped, and this "
            "one stops too; the first error reported by the other processes says why "
            f"(torch.distributed: {_backend_words(err)})"
        ) from err


def _backend_words(err: RuntimeError) -> str:
    """The first line of a backend's error, without gloo's "[.../pair.cc:561] " source tag."""
    return first_line(re.sub(r"^\[[^\]]*\]\s*", "", str(err)))


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group if this run created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
