"""Weights prepared for inference (folded, scaled, cast to bf16) once, not in every call.

TinyViT's fast paths fold batch norms into convolutions, scale the queries' weights and cast
weights to bf16 in each forward: about 500 of the 834 operator calls of a vit_t encoder
pass, each a few microseconds. :func:`kept` computes such a result once and keeps it on
the module until the weights it was made from change.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")

_ATTRIBUTE = "_samtune_kept"  # on the module, beside (not in) its parameters and buffers


def kept(
    module: torch.nn.Module,
    key: Hashable,
    tensors: Sequence[torch.Tensor | None],
    prepare: Callable[[], T],
) -> T:
    """``prepare()``, kept on ``module`` under ``key`` while ``tensors`` (the parameters and
    buffers it reads; None for one a module lacks) stay as they are.

    A kept result is made again when one of ``tensors`` was replaced (by identity: the
    entry holds them, so a freed tensor's id cannot come back), changed in place (its
    version counter: an optimizer step, ``load_state_dict``; PyTorch's fused optimizers bump
    none, so :func:`.train_setup.make_optimizer` bumps them after each of its steps), or
    moved (device, dtype, data pointer). Where gradients are enabled ``prepare()`` runs every
    call, as its result must carry them; so does it for inference tensors, whose changes
    have no version counter. The state dict is unchanged.
    """
    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() or any(t.is_inference() for t in present):
        return prepare()
    stamp = [(t._version, t.data_ptr(), t.device, t.dtype) for t in present]
    entries = module.__dict__.setdefault(_ATTRIBUTE, {})
    entry = entries.get(key)
    if entry is not None:
        held, held_stamp, value = entry
        if held_stamp == stamp and all(a is b for a, b in zip(held, tensors, strict=True)):
            return value
    value = prepare()
    entries[key] = (tuple(tensors), stamp, value)
    return value


def forget_kept(model: torch.nn.Module) -> None:
    """Drop every result :func:`kept` holds on ``model``'s modules; they are made again at
    their next use. Weights changed through ``.data`` (``p.data.copy_(q)``) bump no version
    counter, so a kept result would outlive them: a Segmenter made for a model starts
    afresh, as one made for new weights must."""
    for module in model.modules():
        module.__dict__.pop(_ATTRIBUTE, None)
