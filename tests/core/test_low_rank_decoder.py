"""The low-rank inference decoder on trained weights (the packaged nano model).

The random-weight decoders of ``test_accelerate`` check every term against the stock modules;
this checks that the per-token moments keep their precision with a trained model's
embeddings and norms, for batches of points and boxes.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from napari_samtune.core import fast_decoder, low_rank_decoder
from napari_samtune.core.fast_decoder import decode_prompts, decoder_image
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.weight_cache import forget_kept


@pytest.fixture(scope="module")
def nano_image():
    sam = load_model("nano", device="cpu").sam
    segmenter = Segmenter(sam, model_id="nano", device=torch.device("cpu"), use_disk_cache=False)
    image, _ = make_image((512, 512), seed=3)
    segmenter.set_image(np.stack([image] * 3, axis=-1))
    with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
        embedding = segmenter.features(0)
        patch.setattr(fast_decoder, "LOW_RANK_MIN_TOKENS", 0)  # nano's 16 x 16 tokens
        low_rank = decoder_image(sam, embedding, project_first_layer=True)
        plain = decoder_image(sam, embedding)
    return sam, low_rank, plain


@pytest.mark.parametrize("prompt", ["points", "boxes", "both"])
def test_low_rank_decoding_of_a_trained_model_matches_the_plain_path(nano_image, prompt):
    sam, low_rank, plain = nano_image
    assert low_rank.first_layer.low_rank is not None and plain.first_layer is None
    rng = np.random.default_rng(["points", "boxes", "both"].index(prompt))
    size = sam.image_encoder.img_size
    n = 6
    points = torch.tensor(rng.uniform(0, size, (n, 2, 2)), dtype=torch.float)
    labels = torch.tensor(rng.integers(0, 2, (n, 2)))
    corners = torch.tensor(rng.uniform(0, size, (n, 2, 2)), dtype=torch.float)
    boxes = torch.sort(corners, dim=1).values.reshape(n, 4)
    args = {
        "points": (points, labels, None),
        "boxes": (None, None, boxes),
        "both": (points, labels, boxes),
    }[prompt]
    with torch.inference_mode():
        logits, iou = decode_prompts(sam, low_rank, *args, None, True)
        want_logits, want_iou = decode_prompts(sam, plain, *args, None, True)
    scale = want_logits.abs().max()
    assert scale > 1  # masks with real structure, not noise around 0
    assert (logits - want_logits).abs().max() <= 1e-5 * scale
    assert (iou - want_iou).abs().max() <= 1e-5
    assert ((logits > 0) == (want_logits > 0)).float().mean() > 0.9999


class _StoragesRead(TorchDispatchMode):
    """Records the storage of every tensor that an operator takes."""

    def __init__(self):
        super().__init__()
        self.storages = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for arg in [*args, *kwargs.values()]:
            for tensor in arg if isinstance(arg, list | tuple) else [arg]:
                if isinstance(tensor, torch.Tensor):
                    self.storages.add(tensor.untyped_storage().data_ptr())
        return func(*args, **kwargs)


@pytest.mark.parametrize("low_rank_path", [True, False])
def test_only_the_plain_path_reads_the_image_tokens(nano_image, low_rank_path):
    """The low-rank projections hold all that prompts without a mask input need: the
    plain path's tokens + dense embedding (a pass over 4 MB at 64 x 64 tokens) is not made."""
    sam, low_rank, plain = nano_image
    image = low_rank if low_rank_path else plain
    points = torch.tensor([[[200.0, 300.0]], [[700.0, 100.0]]])
    labels = torch.ones(2, 1, dtype=torch.int64)
    with torch.inference_mode(), _StoragesRead() as spy:
        logits, _ = decode_prompts(sam, image, points, labels, None, None, False)
    assert logits.shape == (2, 1, 4 * image.size, 4 * image.size)
    assert (image.tokens.untyped_storage().data_ptr() in spy.storages) == (not low_rank_path)


def test_the_positional_parts_are_made_once_and_again_for_changed_weights(tiny_sam, monkeypatch):
    """The dense positional encoding and its three projections are the same for every image
    (~5 ms of each image's ~30 ms of projections for SAM's 64 x 64 tokens on 2 cores): a
    second image computes neither; weights changed in place get new ones, equal to those
    computed afresh."""
    monkeypatch.setattr(fast_decoder, "LOW_RANK_MIN_TOKENS", 0)
    encoder = tiny_sam.prompt_encoder
    side, channels = encoder.image_embedding_size[0], encoder.embed_dim
    encodings, positional_products = [], []
    monkeypatch.setattr(encoder, "get_dense_pe", _spy(encoder.get_dense_pe, encodings))

    def linear(x, *args):  # the projections of all N positions, not of one bias row
        positional_products.extend([x.shape] if x.shape[0] == side * side else [])
        return torch.nn.functional.linear(x, *args)

    monkeypatch.setattr(low_rank_decoder, "F", SimpleNamespace(linear=linear))
    first, second = torch.randn(
        2, 1, channels, side, side, generator=torch.Generator().manual_seed(0)
    )
    key_proj = tiny_sam.mask_decoder.transformer.layers[1].cross_attn_token_to_image.k_proj
    with torch.inference_mode():
        decoder_image(tiny_sam, first, project_first_layer=True)
        assert (len(encodings), len(positional_products)) == (1, 3)
        kept = decoder_image(tiny_sam, second, project_first_layer=True).first_layer.low_rank
        assert (len(encodings), len(positional_products)) == (1, 3)
    with torch.no_grad():
        key_proj.weight.mul_(1.5)  # as an optimizer step would
    with torch.inference_mode():
        changed = decoder_image(tiny_sam, second, project_first_layer=True).first_layer.low_rank
        assert (len(encodings), len(positional_products)) == (1, 4)
        forget_kept(tiny_sam)
        fresh = decoder_image(tiny_sam, second, project_first_layer=True).first_layer.low_rank
    assert not torch.equal(changed.keys.shift, kept.keys.shift)
    for name in ("keys", "queries", "final_keys"):
        assert torch.equal(getattr(changed, name).shift, getattr(fresh, name).shift)


def _spy(function, calls: list):
    def spied(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return spied
