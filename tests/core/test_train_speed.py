"""The training fast paths: same results as the stock modules, less work, no repeated work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from napari_samtune.core import patches, train_step
from napari_samtune.core.architectures import TINY, TINY_TINYVIT, build_sam
from napari_samtune.core.data import ImageLabelPair, prepare_pair
from napari_samtune.core.fast_decoder import decode_prompts, decoder_image
from napari_samtune.core.fast_encoder import encode
from napari_samtune.core.patches import PatchSampler
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import EpochDone, iter_train
from napari_samtune.core.train_step import (
    SamTrainingStep,
    decode,
    prepare_input,
    with_first_prompts,
)

# SAM's real prompt encoder and mask decoder (256 channels, 64 x 64 embedding grid) behind
# the tiny test encoder, which is built but never run here.
REAL_DECODER = dataclasses.replace(
    TINY, img_size=1024, prompt_embed_dim=256, decoder_mlp_dim=2048, iou_head_hidden_dim=256
)


def _training_inputs(sam, nuclei_image, n_objects=3):
    """Patches of the nuclei image with first prompts: boxes for some, points for others."""
    image, labels = nuclei_image
    sampler = PatchSampler([prepare_pair(ImageLabelPair(image, labels))], 256, 16, 4, seed=0)
    inputs = []
    for index in range(4):
        patch = sampler.patch(index, 0)
        ids = sampler.sample_objects(patch, n_objects, index, 0)
        inp = prepare_input(sam, patch, ids, torch.device("cpu"))
        inputs.append(with_first_prompts(inp, np.random.default_rng([0, 3, index]), 0.1))
    assert {inp.boxes is None for inp in inputs} == {True, False}  # both kinds of prompts
    return inputs


def _loss_and_grads(step: SamTrainingStep, inputs, embeddings):
    step.sam.zero_grad()
    loss = step(inputs, embeddings)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in step.sam.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("frozen", [False, True])
def test_the_fast_step_trains_like_the_stock_step(nuclei_image, frozen):
    torch.manual_seed(0)
    sam = build_sam(TINY).train()
    sam.image_encoder.requires_grad_(not frozen)
    inputs = _training_inputs(sam, nuclei_image)
    embeddings = None
    if frozen:
        with torch.no_grad():
            embeddings = encode(sam, torch.stack([inp.pixels for inp in inputs]))
    results = {}
    for fast in (False, True):
        step = SamTrainingStep(sam, n_iterative_prompts=2, mask_loss="dice_bce", fast=fast)
        results[fast] = _loss_and_grads(step, inputs, embeddings)
    (stock_loss, stock_grads), (fast_loss, fast_grads) = results[False], results[True]
    assert fast_loss == pytest.approx(stock_loss, rel=1e-5)
    assert fast_grads.keys() == stock_grads.keys()
    assert any(k.startswith("image_encoder.") for k in fast_grads) is not frozen
    for name, grad in stock_grads.items():
        if name.endswith("k_proj.bias"):  # true gradient 0 (softmax removes key biases)
            continue
        error = (fast_grads[name] - grad).abs().max()
        assert error <= 1e-3 * grad.abs().max() + 1e-8, name


def test_fast_decoding_does_far_less_work_per_prompt_pass():
    torch.manual_seed(0)
    sam = build_sam(REAL_DECODER).train()
    embedding = torch.randn(1, 256, 64, 64)
    points = torch.rand(2, 3, 2) * 1024
    labels = torch.tensor([[1, 0, 1], [1, 1, 0]])
    mask_input = torch.randn(2, 1, 256, 256)
    flops = {}
    for name, run, image in (
        ("stock", decode, embedding),
        ("fast", decode_prompts, decoder_image(sam, embedding)),
    ):
        with FlopCounterMode(display=False) as counter:
            logits, iou = run(sam, image, points, labels, None, mask_input, False)
            (logits.sum() + iou.sum()).backward()
        flops[name] = counter.get_total_flops()
    assert logits.shape == (2, 1, 256, 256)
    assert flops["fast"] < 0.7 * flops["stock"]  # measured: 0.65 with these 3 + 1 points


class _BatchedProducts(TorchDispatchMode):
    """Records the (shape, stride) pairs of the operands of every ``bmm``."""

    def __init__(self):
        super().__init__()
        self.operands = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.bmm.default:
            self.operands += [(tuple(a.shape), a.stride()) for a in args[:2]]
        return func(*args, **(kwargs or {}))


def test_one_objects_training_pass_gives_bmm_its_operands_as_they_are():
    # torch.matmul re-views batch-1 operands with the batch stride of one row, which sent
    # bf16 transposes down a slow oneDNN path (a frozen preset's step, 1 object: ~4%)
    torch.manual_seed(0)
    sam = build_sam(REAL_DECODER).train()
    image = decoder_image(sam, torch.randn(1, 256, 64, 64))
    points, labels = torch.rand(1, 2, 2) * 1024, torch.tensor([[1, 0]])
    with _BatchedProducts() as recorded, torch.autocast("cpu", torch.bfloat16):
        for multimask, mask_input in ((True, None), (False, torch.randn(1, 1, 256, 256))):
            logits, iou = decode_prompts(sam, image, points, labels, None, mask_input, multimask)
            (logits.float().sum() + iou.float().sum()).backward()
    batch_one = [(shape, stride) for shape, stride in recorded.operands if shape[0] == 1]
    assert len(batch_one) >= 12  # the mask products and the image -> token attentions
    for shape, stride in batch_one:
        assert stride[0] >= shape[1] * shape[2], (shape, stride)


def test_channels_last_encoding_gives_the_stock_embedding():
    torch.manual_seed(0)
    sam = build_sam(TINY_TINYVIT).eval()
    pixels = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        stock = sam.image_encoder(pixels)
        fast = encode(sam, pixels)
    assert fast.shape == (1, 256, 64, 64)
    torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-4)


def _count_pixel_preparations(monkeypatch) -> list[int]:
    calls = [0]
    original = train_step._pixels

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(train_step, "_pixels", counting)
    return calls


def test_cached_epochs_neither_encode_nor_prepare_pixels(tmp_path, monkeypatch, frozen_tiny_config):
    calls = _count_pixel_preparations(monkeypatch)
    config = frozen_tiny_config(epochs=3)
    train_data = make_dataset(2, shape=(96, 112), seed=0)
    val_data = make_dataset(1, shape=(96, 96), seed=50)
    counts = []
    for event in iter_train(config, train_data, val_data, out_dir=tmp_path / "run"):
        if isinstance(event, EpochDone):
            counts.append(calls[0])
    per_epoch = np.diff([0, *counts]).tolist()
    assert per_epoch[0] >= 4 and per_epoch[1:] == [0, 0]  # training patches + validation tiles


def test_cached_epochs_do_not_augment_pixels(tmp_path, monkeypatch, frozen_tiny_config):
    """A patch's pixels are rotated only where they are encoded: in the first epoch."""
    rotated = [0]
    original = patches.augment

    def counting(array, aug):
        rotated[0] += array.ndim == 3  # pixels (labels are 2-d)
        return original(array, aug)

    monkeypatch.setattr(patches, "augment", counting)
    config = frozen_tiny_config(epochs=3)
    counts = []
    for event in iter_train(config, make_dataset(2, shape=(96, 112), seed=0), out_dir=tmp_path):
        if isinstance(event, EpochDone):
            counts.append(rotated[0])
    per_epoch = np.diff([0, *counts]).tolist()
    assert per_epoch[0] >= 2 and per_epoch[1:] == [0, 0], per_epoch
