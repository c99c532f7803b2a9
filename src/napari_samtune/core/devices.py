"""Pick the torch device to run on, with messages that say how to fix a wrong choice."""

from __future__ import annotations

import os

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says memory ran out: Python's MemoryError, or torch's CPU and CUDA
    allocation failures (RuntimeErrors, or torch.OutOfMemoryError, saying so: "CUDA out of
    memory", and on the CPU "DefaultCPUAllocator: can't allocate memory", as under
    ``ulimit -v`` or a node that does not overcommit)."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or any(s in text for s in _OUT_OF_MEMORY)


# (Windows' CPU allocator: "DefaultCPUAllocator: not enough memory: you tried to allocate")
_OUT_OF_MEMORY = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:<index>" or "mps" into an available ``torch.device``.

    "auto" picks CUDA when available, else Apple's MPS, else the CPU. Asking for
    a device that this machine or this torch build does not have is a ValueError
    that says what to use instead.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise TypeError(f"device={name!r} must be a string such as 'auto', 'cpu' or 'cuda'")
    text = name.strip().lower()
    if text == "auto":
        if cuda_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise ValueError(
            f"device={name!r} is not a device; choose one of {DEVICE_CHOICES!r}"
        ) from err
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        return _checked_cuda(device, name)
    if device.type == "mps":
        if not mps_available():
            raise ValueError(
                f"device={name!r} but Apple MPS is not available here (it needs an Apple-silicon "
                "Mac and a torch build with MPS); use device='cpu' or 'auto'"
            )
        return device
    raise ValueError(f"device={name!r} is not supported; choose one of {DEVICE_CHOICES!r}")


def why_no_cuda() -> str:
    """Why CUDA may not be available, in parentheses: CUDA_VISIBLE_DEVICES first where it is
    set (empty or -1 hides every GPU, and installing torch again was the advice)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None:
        return (
            f"(CUDA_VISIBLE_DEVICES is {hidden!r}: unset it if it hides the GPUs from this "
            "process; else there is no NVIDIA GPU, no driver, or a CPU-only torch build)"
        )
    return "(no NVIDIA GPU, no driver, or a CPU-only torch build)"


def _checked_cuda(device: torch.device, name: str) -> torch.device:
    if not cuda_available():
        raise ValueError(
            f"device={name!r} but CUDA is not available {why_no_cuda()}; use device='cpu' or "
            "'auto', or install a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"device={name!r} but this machine has {count} CUDA device(s), numbered 0..{count - 1}"
        )
    return device
