"""The encoders' neck norms (LayerNorm2d) in one pass over channels-last maps."""

import pytest
import torch
from segment_anything.modeling.common import LayerNorm2d

from napari_samtune.core.accelerate import use_fast_paths
from napari_samtune.core.architectures import TINY, TINY_TINYVIT, build_sam
from napari_samtune.core.fast_neck import use_fast_layer_norm_2d


def _norms() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    stock = LayerNorm2d(16)
    torch.nn.init.normal_(stock.weight)
    torch.nn.init.normal_(stock.bias)
    fast = use_fast_layer_norm_2d(torch.nn.Sequential(LayerNorm2d(16)))[0]
    fast.load_state_dict(stock.state_dict())
    return stock, fast


def _ops(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    with torch.profiler.profile() as profile:
        out = module(x)
    return out, [event.name for event in profile.events()]


def test_a_channels_last_map_is_normalised_in_one_pass_with_the_stock_result_and_gradients():
    stock, fast = _norms()
    x = (3 * torch.randn(2, 16, 9, 7) + 1).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    reference = stock(x)
    out, ops = _ops(fast, x)
    assert type(fast).__name__ == "FastLayerNorm2d"
    assert "aten::layer_norm" in ops and "aten::pow" not in ops
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(reference)
    grads = torch.autograd.grad(reference, (x, stock.weight, stock.bias), upstream)
    fast_grads = torch.autograd.grad(out, (x, fast.weight, fast.bias), upstream)
    for fast_grad, grad in zip(fast_grads, grads, strict=True):
        torch.testing.assert_close(fast_grad, grad, rtol=1e-4, atol=1e-4)


def test_other_maps_take_the_stock_forward():
    stock, fast = _norms()
    x = torch.randn(2, 16, 9, 7)  # channels first in memory
    out, ops = _ops(fast, x)
    assert "aten::layer_norm" not in ops
    torch.testing.assert_close(out, stock(x), rtol=0, atol=0)


def test_under_bf16_autocast_it_is_closer_to_float32_than_the_stock_passes():
    stock, fast = _norms()
    x = (3 * torch.randn(1, 16, 32, 32) + 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = stock(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock_error = (stock(x.bfloat16()).float() - reference).abs().max()
            out = fast(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() <= stock_error


@pytest.mark.parametrize("architecture", [TINY, TINY_TINYVIT], ids=["vit", "tinyvit"])
def test_fast_paths_switch_the_encoders_neck_norms_and_keep_the_state_dict(architecture):
    sam = build_sam(architecture)
    keys = list(sam.state_dict())
    use_fast_paths(sam)
    neck_norms = [m for m in sam.image_encoder.neck if "LayerNorm2d" in type(m).__name__]
    assert len(neck_norms) == 2
    assert all(type(m).__name__.startswith("Fast") for m in neck_norms)
    assert list(sam.state_dict()) == keys
