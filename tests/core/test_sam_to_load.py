"""Models built without weights (``sam_to_load``) and loaded by taking the file's tensors."""

import threading

import pytest
import torch
from torch import nn

from napari_samtune.core.architectures import (
    TINY_TINYVIT,
    _WeightsOnMeta,
    build_sam,
    load_weights,
    sam_to_load,
)
from napari_samtune.core.lora import apply_lora
from napari_samtune.core.models import export_sam_state_dict, load_model


def _random_state(arch, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_sam(arch).state_dict().items()}


@pytest.mark.parametrize("arch", ["tiny", TINY_TINYVIT, "vit_t"], ids=["vit", "tinyvit", "vit_t"])
def test_a_loaded_model_equals_one_built_and_copied_into(arch):
    state = _random_state(arch)
    reference = build_sam(arch)
    reference.load_state_dict(state)

    sam = sam_to_load(arch)
    layers = [m for m in sam.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm))]
    assert layers and all(m.weight.is_meta for m in layers)  # nearly all of a model's bytes
    load_weights(sam, state)

    assert sam.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(sam.state_dict()[key], value), key
    buffers = dict(sam.named_buffers())  # the non-persistent ones too: pixel_mean, bias indices
    for key, value in reference.named_buffers():
        assert torch.equal(buffers[key], value), key
    for key, param in sam.named_parameters():  # taken, not copied: no second copy in memory
        assert isinstance(param, nn.Parameter) and param.requires_grad, key
        assert param.data_ptr() == state[key].data_ptr(), key
    pixels = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        size = sam.image_encoder.img_size
        image = torch.nn.functional.interpolate(pixels, size=(size, size))
        assert torch.equal(sam.image_encoder(image), reference.image_encoder(image))


def test_building_to_load_leaves_the_random_state_as_it_was():
    before = torch.get_rng_state()
    sam_to_load("tiny")
    assert torch.equal(torch.get_rng_state(), before)


def test_weights_of_another_dtype_are_converted_to_the_models():
    state = {k: v.half() for k, v in _random_state("tiny").items()}
    sam = load_weights(sam_to_load("tiny"), state)
    for key, value in sam.state_dict().items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, state[key].float()), key


def test_a_half_precision_file_loads_as_a_float32_model(tmp_path):
    path = export_sam_state_dict(build_sam("tiny").half(), tmp_path / "half.pth")
    loaded = load_model(path, architecture="tiny")
    on_file = torch.load(path, weights_only=True)
    for key, value in loaded.sam.state_dict().items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, on_file[key].float()), key


def test_lora_adapters_load_onto_a_model_built_to_load():
    sam = build_sam("tiny")
    apply_lora(sam.image_encoder, rank=2)
    state = {k: torch.randn_like(v) for k, v in sam.state_dict().items()}
    restored = sam_to_load("tiny")
    apply_lora(restored.image_encoder, rank=2)
    load_weights(restored, state)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key
    adapters = [p for n, p in restored.named_parameters() if "lora_" in n]
    assert adapters and all(p.requires_grad for p in adapters)
    frozen = restored.image_encoder.blocks[0].attn.qkv.weight
    assert not frozen.requires_grad  # the adapter's frozen base stays frozen


def test_a_missing_weight_is_refused_by_name():
    state = _random_state("tiny")
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(RuntimeError, match="mask_decoder.iou_token.weight"):
        load_weights(sam_to_load("tiny"), state)


def test_a_placeholder_no_file_fills_is_refused_by_name():
    sam = sam_to_load("tiny")
    sam.register_buffer("scratch", torch.empty(3, device="meta"), persistent=False)
    with pytest.raises(RuntimeError, match="scratch"):
        load_weights(sam, _random_state("tiny"))


def test_models_built_meanwhile_in_another_thread_get_real_weights():
    inside, leave = threading.Event(), threading.Event()
    in_mode = {}

    def build_to_load():
        with _WeightsOnMeta():
            in_mode["linear"] = nn.Linear(4, 4)
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=build_to_load)
    thread.start()
    try:
        assert inside.wait(10)
        elsewhere = nn.Linear(4, 4)
    finally:
        leave.set()
        thread.join()
    assert in_mode["linear"].weight.is_meta
    assert not elsewhere.weight.is_meta and elsewhere.weight.abs().sum() > 0
