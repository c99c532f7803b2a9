"""SAM's mask upscaling as matrix products: from the decoder's image tokens to mask logits.

Both 2x2 stride-2 transposed convolutions of SAM's output upscaling give every pixel four
children, so each is a matrix product per token (:class:`FastConvTranspose2x2` for the stock
modules; :func:`upscaled_masks` for :mod:`~napari_samtune.core.fast_decoder`, which keeps the
pixels in sub-pixel order up to the final logits and goes through the tokens in chunks
without gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_samtune.core.onednn import batched_matmul, is_gelu


class FastConvTranspose2x2(torch.nn.ConvTranspose2d):
    """A 2x2, stride-2 transposed convolution (SAM's mask upscaling) as one matrix product.

    With kernel == stride every output pixel comes from exactly one input pixel, so the
    layer is ``(pixels, C_in) @ (C_in, C_out * 4)`` followed by a pixel shuffle: the same
    result as the stock kernel, which on CPU runs far below matmul speed.
    """

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None:
            return super().forward(x, output_size)
        batch, c_in, height, width = x.shape
        c_out = self.weight.shape[1]
        weight = self.weight.reshape(c_in, c_out * 4)
        out = x.permute(0, 2, 3, 1).reshape(-1, c_in) @ weight.to(x.dtype)
        out = out.view(batch, height, width, c_out, 2, 2).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(batch, c_out, 2 * height, 2 * width)
        return out if self.bias is None else out + self.bias.to(out.dtype)[None, :, None, None]


def _is_plain_2x2_upscale(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.ConvTranspose2d
        and module.kernel_size == (2, 2)
        and module.stride == (2, 2)
        and module.padding == (0, 0)
        and module.output_padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def use_fast_upscaling(model: torch.nn.Module) -> torch.nn.Module:
    """Switch SAM's 2x2 stride-2 transposed convolutions to :class:`FastConvTranspose2x2`.

    In place and idempotent; parameters and state dict are unchanged. Returns ``model``.
    """
    for module in model.modules():
        if _is_plain_2x2_upscale(module):
            module.__class__ = FastConvTranspose2x2
    return model


# Upscaling without gradients goes through the tokens in chunks of about this many prompt x
# token rows (~8 MB of activations), and at least UPSCALE_MIN_CHUNK_TOKENS tokens: on a 2-core
# EPYC one point's upscaling took 9.5 ms in chunks of 2048 tokens against 11.4 ms in chunks of
# 512 (fewer, larger operations), while batches of 16-64 prompts took the same time with 128
# tokens as with 512-1024 and a quarter of the memory.
UPSCALE_CHUNK_ROWS = 2048
UPSCALE_MIN_CHUNK_TOKENS = 128


def transposed_conv_weight(conv) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 stride-2 transposed convolution as a (4 C_out, C_in) linear weight and its bias,
    output features ordered (a, b, channel): child (2i + a, 2j + b) of pixel (i, j)."""
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * conv.out_channels, -1)
    return weight, conv.bias.repeat(4)


def layer_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (LayerNorm or SAM's LayerNorm2d) over the last axis, in float32."""
    return F.layer_norm(x.float(), norm.weight.shape, norm.weight, norm.bias, norm.eps)


def upscale_chunk_tokens(n_prompts: int) -> int:
    """Tokens per upscaling chunk for ``n_prompts`` prompts without gradients (see
    :data:`UPSCALE_CHUNK_ROWS`)."""
    return max(UPSCALE_CHUNK_ROWS // max(n_prompts, 1), UPSCALE_MIN_CHUNK_TOKENS)


def upscaled_masks(
    upscaling: torch.nn.Sequential,
    first_product,
    n_pixels: int,
    hyper,
    side: int,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Mask logits (n, k, 4E, 4E) from the image tokens and (n, k, C/8) mask weights.

    ``first_product(start, stop)``: the first 2x2 transposed convolution's output for tokens
    ``start:stop`` of ``n_pixels``, as (n, stop - start, 4 C_up) sub-pixel features
    (:func:`transposed_conv_weight`). Each 2x2 stride-2 transposed convolution gives every
    pixel four children: a matrix product per token. Pixels stay grouped by token (sub-pixel
    order) up to the logits. Without gradients the tokens go through in chunks of
    ``chunk_tokens`` (default :func:`upscale_chunk_tokens`), whose activations stay in the
    CPU's cache, and exact GELUs run in place.
    """
    _, norm, act1, conv2, act2 = upscaling
    n, c1, c2 = len(hyper), conv2.in_channels, conv2.out_channels
    if chunk_tokens is None:
        chunk_tokens = n_pixels if torch.is_grad_enabled() else upscale_chunk_tokens(n)
    weight2, bias2 = transposed_conv_weight(conv2)
    parts = []
    for start in range(0, n_pixels, chunk_tokens):
        x = first_product(start, start + chunk_tokens)
        x = _activation(act1, layer_norm(norm, x.view(n, -1, 4, c1)))
        x = _activation(act2, F.linear(x, weight2, bias2).view(n, -1, c2))
        parts.append(mask_product(hyper.to(x.dtype), x))  # (n, k, chunk*16)
    logits = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return sub_pixels_to_raster(logits, side)


def mask_product(hyper: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The masks' logits ``hyper @ x^T``, (n, k, P), for (n, k, c) mask weights and (n, P, c)
    upscaled features: masks first, which took 0.6-1x the time of the pixels-first product.
    With gradients through :class:`_MaskProduct` (same values), whose gradient for ``x``
    comes out contiguous."""
    if torch.is_grad_enabled() and (hyper.requires_grad or x.requires_grad):
        return _MaskProduct.apply(hyper, x)
    return batched_matmul(hyper, x.mT)


class _MaskProduct(torch.autograd.Function):
    """``hyper @ x^T`` whose backward writes the gradient for ``x`` in ``x``'s (n, P, c) layout.

    Autograd's own backward of ``x.mT`` leaves it as the transpose of a (n, c, P) product,
    and the GELU backward before it then ran 2x slower on the strided gradient (5.4 against
    2.3 ms for a 256 x 256 mask on a 2-core EPYC; a contiguous copy costs more). Gradients
    come back in the forward's compute dtype, then in the inputs' dtypes (as autocast's
    casts do).
    """

    @staticmethod
    def forward(ctx, hyper: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(hyper, x)
        return batched_matmul(hyper, x.mT)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hyper, x = ctx.saved_tensors
        grad_hyper = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_hyper = batched_matmul(grad, x.to(grad.dtype)).to(hyper.dtype)
        if ctx.needs_input_grad[1]:
            weights = hyper.to(grad.dtype)
            if hyper.shape[1] == 1:  # an outer product: a broadcast multiply is ~3x faster
                grad_x = grad.mT * weights
            else:
                grad_x = batched_matmul(grad.mT, weights)
            grad_x = grad_x.to(x.dtype)
        return grad_hyper, grad_x


# integer types as wide as two elements: a pair of horizontal neighbours moves as one
_PAIR_TYPES = {2: torch.int32, 4: torch.int64}


def sub_pixels_to_raster(logits: torch.Tensor, side: int) -> torch.Tensor:
    """(n, k, E*E*16) logits in the upscaling's sub-pixel order -> (n, k, 4E, 4E) raster.

    Pixel (4i + 2a + a2, 4j + 2b + b2) comes in (i, j, a, b, a2, b2) order, so only the
    pairs (b2 = 0, 1) are adjacent in both orders. Copying each pair as one wider integer
    halves the elements of a permutation whose innermost run is 2 long: a 256 x 256 mask took
    85 instead of 450 us on a 2-core EPYC. (Not with gradients: a bit view has no backward.)
    """
    n, k, _ = logits.shape
    pair_type = _PAIR_TYPES.get(logits.element_size())
    if pair_type is None or logits.requires_grad or not logits.is_contiguous():
        order = logits.view(n, k, side, side, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return order.reshape(n, k, 4 * side, 4 * side)
    pairs = logits.view(pair_type).view(n, k, side, side, 2, 2, 2)
    pairs = pairs.permute(0, 1, 2, 4, 6, 3, 5).contiguous()
    return pairs.view(logits.dtype).view(n, k, 4 * side, 4 * side)


def _activation(act: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; an exact GELU in place on ``x`` (a fresh tensor) without gradients: on a
    2-core CPU a single point's upscaling took 12.2 -> 11.6 ms (medians, alternating)."""
    if torch.is_grad_enabled() or not is_gelu(act):
        return act(x)
    return torch.ops.aten.gelu_(x)
