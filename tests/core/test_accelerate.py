import pytest
import torch

from napari_samtune.core.accelerate import (
    FastRelPosAttention,
    autocast,
    autocast_dtype,
    use_fast_attention,
    use_stock_attention,
)
from napari_samtune.core.architectures import TINY, build_sam


def _encoder_with_nonzero_rel_pos():
    torch.manual_seed(0)
    encoder = build_sam(TINY).image_encoder
    for module in encoder.modules():
        if hasattr(module, "rel_pos_h"):  # zero-initialised in SAM: make the bias matter
            torch.nn.init.normal_(module.rel_pos_h, std=0.5)
            torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    return encoder


def test_fast_attention_matches_stock_in_fp32():
    encoder = _encoder_with_nonzero_rel_pos()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        reference = encoder(x)
        fast = use_fast_attention(encoder)(x)
    assert any(isinstance(m, FastRelPosAttention) for m in encoder.modules())
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_fast_attention_gradients_match_stock():
    encoder = _encoder_with_nonzero_rel_pos()
    x = torch.randn(1, 3, 256, 256)
    grads = []
    for switch in (use_stock_attention, use_fast_attention):
        encoder.zero_grad()
        switch(encoder)(x).square().mean().backward()
        grads.append(encoder.blocks[1].attn.rel_pos_h.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)


def test_state_dict_is_unchanged_by_the_switch():
    model = build_sam(TINY)
    keys = list(model.state_dict())
    use_fast_attention(model)
    assert list(model.state_dict()) == keys
    fresh = build_sam(TINY)
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_bf16_autocast_output_stays_close_to_fp32():
    encoder = use_fast_attention(_encoder_with_nonzero_rel_pos())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        reference = encoder(x)
        with autocast(torch.device("cpu"), torch.bfloat16):
            low = encoder(x).float()
    cosine = torch.nn.functional.cosine_similarity(low.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.999


def test_precision_choice():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype(cpu, "int8")
