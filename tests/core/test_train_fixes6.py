"""Fixes found by training with LoRA, frozen parts, presets, stops and several processes."""

from __future__ import annotations

import pytest

from napari_samtune.core.presets import config_from_preset


@pytest.mark.parametrize(("preset", "model"), [("cpu-8gb", "random:vit_t"), ("gtx1080", "vit_b")])
def test_lora_on_a_preset_that_freezes_the_encoder_names_the_preset(preset, model):
    # "which freeze also lists; remove 'image_encoder' from freeze" blamed a freeze nobody
    # passed, and freeze=() then failed the preset's memory check, which asks for the
    # encoder frozen again: the advice went round in a circle.
    with pytest.raises(ValueError) as raised:
        config_from_preset(preset, model, lora_rank=4)
    message = str(raised.value)
    assert f"preset {preset!r} keeps frozen" in message
    assert "also lists" not in message and "remove 'image_encoder'" not in message
    assert "skip the preset's memory checks" in message
    lora = config_from_preset(preset, model, check=False, lora_rank=4, freeze=())
    assert (lora.lora_rank, lora.freeze) == (4, ())


def test_lora_on_a_preset_that_trains_the_encoder_still_works():
    assert config_from_preset("cpu-16gb", "random:vit_t", lora_rank=4).lora_rank == 4
