"""oneDNN's fused CPU inference kernels (linear/convolution + GELU or + residual add).

Each fused call saves a pass over an activation map (TinyViT's early maps are 16-64 MB, a
ViT-B MLP's hidden layer 50 MB). The kernels have no backward and take fp32 as it comes, so
they are used only where :func:`fusable` says so; elsewhere the helpers run the plain ops.
Fused linear layers pay only on some CPUs (:func:`fused_linears_pay`); elsewhere the
helpers apply the GELU or the add in place on the product. Batch-1 products go to
``torch.bmm`` directly (:func:`batched_matmul`), which oneDNN runs on its fast path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from napari_samtune.core.weight_cache import kept


@functools.cache
def has_fused_ops() -> bool:
    """True where this torch build has oneDNN's fused convolution/linear + activation ops."""
    mkldnn = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(mkldnn, name) for name in ("_convolution_pointwise", "_linear_pointwise")
    )


@functools.cache
def has_bf16_kernels() -> bool:
    """True where oneDNN runs its bf16 kernels on this CPU.

    They need AVX-512 (BW, VL and DQ) or AVX-NE-CONVERT. On an AVX2-only CPU (a 2-core AMD
    EPYC) a fused bf16 convolution raised "mkldnn_convolution: bf16 path needs the cpu
    support avx_ne_convert or avx512bw, avx512vl and avx512dq". There, bf16 autocast keeps
    the stock modules, whose plain products torch emulates in bf16.
    """
    mkldnn = torch.ops.mkldnn
    check = "_is_mkldnn_bf16_supported"  # (a build without it: the stock modules, to be safe)
    return has_fused_ops() and hasattr(mkldnn, check) and bool(getattr(mkldnn, check)())


def fusable(x: torch.Tensor, *modules: torch.nn.Module) -> bool:
    """Whether oneDNN's fused inference ops may replace ``modules`` on input ``x``.

    They have no backward and take fp32 as it comes (no autocast), so: no gradient, eval
    mode, fp32 on the CPU, autocast off. (Callers also check that the activations they fuse
    are :func:`is_gelu`.)
    """
    return (
        _cpu_inference(x, modules)
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _cpu_inference(x: torch.Tensor, modules: tuple[torch.nn.Module, ...]) -> bool:
    """On the CPU, without gradient, ``modules`` in eval mode, and the fused ops exist."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not any(m.training for m in modules)
        and has_fused_ops()
    )


def is_gelu(module: torch.nn.Module) -> bool:
    """True for the exact (erf) GELU, the one oneDNN's "gelu" post-op computes."""
    return type(module) is torch.nn.GELU and module.approximate == "none"


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for (B, n, k) and (B, k, m) tensors, through ``torch.bmm``; other shapes
    through ``torch.matmul``.

    For B = 1 ``torch.matmul`` views its operands before its ``bmm`` and gives a transposed
    one a batch stride (that of a single row) which oneDNN's bf16 kernel does not take for a
    plain transpose. On a 2-core AVX-512 BF16 EPYC a mask product (1, 1, 32) @ (1, 65536,
    32)^T took 1.7 ms through ``matmul`` and 0.21 ms through ``bmm``, a decoder attention's
    (1, 72, 4096)^T @ (1, 72, 256) 0.80 against 0.39 ms; in float32 both ways took the same.
    (The decoder for one object, a frozen-encoder preset's training step, met this case.)
    """
    if a.ndim == 3 and b.ndim == 3 and len(a) == len(b):
        return torch.bmm(a, b)
    return a @ b


@functools.cache
def fused_linears_pay() -> bool:
    """Whether oneDNN's fused linear kernels beat a plain product and an in-place op here.

    They did on the AVX-512 Xeons this was first measured on. On a 2-core AMD EPYC (AVX2)
    the fused GELU made a linear layer 20-45% slower than the product followed by an
    in-place GELU (ViT-B's MLP, 4096 x 768 -> 3072: 222 vs 152 ms) and the fused residual
    add was mostly slower too; whole encoders, alternating in one process: vit_t 0.97 ->
    0.88 s, vit_b 8.9 -> 7.7 s (medians) without both. (Convolutions with a fused GELU stay
    fused: 15-30% faster there as well.)
    """
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def linear_add(
    x: torch.Tensor, linear: torch.nn.Linear, residual: torch.Tensor, keep: bool = False
) -> torch.Tensor:
    """``residual + linear(x)``: one oneDNN kernel where :func:`fusable` and
    :func:`fused_linears_pay`, else the add in place on the product where fusable.

    Under bf16 autocast a bf16 ``residual`` (TinyViT's tokens) is added in the bf16 kernel
    too, where :func:`bf16_fusable` and fused linears pay: the sum is rounded once, and the
    add makes no pass of its own (a vit_t stage-2 block 16.2 -> 15.8 ms on a 2-core AVX-512
    BF16 EPYC, medians of 40 alternating calls). A float32 residual (ViT-B's, which autocast
    keeps in float32) stays float32 through the plain add. ``keep``: see
    :func:`_bf16_parameters`.
    """
    if residual.dtype == torch.bfloat16 and bf16_kernels(x, linear):
        weight, bias = _bf16_parameters(linear, keep)
        return torch.ops.mkldnn._linear_pointwise.binary(
            x.to(torch.bfloat16), residual, weight, bias, "add"
        )
    if not fusable(x, linear):
        return residual + linear(x)
    if not fused_linears_pay():
        return F.linear(x, linear.weight, linear.bias).add_(residual)
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.weight, linear.bias, "add")


def bf16_fusable(x: torch.Tensor, *modules: torch.nn.Module) -> bool:
    """Whether a fused kernel may run in bf16 in place of the bf16 product that CPU autocast
    would run: autocast to bf16 on, no gradient, eval mode, and :func:`has_bf16_kernels`."""
    return (
        _cpu_inference(x, modules)
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and has_bf16_kernels()
    )


def bf16_kernels(x: torch.Tensor, linear: torch.nn.Module) -> bool:
    """Whether ``linear`` on ``x`` runs in oneDNN's fused bf16 linear kernels: where
    :func:`bf16_fusable` and :func:`fused_linears_pay`."""
    return bf16_fusable(x, linear) and fused_linears_pay()


def fusable_in_any_precision(x: torch.Tensor, *modules: torch.nn.Module) -> bool:
    """:func:`fusable` (fp32) or :func:`bf16_fusable` (bf16 autocast)."""
    return fusable(x, *modules) or bf16_fusable(x, *modules)


def linear_gelu(x: torch.Tensor, linear: torch.nn.Linear, keep: bool = False) -> torch.Tensor:
    """``gelu(linear(x))`` (exact GELU): one oneDNN kernel where :func:`fusable` and
    :func:`fused_linears_pay`, else the GELU in place on the product where fusable.

    Under bf16 autocast the fused kernel runs in bf16 where :func:`bf16_fusable` (and
    fused linears pay): on a 2-core AVX-512 BF16 EPYC, ViT-B's MLP layer with its GELU took
    51 instead of 64 ms. ``keep``: see :func:`_bf16_parameters`.
    """
    if bf16_kernels(x, linear):
        weight, bias = _bf16_parameters(linear, keep)
        return torch.ops.mkldnn._linear_pointwise(
            x.to(torch.bfloat16), weight, bias, "gelu", [], "none"
        )
    if not fusable(x, linear):
        return F.gelu(linear(x))
    if not fused_linears_pay():
        return torch.ops.aten.gelu_(F.linear(x, linear.weight, linear.bias))
    return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "gelu", [], "none")


def bf16_linear(
    x: torch.Tensor, linear: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``linear``'s weight and bias as given (TinyViT
    scales its queries' rows): in oneDNN's bf16 kernel, the bias added there, where
    :func:`bf16_fusable` and :func:`fused_linears_pay`. The ``addmm`` autocast runs first
    copies the bias into every output row (0.2-0.5 ms a TinyViT block; vit_t's encoder
    about 1% faster without, on a 2-core AVX-512 BF16 EPYC). Elsewhere the plain linear."""
    if not bf16_kernels(x, linear):
        return F.linear(x, weight, bias)
    bias = None if bias is None else bias.to(torch.bfloat16)
    x, weight = x.to(torch.bfloat16), weight.to(torch.bfloat16)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")


def _bf16_parameters(
    linear: torch.nn.Linear, keep: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``linear``'s weight and bias (None if it has none) in bf16, for the bf16 kernels.

    With ``keep`` the bf16 copies stay on ``linear`` until its weights change
    (:func:`.weight_cache.kept`): for small models (TinyViT's 10 MB), whose calls are short
    enough for the casts to count; a large model's copies would hold its size again.
    """

    def cast() -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = None if linear.bias is None else linear.bias.to(torch.bfloat16)
        return linear.weight.to(torch.bfloat16), bias

    if not keep:
        return cast()
    return kept(linear, "bf16", (linear.weight, linear.bias), cast)
