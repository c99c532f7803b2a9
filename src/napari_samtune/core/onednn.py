"""oneDNN's fused CPU inference kernels (linear/convolution + GELU or + residual add).

Each fused call saves a pass over an activation map (TinyViT's early maps are 16-64 MB, a
ViT-B MLP's hidden layer 50 MB). The kernels have no backward and take fp32 as it comes, so
they are used only where :func:`fusable` says so; elsewhere the helpers run the plain ops.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def has_fused_ops() -> bool:
    """True where this torch build has oneDNN's fused convolution/linear + activation ops."""
    mkldnn = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(mkldnn, name) for name in ("_convolution_pointwise", "_linear_pointwise")
    )


def fusable(x: torch.Tensor, *modules: torch.nn.Module) -> bool:
    """Whether oneDNN's fused inference ops may replace ``modules`` on input ``x``.

    They have no backward and take fp32 as it comes (no autocast), so: no gradient, eval
    mode, fp32 on the CPU, autocast off. (Callers also check that the activations they fuse
    are :func:`is_gelu`.)
    """
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not any(m.training for m in modules)
        and has_fused_ops()
    )


def is_gelu(module: torch.nn.Module) -> bool:
    """True for the exact (erf) GELU, the one oneDNN's "gelu" post-op computes."""
    return type(module) is torch.nn.GELU and module.approximate == "none"


def linear_add(x: torch.Tensor, linear: torch.nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """``residual + linear(x)``, fused into oneDNN's kernel where :func:`fusable`."""
    if not fusable(x, linear):
        return residual + linear(x)
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.weight, linear.bias, "add")


def linear_gelu(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """``gelu(linear(x))`` (exact GELU), fused into oneDNN's kernel where :func:`fusable`."""
    if not fusable(x, linear):
        return F.gelu(linear(x))
    return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "gelu", [], "none")
