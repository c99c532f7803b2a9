"""Image-encoder inference replayed from a captured CUDA graph.

On a fast GPU the encoders are bound by the host launching their kernels, not by the GPU
running them. Measured on an H200 (``benchmarks/encoder_variants.py``, 1024 x 1024, batch 1):
vit_t's fast path launches 849 kernels per call and took 13.7 ms eager, 3.5 ms replayed
from a graph; stock fp32 took 6.4 ms. A graph records the kernels of one call once and
replays them with a single launch.

:func:`graphed_encoder_call` captures the encoder per (model, input shape and dtype,
autocast dtype), replays it for later calls with the same key, and falls back to the eager
call where capture is refused (e.g. a module that copies from the host in its forward).
The graph reads the parameters where they lie, so in-place updates (``load_state_dict``,
an optimizer step) are seen; parameters moved or replaced (``.to``, new adapters) change
the key and the graph is captured again. ``SAMTUNE_CUDA_GRAPHS=0`` turns graphs off.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

ENV_SWITCH = "SAMTUNE_CUDA_GRAPHS"
WARM_UP_CALLS = 2  # eager calls on a side stream before capture (library handles, autotuning)


@dataclass
class _Captured:
    key: tuple
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_output: torch.Tensor
    lock: threading.Lock


_captured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> _Captured
_refused: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> refused keys
_registry_lock = threading.Lock()


def graphs_wanted(encoder: torch.nn.Module, pixels: torch.Tensor) -> bool:
    """Whether ``encoder(pixels)`` should run from a graph: CUDA inference (no gradient, eval
    mode) and not switched off by ``SAMTUNE_CUDA_GRAPHS=0``."""
    return (
        pixels.device.type == "cuda"
        and not torch.is_grad_enabled()
        and not encoder.training
        and os.environ.get(ENV_SWITCH, "1") != "0"
        and not torch.cuda.is_current_stream_capturing()
    )


def graph_key(encoder: torch.nn.Module, pixels: torch.Tensor) -> tuple:
    """What a captured graph depends on: the input's shape, dtype, layout and device, the
    autocast dtype, and where every parameter and buffer lies."""
    autocast = torch.is_autocast_enabled("cuda")
    return (
        tuple(pixels.shape),
        pixels.dtype,
        pixels.is_contiguous(memory_format=torch.channels_last),
        pixels.device,
        torch.get_autocast_dtype("cuda") if autocast else None,
        torch.is_inference_mode_enabled(),  # an inference tensor takes no copy outside it
        _tensor_addresses(encoder),
    )


def _tensor_addresses(module: torch.nn.Module) -> tuple[int, ...]:
    """Where every parameter and buffer of ``module`` lies, in one walk over its modules
    (``parameters()`` and ``buffers()`` walk twice: 0.54 against 0.25 ms per call for vit_t
    on a 2-core CPU, against a graphed vit_t embedding of ~5 ms on a GPU)."""
    return tuple(
        tensor.data_ptr()
        for sub in module.modules()
        for tensors in (sub._parameters, sub._buffers)
        for tensor in tensors.values()
        if tensor is not None
    )


def graphed_encoder_call(encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``encoder(pixels)`` replayed from a CUDA graph (see the module); a new tensor."""
    key = graph_key(encoder, pixels)
    with _registry_lock:
        entry = _captured.get(encoder)
        refused = key in _refused.get(encoder, ())
    if refused:
        return encoder(pixels)
    if entry is None or entry.key != key:
        entry = _capture(encoder, pixels, key)
        if entry is None:
            return encoder(pixels)
    with entry.lock:  # one replay at a time: the graph has one input and one output buffer
        entry.static_input.copy_(pixels)
        entry.graph.replay()
        return entry.static_output.clone()


def _capture(encoder: torch.nn.Module, pixels: torch.Tensor, key: tuple) -> _Captured | None:
    """Capture ``encoder`` on a copy of ``pixels``; None (remembered) where CUDA refuses."""
    with _registry_lock:
        _captured.pop(encoder, None)  # frees the previous graph's memory pool first
    static_input = pixels.clone(memory_format=torch.preserve_format)
    autocast_dtype = key[4]
    try:
        output, graph = capture_graph(lambda: encoder(static_input), autocast_dtype, pixels.device)
    except RuntimeError as error:
        warnings.warn(
            f"the image encoder runs without a CUDA graph ({str(error).splitlines()[0]}); "
            f"set {ENV_SWITCH}=0 to skip the attempt",
            RuntimeWarning,
            stacklevel=3,
        )
        with _registry_lock:
            _refused.setdefault(encoder, set()).add(key)
        return None
    entry = _Captured(key, graph, static_input, output, threading.Lock())
    with _registry_lock:
        _captured[encoder] = entry
    return entry


def capture_graph(
    call: Callable[[], torch.Tensor], autocast_dtype: torch.dtype | None, device: torch.device
) -> tuple[torch.Tensor, torch.cuda.CUDAGraph]:
    """Warm ``call`` up on a side stream, then capture it; (its output buffer, the graph).

    Autocast's weight cache is off while recording: a cast cached by the warm-up calls
    lives outside the graph's memory and would be freed while the graph still reads it.
    """
    with (
        torch.cuda.device(device),  # the graph's streams on the input's GPU
        torch.autocast(
            "cuda",
            dtype=autocast_dtype or torch.float32,
            enabled=autocast_dtype is not None,
            cache_enabled=False,
        ),
    ):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_CALLS):
                call()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the viewer's thread may use the GPU meanwhile (prompts, previews)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = call()
    return output, graph


def forget_graphs() -> None:
    """Drop every captured graph (and its GPU memory) and every remembered refusal."""
    with _registry_lock:
        _captured.clear()
        _refused.clear()
