import re

import pytest
import torch

from napari_samtune.core.architectures import (
    ARCHITECTURES,
    TINY,
    VIT_B,
    SamArchitecture,
    build_sam,
    infer_architecture,
)


@pytest.mark.parametrize("name", ["tiny", "vit_t", "vit_b"])
def test_architecture_is_recovered_from_weights(name):
    model = build_sam(name)
    assert infer_architecture(model.state_dict()) == ARCHITECTURES[name]


def test_custom_shape_is_inferred_field_by_field():
    arch = SamArchitecture(
        name="mine",
        img_size=128,
        embed_dim=48,
        depth=3,
        num_heads=4,
        global_attn_indexes=(0, 2),
        window_size=4,
        prompt_embed_dim=16,
        decoder_mlp_dim=40,
        iou_head_hidden_dim=24,
    )
    inferred = infer_architecture(build_sam(arch).state_dict())
    assert inferred.name == "custom"
    assert inferred == SamArchitecture(**{**arch.__dict__, "name": "custom"})


def test_foreign_weights_are_rejected_by_name():
    with pytest.raises(ValueError, match="not a Segment Anything model"):
        infer_architecture({"fc.weight": torch.zeros(2, 2)})


def test_a_damaged_attention_tensor_is_said_to_be_a_damaged_file():
    """A wrong-shaped rel_pos tensor was reported as a setting to fix: "embed_dim=... must
    be divisible by num_heads=..." (the sizes are read off the tensors)."""
    state = build_sam(TINY).state_dict()
    state["image_encoder.blocks.0.attn.rel_pos_h"] = torch.zeros(3, 3)  # 32 // 3 heads
    with pytest.raises(ValueError) as refused:
        infer_architecture(state)
    message = str(refused.value)
    assert message.startswith("these Segment Anything weights have tensor shapes that make no")
    assert message.endswith("the file is damaged, or was changed after it was saved; export or "
                            "download it again")  # fmt: skip


def test_tiny_model_runs_end_to_end():
    model = build_sam(TINY)
    with torch.no_grad():
        embedding = model.image_encoder(torch.zeros(1, 3, 256, 256))
    assert embedding.shape == (1, TINY.prompt_embed_dim, 16, 16)


def test_dict_round_trip_and_validation():
    assert SamArchitecture.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="num_heads"):
        SamArchitecture(name="bad", embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="unknown architecture fields"):
        SamArchitecture.from_dict({"name": "x", "colour": "red"})


@pytest.mark.parametrize(
    ("fields", "told"),
    [
        ({"img_size": 16_000_000}, "img_size=16000000: each must lie in 1..4096"),
        ({"img_size": 256.0}, "img_size=256.0: expected whole numbers"),
        ({"depth": True}, "depth=True: expected whole numbers"),
        ({"tinyvit_depths": (2, -1, 6, 2)}, "each must lie in 1..256"),
    ],
)
def test_a_shape_out_of_range_is_refused_before_anything_is_built(fields, told):
    """A description or checkpoint naming img_size 16000000 had the model built (a 512 TB
    allocation: a raw traceback) before its weights were compared with it."""
    with pytest.raises(ValueError, match=re.escape(told)):
        SamArchitecture(**{**VIT_B.__dict__, **fields})


def test_an_architecture_that_is_no_mapping_is_a_value_error():
    """A description's "architecture": [] took down every command that listed the models
    (AttributeError: 'list' object has no attribute 'items'), the Annotate panel too."""
    with pytest.raises(ValueError, match="an architecture is a mapping of its fields"):
        SamArchitecture.from_dict([])
