"""SAM ViT's fast block (windows from the image's own tokens, fused residual adds) vs stock."""

import pytest
import torch
from segment_anything.modeling.image_encoder import Block, get_rel_pos
from torch.utils._python_dispatch import TorchDispatchMode

from napari_samtune.core import onednn
from napari_samtune.core.fast_encoder import (
    _rel_pos_table,
    use_fast_attention,
    use_stock_attention,
)

# (window size, input size of its attention, image (B, H, W)): padded windows, whole windows,
# global attention
CASES = [(7, (7, 7), (2, 20, 18)), (7, (7, 7), (1, 14, 7)), (0, (10, 9), (1, 10, 9))]


def _block(window: int, input_size: tuple[int, int]) -> Block:
    torch.manual_seed(0)
    block = Block(48, 3, mlp_ratio=2.0, use_rel_pos=True, window_size=window, input_size=input_size)
    for param in (block.attn.rel_pos_h, block.attn.rel_pos_w):  # zero-initialised
        torch.nn.init.normal_(param, std=0.5)
    torch.nn.init.normal_(block.attn.qkv.bias, std=0.5)  # the padding tokens' q, k, v
    return block.eval()


def _ops(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    with torch.profiler.profile() as profile:
        out = module(x)
    return out, [event.name for event in profile.events()]


@pytest.mark.parametrize("fused_linears", [True, False])
@pytest.mark.parametrize("window, input_size, image", CASES)
def test_fast_vit_block_matches_stock_in_inference(
    window, input_size, image, fused_linears, monkeypatch
):
    monkeypatch.setattr(onednn, "fused_linears_pay", lambda: fused_linears)
    block = _block(window, input_size)
    x = torch.randn(*image, 48)
    with torch.inference_mode():
        reference = block(x)
        use_fast_attention(torch.nn.Sequential(block))
        fast, ops = _ops(block, x)
    assert type(block).__name__ == "FastViTBlock"
    assert "aten::gelu" not in ops, ops  # fused, or in place on the product
    if fused_linears:
        # both residual adds fused into their projections, the GELU into the MLP's first
        # layer (the profiler names both overloads alike)
        assert ops.count("mkldnn::_linear_pointwise") == 3, ops
    else:
        assert "mkldnn::_linear_pointwise" not in ops, ops
        assert ops.count("aten::gelu_") == 1 and ops.count("aten::add_") >= 2, ops
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window, input_size, image", CASES)
def test_fast_vit_block_takes_the_stock_path_for_gradients(window, input_size, image):
    block = _block(window, input_size)
    x = torch.randn(*image, 48, requires_grad=True)
    reference = block(x)
    (reference_grad,) = torch.autograd.grad(reference.square().sum(), x)
    use_fast_attention(torch.nn.Sequential(block))
    fast, ops = _ops(block, x)
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), x)
    assert not [name for name in ops if "pointwise" in name]  # fused ops have no backward
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused_linears", [True, False])
def test_fast_vit_block_in_bf16_is_as_close_as_stock_autocast(
    fused_linears, bf16_kernels, monkeypatch
):
    """Under bf16 autocast only the MLP's linear + GELU is fused (in bf16, where fused
    linears pay and oneDNN has bf16 kernels), not the residual adds; the windows from
    unpadded tokens still are."""
    monkeypatch.setattr(onednn, "fused_linears_pay", lambda: fused_linears)
    block = _block(*CASES[0][:2])
    x = torch.randn(*CASES[0][2], 48)
    with torch.no_grad():
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = block(x).float()
            use_fast_attention(torch.nn.Sequential(block))
            fast, ops = _ops(block, x)
    fused = [name for name in ops if "pointwise" in name]
    assert fused == (["mkldnn::_linear_pointwise"] if fused_linears and bf16_kernels else []), ops
    error, stock_error = (fast.float() - reference).abs().max(), (stock - reference).abs().max()
    assert error <= 2 * stock_error + 1e-2


def test_stock_attention_switch_restores_the_block():
    block = _block(*CASES[0][:2])
    model = use_fast_attention(torch.nn.Sequential(block))
    assert type(block).__name__ == "FastViTBlock"
    use_stock_attention(model)
    assert type(block) is Block and type(block.attn).__name__ == "Attention"


def _with_trained_lora(model: torch.nn.Module) -> None:
    from napari_samtune.core.lora import apply_lora, lora_modules

    apply_lora(model, rank=2)
    for adapter in lora_modules(model).values():  # lora_b starts at zero: make it matter
        torch.nn.init.normal_(adapter.lora_b, std=0.5)


@pytest.mark.parametrize("window, input_size, image", CASES[::2])
def test_fast_vit_block_keeps_a_lora_adapter(window, input_size, image):
    """Padding tokens and image tokens both go through the adapted qkv (validation of LoRA runs)."""
    block = _block(window, input_size)
    model = torch.nn.Sequential(block)
    _with_trained_lora(model)
    x = torch.randn(*image, 48)
    with torch.inference_mode():
        reference = block(x)
        use_fast_attention(model)
        fast = block(x)
    assert type(block).__name__ == "FastViTBlock"
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


class _OutputDevices(TorchDispatchMode):
    """Records the device of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.devices.add(tensor.device.type)
        return out


@pytest.mark.parametrize(("size", "table_rows"), [(14, 27), (64, 127), (14, 40)])
def test_rel_pos_table_is_stock_get_rel_pos(size, table_rows):
    table = torch.randn(table_rows, 8)
    assert torch.equal(_rel_pos_table(size, table), get_rel_pos(size, size, table))


def test_rel_pos_table_makes_its_offsets_on_the_table_s_device():
    """The stock offsets are made on the host (a copy per block that CUDA graphs refuse)."""
    table = torch.empty(27, 8, device="meta")
    with _OutputDevices() as stock:
        get_rel_pos(14, 14, table)
    with _OutputDevices() as fast:
        _rel_pos_table(14, table)
    assert "cpu" in stock.devices
    assert fast.devices == {"meta"}
