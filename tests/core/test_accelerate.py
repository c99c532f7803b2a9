import pytest
import torch

from napari_samtune.core.accelerate import (
    FastConvTranspose2x2,
    FastRelPosAttention,
    autocast,
    autocast_dtype,
    use_fast_attention,
    use_fast_upscaling,
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


def test_fast_upscaling_matches_the_stock_transposed_convolution():
    torch.manual_seed(0)
    decoder = build_sam(TINY).mask_decoder
    stock = decoder.output_upscaling
    x = torch.randn(2, TINY.prompt_embed_dim, 16, 16, requires_grad=True)
    reference = stock(x)
    reference.square().sum().backward()
    grad_reference = x.grad.clone()
    x.grad = None
    use_fast_upscaling(decoder)
    assert isinstance(decoder.output_upscaling[0], FastConvTranspose2x2)
    fast = decoder.output_upscaling(x)
    fast.square().sum().backward()
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, grad_reference, rtol=1e-4, atol=1e-5)


def test_other_transposed_convolutions_are_left_alone():
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 4, 3, stride=2))
    use_fast_upscaling(model)
    assert type(model[0]) is torch.nn.ConvTranspose2d
