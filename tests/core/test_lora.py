"""LoRA adapters on the encoder's qkv: start as a no-op, train alone, merge into plain weights."""

from __future__ import annotations

import pytest
import torch

from napari_samtune.core.architectures import TINY, TINY_TINYVIT, build_sam
from napari_samtune.core.lora import (
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    lora_modules,
    merged_state_dict,
)
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train_setup import set_trainable


def _randomise_adapters(sam):
    for module in lora_modules(sam).values():
        torch.nn.init.normal_(module.lora_b, std=0.2)


@pytest.mark.parametrize(("arch", "n_adapters"), [(TINY, 2), (TINY_TINYVIT, 3)])
def test_adapters_start_as_identity_and_merge_exactly(arch, n_adapters):
    torch.manual_seed(0)
    sam = build_sam(arch).eval()
    pixels = torch.randn(1, 3, arch.img_size, arch.img_size)
    with torch.no_grad():
        before = sam.image_encoder(pixels)
        names = apply_lora(sam.image_encoder, rank=4)
        assert len(names) == n_adapters and all(n.endswith("attn.qkv") for n in names)
        assert torch.allclose(sam.image_encoder(pixels), before)
        _randomise_adapters(sam)
        adapted = sam.image_encoder(pixels)
    assert not torch.allclose(adapted, before, atol=1e-4)
    merged = merged_state_dict(sam)
    plain = build_sam(arch).eval()
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        assert torch.allclose(plain.image_encoder(pixels), adapted, atol=1e-5)


def test_only_adapters_train_in_the_encoder():
    sam = build_sam(TINY)
    apply_lora(sam.image_encoder, rank=2, alpha=4.0)
    params = set_trainable(sam, TrainConfig(model="random:tiny", lora_rank=2))
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    encoder = {n for n in trainable if n.startswith("image_encoder.")}
    assert encoder and all(n.endswith(("lora_a", "lora_b")) for n in encoder)
    assert any(n.startswith("mask_decoder.") for n in trainable)
    assert len(params) == len(trainable)
    module = next(iter(lora_modules(sam).values()))
    assert isinstance(module, LoRALinear) and module.scaling == 2.0


def test_adapter_state_keeps_what_a_resume_needs():
    sam = build_sam(TINY)
    apply_lora(sam.image_encoder, rank=2)
    with_base = adapter_state_dict(sam, with_base=True)
    only = adapter_state_dict(sam, with_base=False)
    assert set(only) < set(with_base)
    assert {k.rsplit(".", 1)[1] for k in with_base} == {"lora_a", "lora_b", "weight", "bias"}
    with pytest.raises(ValueError, match="no attention 'qkv'"):
        apply_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), rank=2)
