"""TinyViT's MBConv a strip of rows at a time: the whole map's result, in fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

from napari_samtune.core import conv_strips, onednn
from napari_samtune.core.fast_tinyvit import use_fast_tinyvit
from tests.core.test_fast_tinyvit import _trained_like

HEIGHT, WIDTH, HIDDEN = 21, 13, 64  # MBConv(16, 16, 4.0): 64 channels wide


def _mbconv() -> torch.nn.Module:
    from mobile_sam.modeling import tiny_vit_sam as tv

    block = _trained_like(tv.MBConv(16, 16, 4.0, torch.nn.GELU, 0.0))
    return use_fast_tinyvit(torch.nn.Sequential(block))[0]


def _strips_of(monkeypatch, rows: int | None, dtype: torch.dtype) -> None:
    """Strips of ``rows`` rows for the test's map; None: one strip holds the whole map."""
    rows = 10 * HEIGHT if rows is None else rows
    monkeypatch.setattr(conv_strips, "STRIP_BYTES", rows * WIDTH * HIDDEN * dtype.itemsize)


def _run(block, x, dtype):
    with torch.inference_mode():
        if dtype == torch.float32:
            return block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return block(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 2, 4, 20])  # 21 rows: 21 strips ... a strip and a row
def test_strips_give_the_whole_map_s_result(monkeypatch, dtype, rows):
    """The first and last strips take the image's zero padding from the kernel; the inner
    ones the rows above and below them. Two images: each strip is one image's."""
    if dtype == torch.bfloat16 and not onednn.has_bf16_kernels():
        pytest.skip("this CPU runs no oneDNN bf16 kernels (they need AVX-512 or AVX-NE-CONVERT)")
    block, x = _mbconv(), torch.randn(2, 16, HEIGHT, WIDTH)
    with torch.inference_mode():
        stock = super(type(block), block).forward(x)  # TinyViT's own MBConv, fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock_bf16 = super(type(block), block).forward(x).float()
    calls, by_strips = [], conv_strips.mbconv_by_strips
    monkeypatch.setattr(
        conv_strips, "mbconv_by_strips", lambda *args: calls.append(args[-1]) or by_strips(*args)
    )
    _strips_of(monkeypatch, None, dtype)
    whole = _run(block, x, dtype)
    assert calls == []
    _strips_of(monkeypatch, rows, dtype)
    stripped = _run(block, x, dtype)
    assert calls == [rows]
    assert stripped.dtype == whole.dtype == dtype
    assert stripped.is_contiguous(memory_format=torch.channels_last)
    if dtype == torch.float32:
        torch.testing.assert_close(stripped, whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stripped, stock, rtol=1e-4, atol=1e-4)
    else:  # the residual is added in the kernel, before its result is rounded to bf16
        torch.testing.assert_close(stripped, whole, rtol=2**-6, atol=2**-6)  # 2 roundings
        error, stock_error = ((out.float() - stock).abs().max() for out in (stripped, stock_bf16))
        assert error <= 2 * stock_error + 1e-2  # as close as TinyViT's own under autocast


def test_only_tinyvit_shaped_blocks_go_by_strips(monkeypatch):
    """A strided or dilated mixing convolution (not TinyViT's) would need other halos."""
    block, x = _mbconv(), torch.randn(1, 16, HEIGHT, WIDTH)
    _strips_of(monkeypatch, 4, torch.float32)
    with torch.inference_mode():
        assert conv_strips.mbconv_strips(block, x, torch.float32) is not None
        block.conv2.c.dilation = (2, 2)
        assert conv_strips.mbconv_strips(block, x, torch.float32) is None
        block.conv2.c.dilation, block.conv1.c.padding = (1, 1), (1, 1)
        assert conv_strips.mbconv_strips(block, x, torch.float32) is None


def test_a_strip_holds_the_bytes_it_is_given():
    assert conv_strips.strip_rows(256, 256, 2) == 32  # vit_t's first stage in bf16
    assert conv_strips.strip_rows(256, 256, 4) == 16
    assert conv_strips.strip_rows(10**6, 10**3, 4) == 1
