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

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from napari_samtune.core.checkpoints import first_line

_log = logging.getLogger(__name__)
JOIN_POLL_SECONDS = 0.2  # how often the main thread wakes (to run signal handlers) while joining
PER_PROCESS_SETTINGS = ("device", "embedding_cache_size")  # may differ between processes

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


def context_from_env(device_type: str, stop: threading.Event | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Args:
        device_type: "cuda" (NCCL backend) or anything else (gloo).
        stop: the run's stop event (Ctrl+C): set while the other processes are awaited
            (gloo), it ends the wait with a ``KeyboardInterrupt``.
    """
    world_size = _world_size_from_env()
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise ValueError(
            f"WORLD_SIZE={world_size} asks for distributed training, but this torch build has "
            "no torch.distributed; run a single process (unset WORLD_SIZE)"
        )
    owns = False
    if not dist.is_initialized():
        _check_launcher(world_size)
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "gloo":
            _join_heeding_signals(backend, stop)
        else:  # (the joining thread would not be the one whose CUDA device is set)
            dist.init_process_group(backend=backend)
        owns = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistributedContext(
        dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), owns
    )


def _world_size_from_env() -> int:
    text = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if not text.isdigit():
        raise ValueError(
            f"WORLD_SIZE={text!r} is not a number of processes; torchrun sets it for the "
            "processes it starts: unset it to train in one process"
        )
    return int(text)


def _check_launcher(world_size: int) -> None:
    """Refuse what joining could only wait for: torchrun's variables set by hand, without
    the address of the process that gathers the others (the error came from deep in
    torch.distributed, after all the data had been read). Set by hand with an address,
    say that this process waits for the others."""
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} asks for {world_size} training processes, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start "
            f"the run with torchrun (e.g. torchrun --nproc-per-node {world_size} -m "
            "napari_samtune.cli train ...), which sets them, or unset WORLD_SIZE to train in "
            "one process"
        )
    if not os.environ.get("TORCHELASTIC_RUN_ID"):  # not started by torchrun
        _log.warning(
            "waiting for the %d processes of WORLD_SIZE=%d to join at %s:%s (not started by "
            "torchrun: unset WORLD_SIZE to train in one process)",
            world_size,
            world_size,
            os.environ["MASTER_ADDR"],
            os.environ["MASTER_PORT"],
        )


def _join_heeding_signals(backend: str, stop: threading.Event | None = None) -> None:
    """``init_process_group`` in a helper thread: it waits in C++ (up to 30 minutes) for
    processes that may never come (one whose data failed to load, a launch gone wrong),
    and a waiting main thread runs no Python signal handler, so Ctrl+C and SIGTERM did
    nothing. Here the main thread waits, and such a signal ends the process: SIGTERM
    raises, and Ctrl+C sets ``stop`` (it would stop the run after its step, and no step
    runs yet), which ends the wait."""
    failure: list[BaseException] = []

    def join() -> None:
        try:
            dist.init_process_group(backend=backend)
        except BaseException as err:  # handed to the main thread
            failure.append(err)

    joining = threading.Thread(target=join, name="samtune-join-process-group", daemon=True)
    joining.start()
    while joining.is_alive():
        joining.join(JOIN_POLL_SECONDS)
        if stop is not None and stop.is_set() and joining.is_alive():
            raise KeyboardInterrupt("stopped while waiting for the other processes to join")
    if failure:
        raise failure[0]


def check_same_settings(ctx: DistributedContext, device: torch.device, settings: dict) -> None:
    """Refuse a run whose processes chose different settings: ``--preset auto`` picks one
    per machine (its memory, its processes), and machines of a cluster differ; DDP then
    failed with "DDP expects same model across all ranks" (a frozen encoder on one
    machine), or ranks took different numbers of steps."""
    if not ctx.enabled:
        return
    shared = {k: v for k, v in settings.items() if k not in PER_PROCESS_SETTINGS}
    if _same_on_every_rank(shared, ctx, device):
        return
    every: list = [None] * ctx.world_size  # (every rank gets here: the check is collective)
    dist.all_gather_object(every, shared)
    names = sorted({k for k in shared if any(other.get(k) != shared[k] for other in every)})
    differ = "; ".join(
        ", ".join(
            f"{name}={other.get(name)!r} in process {rank}" for rank, other in enumerate(every)
        )
        for name in names
    )
    why = "pass the same options to every process"
    if "preset" in names:
        why = (
            "the automatic preset is chosen by each machine's memory; pass the same --preset "
            f"(and options) to every process, e.g. --preset {settings.get('preset') or 'cpu-16gb'}"
        )
    raise ValueError(
        f"the {ctx.world_size} processes of this run chose different training settings "
        f"({differ}): {why}"
    )


def check_same_data(ctx: DistributedContext, device: torch.device, train, val) -> None:
    """Refuse a run whose processes were given different training or validation images
    (each machine reads its own copy of the files): with a file more, one process took
    more steps per epoch, and the others waited for it in DDP's collectives until gloo's
    timeout (30 minutes), deaf to SIGTERM; with other pixels or labels of the same names,
    each trained on its own data, unsaid. ``train`` and ``val``: this process's
    :class:`~napari_samtune.core.data.PreparedImage` s, compared by name, size, number of
    objects and fingerprints of the pixels and labels (milliseconds each)."""
    if not ctx.enabled:
        return
    from napari_samtune.core.label_files import image_fingerprint

    summary = [
        [
            (image.name, image.labels.shape, len(image.object_areas))
            + (image_fingerprint(image.rgb), image_fingerprint(image.labels))
            for image in part
        ]
        for part in (train, val)
    ]
    if _same_on_every_rank(summary, ctx, device):
        return
    raise ValueError(
        f"the {ctx.world_size} processes of this run were given different data (this one: "
        f"{len(train)} training and {len(val)} validation images): give every process the "
        "same --images and --labels (and validation folders), with the same files on each "
        "machine"
    )


def _same_on_every_rank(value, ctx: DistributedContext, device: torch.device) -> bool:
    """Whether ``value`` (JSON-able) is the same on every rank, compared by a 20-bit digest
    (whose squares, summed over up to 8192 processes, stay exact in float64)."""
    text = json.dumps(value, sort_keys=True, default=str)
    digest = float(int(hashlib.sha256(text.encode()).hexdigest()[:5], 16))
    sums = all_reduce_sum(np.array([digest, digest * digest]), ctx, device)
    return sums[0] == ctx.world_size * digest and sums[1] == ctx.world_size * digest * digest


def is_main_process() -> bool:
    """Whether this process is the first of a ``torchrun`` job (env ``RANK``, else
    ``LOCAL_RANK``, is 0) or runs alone (``WORLD_SIZE`` unset or 1, whatever ``RANK`` a
    scheduler left set); known before the process group is joined."""
    size = os.environ.get("WORLD_SIZE", "1").strip()
    if not size.isdigit() or int(size) <= 1:
        return True
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


def strides_as_gradients(sam: nn.Module) -> None:
    """Give the weight of the image encoder's neck's first convolution (1 x 1) the strides
    its gradient comes with: it takes the encoder's tokens channels-last, and so does its
    gradient. Both layouts are contiguous (the kernel is 1 x 1), but DDP compares strides
    as they are and warned that "Grad strides do not match bucket view strides" in every
    run that trains the encoder. Other weights keep their layouts."""
    neck = getattr(getattr(sam, "image_encoder", None), "neck", None)
    first = neck[0] if isinstance(neck, nn.Sequential) and len(neck) else None
    if isinstance(first, nn.Conv2d) and first.kernel_size == (1, 1):
        weight = first.weight.data  # (contiguous() keeps a 1 x 1 kernel's strides as they are)
        n_in = weight.shape[1]
        strided = torch.empty_strided(
            weight.shape, (n_in, 1, n_in, n_in), dtype=weight.dtype, device=weight.device
        )
        first.weight.data = strided.copy_(weight)


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
