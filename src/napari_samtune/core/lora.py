"""LoRA adapters on the image encoder's attention ``qkv`` projections (ViT and TinyViT).

A :class:`LoRALinear` replaces ``attn.qkv``: its frozen ``weight`` / ``bias``
are the original ones (same state-dict keys), plus trainable ``lora_a`` (r, in)
and ``lora_b`` (out, r), so ``y = x W^T + b + s (x A^T) B^T`` with
``s = alpha / r``. ``lora_b`` starts at zero: training starts from the
original model exactly. :func:`merged_state_dict` folds ``s B A`` into
``weight`` and drops the adapter keys, so the result loads into an unmodified
``segment_anything`` model with strict loading.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LORA_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank={rank!r}; LoRA needs a rank >= 1")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged_weight(self) -> torch.Tensor:
        """``W + s B A``: the plain weight with the adapter folded in."""
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.scaling
        return (self.weight.float() + delta).to(self.weight.dtype).detach()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


def apply_lora(image_encoder: nn.Module, rank: int, alpha: float | None = None) -> list[str]:
    """Replace every attention ``qkv`` linear of ``image_encoder`` by a :class:`LoRALinear`.

    Works for SAM's ViT (``blocks.i.attn.qkv``) and MobileSAM's TinyViT
    (``layers.i.blocks.j.attn.qkv``). Returns the qualified names replaced.
    """
    targets = [
        (name, module)
        for name, module in image_encoder.named_modules()
        if name.endswith("attn") and isinstance(getattr(module, "qkv", None), nn.Linear)
    ]
    if not targets:
        raise ValueError("the image encoder has no attention 'qkv' layers to adapt with LoRA")
    for _, module in targets:
        module.qkv = LoRALinear(module.qkv, rank, alpha)
    return [f"{name}.qkv" for name, _ in targets]


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Qualified name -> adapter, for every :class:`LoRALinear` in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every adapter merged: the keys of the model without LoRA."""
    adapters = lora_modules(model)
    state = {}
    for key, value in model.state_dict().items():
        module_name, _, leaf = key.rpartition(".")
        if module_name in adapters and leaf in LORA_KEYS:
            continue
        if module_name in adapters and leaf == "weight":
            value = adapters[module_name].merged_weight()
        state[key] = value.detach()
    return state


def adapter_state_dict(model: nn.Module, with_base: bool) -> dict[str, torch.Tensor]:
    """The adapters' own tensors (``lora_a``, ``lora_b``; plus unmerged ``weight``/``bias``
    when ``with_base``), keyed as in ``model.state_dict()``: what a resume needs besides
    :func:`merged_state_dict`."""
    leaves = (*LORA_KEYS, "weight", "bias") if with_base else LORA_KEYS
    state = {}
    for name, module in lora_modules(model).items():
        for leaf, value in module.state_dict().items():
            if leaf in leaves:
                state[f"{name}.{leaf}"] = value.detach()
    return state
