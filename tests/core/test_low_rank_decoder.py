"""The low-rank inference decoder on trained weights (the packaged nano model).

The random-weight decoders of ``test_accelerate`` check every term against the stock modules;
this checks that the per-token moments keep their precision with a trained model's
embeddings and norms, for batches of points and boxes.
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from napari_samtune.core import fast_decoder
from napari_samtune.core.fast_decoder import decode_prompts, decoder_image
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image


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
