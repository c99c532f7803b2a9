"""LoRA adapters on the encoder's qkv: start as a no-op, train alone, merge into plain weights."""

from __future__ import annotations

import pytest
import torch

from napari_samtune.core.architectures import TINY, SamArchitecture, build_sam
from napari_samtune.core.lora import (
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    lora_modules,
    merged_state_dict,
)
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train_setup import set_trainable

# A TinyViT (MobileSAM encoder) small enough for a unit test; mobile_sam's TinyViT only
# works at 1024 pixels input (it hard-codes the 64 x 64 embedding grid).
SMALL_TINYVIT = SamArchitecture(
    name="custom",
    encoder="tiny_vit",
    img_size=1024,
    tinyvit_embed_dims=(16, 32, 32, 320),  # 320: mobile_sam keeps the last stride at 1
    tinyvit_depths=(1, 1, 1, 1),
    tinyvit_num_heads=(1, 2, 2, 10),
    tinyvit_window_sizes=(4, 4, 8, 4),
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)


def _randomise_adapters(sam):
    for module in lora_modules(sam).values():
        torch.nn.init.normal_(module.lora_b, std=0.2)


@pytest.mark.parametrize(("arch", "n_adapters"), [(TINY, 2), (SMALL_TINYVIT, 3)])
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
