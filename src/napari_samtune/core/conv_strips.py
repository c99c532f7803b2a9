"""TinyViT's inverted-residual block (MBConv) on a large map, a strip of rows at a time.

The block widens C channels to 4C (1 x 1 convolution + GELU), mixes each channel over 3 x 3
pixels (depthwise convolution + GELU), narrows back to C (1 x 1) and adds its input (+ GELU).
On vit_t's first stage (64 -> 256 channels, 256 x 256 pixels) the wide map is 32 MB in bf16:
made whole, it goes out to memory and back twice. Made a strip of rows at a time, with the
row above and below that the 3 x 3 mixing needs, it stays in the CPU's cache, and the
residual add goes into the narrowing kernel. On a 2-core AVX-512 BF16 EPYC the block took
24.3-25.4 instead of 28.6-29.1 ms (medians of 20 alternating calls). Every value comes from
the same kernels over the same inputs: float32 results are the whole map's; in bf16 the
residual is added before the narrowing's result is rounded, not after (one rounding fewer).
"""

from __future__ import annotations

import torch

STRIP_BYTES = 4 << 20  # one strip's wide map: 32 rows of vit_t's first stage in bf16 (best
# of 16-64 there; the CPU's last-level cache holds several)

Kernel = tuple[torch.Tensor, torch.Tensor]  # a convolution's weight and bias, as oneDNN takes


def mbconv_strips(block: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype):
    """A fast TinyViT MBConv ``block`` (its convolutions ``FastConv2dBN``) on ``x`` by
    :func:`mbconv_by_strips` in ``dtype``, where the map has more rows than one strip and
    the block's convolutions are TinyViT's (1 x 1, 3 x 3 depthwise, 1 x 1); else None (the
    caller runs the block whole). The caller has checked that the fused kernels apply."""
    convs = (block.conv1, block.conv2, block.conv3)
    if x.ndim != 4 or not _tinyvit_shaped(*(c.c for c in convs)):
        return None
    rows = strip_rows(x.shape[-1], block.conv1.c.out_channels, dtype.itemsize)
    if x.shape[-2] <= rows:
        return None
    kernels = [c._kernel_weights(dtype) for c in convs]
    return mbconv_by_strips(x.to(dtype), *kernels, rows)


def _tinyvit_shaped(widen: torch.nn.Conv2d, mix: torch.nn.Conv2d, narrow: torch.nn.Conv2d):
    def pointwise(conv: torch.nn.Conv2d) -> bool:
        return conv.kernel_size == (1, 1) and conv.groups == 1 and _plain(conv, (0, 0))

    depthwise = mix.kernel_size == (3, 3) and mix.groups == mix.in_channels == mix.out_channels
    return pointwise(widen) and pointwise(narrow) and depthwise and _plain(mix, (1, 1))


def _plain(conv: torch.nn.Conv2d, padding: tuple[int, int]) -> bool:
    unit = (1, 1)
    return (conv.stride, conv.dilation, conv.padding) == (unit, unit, padding) and (
        conv.padding_mode == "zeros"
    )


def strip_rows(width: int, hidden: int, itemsize: int) -> int:
    """Rows per strip whose wide map (``hidden`` channels of ``width`` pixels) fits
    :data:`STRIP_BYTES`; at least 1."""
    return max(1, STRIP_BYTES // (width * hidden * itemsize))


def mbconv_by_strips(
    x: torch.Tensor, widen: Kernel, mix: Kernel, narrow: Kernel, rows: int
) -> torch.Tensor:
    """``gelu(x + narrow(gelu(mix(gelu(widen(x))))))`` for a (N, C, H, W) map ``x``,
    ``rows`` rows at a time, in oneDNN's fused inference kernels (no gradient).

    ``widen`` and ``narrow`` are 1 x 1 convolutions, ``mix`` a 3 x 3 depthwise one padded
    with zeros, each (weight, bias) channels-last in ``x``'s dtype (bf16 or float32). The GELUs
    are exact. Returns the map channels-last, in ``x``'s dtype.
    """
    conv = torch.ops.mkldnn._convolution_pointwise
    add_into = torch.ops.mkldnn._convolution_pointwise_.binary
    x = x.contiguous(memory_format=torch.channels_last)
    out = x.clone(memory_format=torch.channels_last)  # the residual, each strip added into it
    height, groups = x.shape[-2], mix[0].shape[0]
    for n in range(len(x)):  # a strip of one image is one block of channels-last memory
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            first, last = start == 0, stop == height
            wide = conv(
                x[n : n + 1, :, max(start - 1, 0) : min(stop + 1, height)],
                *widen, [0, 0], [1, 1], [1, 1], 1, "gelu", [], "none",
            )  # fmt: skip
            # At the image's top or bottom edge the zero row is the kernel's padding, which it
            # adds on both sides: the output row made of the other side's padding is dropped.
            edge = 1 if first or last else 0
            mixed = conv(wide, *mix, [edge, 1], [1, 1], [1, 1], groups, "gelu", [], "none")
            if first and not last:
                mixed = mixed[:, :, : stop - start]
            elif last and not first:
                mixed = mixed[:, :, -(stop - start) :]
            strip = out[n : n + 1, :, start:stop]
            add_into(strip, mixed, *narrow, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, None, [], None)
            torch.ops.aten.gelu_(strip)
    return out
