"""Python API mistakes a notebook user made, each once told with torch's or numpy's words,
or not at all."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_samtune.core.comparison import compare_models
from napari_samtune.core.embeddings import TilingConfig
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

METRICS = {"box_iou": 0.5, "point_iou": 0.4}


@pytest.mark.parametrize(
    "results",
    [
        [("nano", METRICS), ("nano", {"box_iou": 0.9, "point_iou": 0.7})],
        {1: METRICS, "1": METRICS},
    ],
)
def test_results_of_two_models_under_one_name_are_refused(tmp_path, results):
    """One row was written, the other model's results dropped unsaid."""
    with pytest.raises(ValueError, match=r"model name\(s\) \['.*'\] appear more than once"):
        compare_models(results, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("tiling", [0.25, {"overlap_fraction": 0.25}])
def test_a_tiling_that_is_no_tiling_config_is_refused_at_once(tiny_sam, tiling):
    """Accepted, it failed at the first large image with "'float' object has no attribute
    'overlap_fraction'"."""
    with pytest.raises(TypeError, match=r"pass a TilingConfig, e\.g\. TilingConfig\("):
        Segmenter(tiny_sam, model_id="t", use_disk_cache=False, tiling=tiling)
    Segmenter(tiny_sam, model_id="t", use_disk_cache=False, tiling=TilingConfig(0.5))


def test_prompts_as_tensors_that_track_gradients_are_taken(tiny_sam):
    """numpy refused them: "Can't call numpy() on Tensor that requires grad"."""
    segmenter = Segmenter(tiny_sam, model_id="t", use_disk_cache=False)
    segmenter.set_image(make_image((96, 96), seed=0)[0])
    points = torch.tensor([[40.0, 50.0]], requires_grad=True)
    box = torch.tensor([20.0, 30.0, 60.0, 70.0], requires_grad=True)
    from_tensors = segmenter.predict(points_xy=points, point_labels=[1], box_xyxy=box)
    from_arrays = segmenter.predict(
        points_xy=np.array([[40.0, 50.0]]), point_labels=[1], box_xyxy=[20, 30, 60, 70]
    )
    np.testing.assert_array_equal(from_tensors.mask, from_arrays.mask)


def test_a_channel_error_of_a_tuple_pair_says_how_to_give_its_channels(tmp_path):
    """It said "pass channel_axis (e.g. 0 or -1) and channels", which train() has not."""
    from napari_samtune.core.data_checks import ChannelError
    from napari_samtune.core.presets import TrainConfig
    from napari_samtune.core.train import train

    image, labels = make_image((64, 64), seed=0)
    two_channels = np.stack([image, image // 2])
    with pytest.raises(ChannelError) as info:
        train(TrainConfig(model="random:tiny"), [(two_channels, labels)], out_dir=tmp_path)
    message = str(info.value)
    assert "channel_axis" in message
    assert "give that pair as ImageLabelPair(image, labels, channel_axis=..., channels=...)" in (
        message
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_cast_to_low_precision_is_refused_naming_the_precision_option(tiny_sam, dtype):
    """Its encoder ran; the first prompt failed in the prompt encoder with torch's "expected
    m1 and m2 to have the same dtype"."""
    cast = copy.deepcopy(tiny_sam).to(dtype)
    with pytest.raises(
        TypeError, match=r"decoder weights are (bfloat16|float16).*sam\.float\(\).*precision='bf16'"
    ):
        Segmenter(cast, model_id="cast", use_disk_cache=False)


@pytest.mark.filterwarnings("ignore:precision 'bf16' was asked for")  # where bf16 is emulated
def test_a_model_whose_image_encoder_alone_is_cast_to_bf16_still_segments(tiny_sam, bf16_kernels):
    """Casting the image encoder alone halves its weights' memory; the decoder stays float32
    and gets float32 embeddings (refused by the first version of the check above)."""
    model = copy.deepcopy(tiny_sam)
    model.image_encoder.to(torch.bfloat16)
    segmenter = Segmenter(model, model_id="encoder-bf16", use_disk_cache=False, precision="bf16")
    segmenter.set_image(make_image((96, 112), seed=4)[0])
    prediction = segmenter.predict(np.array([[50.0, 40.0]]), np.array([1]))
    assert prediction.mask.shape == (96, 112) and prediction.low_res_logits.dtype == np.float32
