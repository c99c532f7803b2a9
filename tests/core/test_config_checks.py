"""TrainConfig's field checks: types, ranges and contradictions, each named in the message."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from napari_samtune.core.architectures import NANO, TINY, TINY_TINYVIT, VIT_B, VIT_T, build_sam
from napari_samtune.core.config_checks import (
    MAX_ITERATIVE_PROMPTS,
    check_lora_rank,
    freeze_from_choices,
    max_lora_rank,
)
from napari_samtune.core.lora import apply_lora
from napari_samtune.core.presets import TrainConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs=0"),
        ("learning_rate", 0.0, "learning_rate=0.0"),
        ("n_objects_per_batch", 0, "n_objects_per_batch=0"),
        ("freeze", ("decoder",), "freeze=\\('decoder',\\)"),
        ("freeze", ("image_encoder", "prompt_encoder", "mask_decoder"), "nothing to train"),
        ("freeze", 5, "freeze=5; give a list of distinct parts"),  # e.g. a damaged config.json
        ("freeze", "image_encoder", "freeze='image_encoder'; give a list"),  # not its letters
        ("mixed_precision", "fp8", "mixed_precision='fp8'"),
        ("val_fraction", 1.0, "val_fraction=1.0"),
        ("patch_size", 8, "patch_size=8"),
        ("lora_rank", -1, "lora_rank=-1"),
        ("mask_loss", "l2", "mask_loss='l2'"),
    ],
)
def test_train_config_rejects_bad_values_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", "1e-5", "learning_rate='1e-5' is text; use a number"),
        ("epochs", True, "epochs=True is a bool; use a whole number"),
        ("epochs", 2.5, "epochs=2.5 is a float; use a whole number"),
        ("batch_size", "2", "batch_size='2' is text; use a whole number"),
        ("patch_size", 256.0, "patch_size=256.0 is a float; use a whole number or None"),
        ("early_stopping", False, "early_stopping=False is a bool; use a whole number or None"),
        ("lora_alpha", "8", "lora_alpha='8' is text; use a number or None"),
        ("val_fraction", None, "val_fraction=None is None; use a number"),
        ("seed", 1.5, "seed=1.5 is a float; use a whole number"),
        ("scheduler_patience", np.True_, f"scheduler_patience={np.True_!r} is a bool; use a"),
        ("fast_attention", np.uint8(1), f"fast_attention={np.uint8(1)!r} is a uint8; use True"),
        ("fast_attention", "no", "fast_attention='no' is text; use True or False"),
        ("checkpoint_trainable_only", 1, "checkpoint_trainable_only=1 is an int; use True or"),
    ],
)
def test_train_config_names_a_field_of_the_wrong_type(field, value, message):
    with pytest.raises(TypeError, match=f"^{re.escape(message)}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("learning_rate", float("inf")), ("seed", -1), ("lora_alpha", 0.0), ("lora_alpha", -8)],
)
def test_train_config_refuses_numbers_out_of_range(field, value):
    with pytest.raises(ValueError, match=f"^{field}={value!r}; use a"):
        TrainConfig(**{field: value})


def test_numpy_numbers_become_python_numbers_that_checkpoints_load(tmp_path):
    config = TrainConfig(
        epochs=np.int64(3), learning_rate=np.float32(0.5), lora_rank=4, lora_alpha=4
    )
    assert (config.epochs, config.learning_rate, config.lora_alpha) == (3, 0.5, 4)
    assert type(config.epochs) is int and type(config.learning_rate) is float
    torch.save(dataclasses.asdict(config), tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epochs"] == 3


def test_lora_and_a_frozen_encoder_contradict_each_other():
    with pytest.raises(ValueError, match="lora_rank=4 trains adapters"):
        TrainConfig(lora_rank=4, freeze=("image_encoder",))


def test_corrective_clicks_are_bounded():
    assert TrainConfig(n_iterative_prompts=0).n_iterative_prompts == 0
    assert TrainConfig(n_iterative_prompts=16).n_iterative_prompts == MAX_ITERATIVE_PROMPTS == 16
    for clicks in (17, 1000, -1):  # 1000 ran for over 5 minutes on a 2-sample epoch
        with pytest.raises(ValueError, match=f"^n_iterative_prompts={clicks}; use 0 to 16 "):
            TrainConfig(n_iterative_prompts=clicks)


def test_embedding_cache_size_has_its_own_message():
    with pytest.raises(ValueError, match=r"^embedding_cache_size=-1; use 0 \(no cache\)"):
        TrainConfig(embedding_cache_size=-1)


def test_lora_alpha_without_lora_rank_is_refused():
    with pytest.raises(ValueError, match=r"^lora_alpha=8.0 scales .* set lora_rank too"):
        TrainConfig(lora_alpha=8.0)
    assert TrainConfig(lora_rank=4, lora_alpha=8.0).lora_alpha == 8.0
    assert TrainConfig(lora_rank=4).lora_alpha is None  # the default: scale 1
    assert TrainConfig().lora_alpha is None


@pytest.mark.parametrize(
    ("choices", "freeze"),
    [
        ([], ()),
        (["none"], ()),
        (["none", "none"], ()),
        (["image_encoder"], ("image_encoder",)),
        (["mask_decoder", "image_encoder", "mask_decoder"], ("mask_decoder", "image_encoder")),
    ],
)
def test_freeze_from_command_line_choices(choices, freeze):
    assert freeze_from_choices(choices) == freeze


def test_freeze_none_with_a_part_contradicts_itself():
    with pytest.raises(ValueError) as refused:
        freeze_from_choices(["none", "image_encoder"])
    assert str(refused.value) == (
        "--freeze none trains every part, but --freeze image_encoder freezes it; give either "
        "--freeze none or the parts to freeze"
    )
    with pytest.raises(ValueError, match="--freeze mask_decoder --freeze prompt_encoder freezes"):
        freeze_from_choices(["mask_decoder", "none", "prompt_encoder"])
    with pytest.raises(ValueError, match=r"^freeze=\('none',\); 'none' is no part: give freeze"):
        TrainConfig(freeze=("none",))  # the command line's word never reaches a config


@pytest.mark.parametrize("arch", [TINY, TINY_TINYVIT, NANO])
def test_max_lora_rank_is_the_narrowest_adapted_layer(arch):
    encoder = build_sam(arch).image_encoder
    modules = dict(encoder.named_modules())
    widths = [modules[name].in_features for name in apply_lora(encoder, rank=1)]
    assert max_lora_rank(arch) == min(widths)


def test_lora_rank_above_the_encoder_width_is_refused():
    assert (max_lora_rank(NANO), max_lora_rank(VIT_T), max_lora_rank(VIT_B)) == (128, 128, 768)
    check_lora_rank(128, NANO)
    check_lora_rank(0, NANO)
    with pytest.raises(ValueError, match=r"^lora_rank=100000 is above 128, .* of nano's image"):
        check_lora_rank(100000, NANO)
    with pytest.raises(ValueError, match=r"^lora_rank=769 is above 768, .* of vit_b's image"):
        check_lora_rank(769, VIT_B)
