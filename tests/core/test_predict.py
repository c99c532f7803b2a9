"""Segmenter: prompt -> mask, equal to the official SamPredictor, on whole and tiled images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from napari_samtune.core import fast_decoder, view_decoding
from napari_samtune.core.embeddings import OVERVIEW, TileGrid, TilingConfig
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.mask_windows import BACKGROUND_LOGIT, Window, reproject_logits
from napari_samtune.core.predict import Prediction, Segmenter
from napari_samtune.core.synthetic import make_image

POINT = {"points_xy": np.array([[50.0, 60.0]]), "point_labels": np.array([1])}
BOX = {"box_xyxy": np.array([30.0, 40.0, 120.0, 150.0])}
BOX_AND_POINTS = {
    "points_xy": np.array([[50.0, 60.0], [100.0, 100.0]]),
    "point_labels": np.array([1, 0]),
    **BOX,
}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def assert_nontrivial(mask: np.ndarray) -> None:
    assert 0.02 < mask.mean() < 0.98, f"trivial mask (foreground fraction {mask.mean():.3f})"


@pytest.fixture
def image():
    return make_image((200, 240), seed=0)[0]


def official(sam, rgb, multimask, **prompt):
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    masks, scores, logits = predictor.predict(
        point_coords=prompt.get("points_xy"),
        point_labels=prompt.get("point_labels"),
        box=prompt.get("box_xyxy"),
        mask_input=prompt.get("mask_input"),
        multimask_output=multimask,
    )
    best = int(np.argmax(scores))
    return masks[best], float(scores[best]), logits[best : best + 1]


@pytest.mark.parametrize("prompt", [POINT, BOX, BOX_AND_POINTS], ids=["point", "box", "both"])
@pytest.mark.parametrize("multimask", [False, True])
def test_masks_match_the_official_predictor(sensitive_sam, image, prompt, multimask):
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    prediction = segmenter.predict(**prompt, multimask=multimask)
    expected, score, logits = official(sensitive_sam, to_sam_rgb(image), multimask, **prompt)
    assert_nontrivial(expected)
    assert prediction.mask.shape == image.shape and prediction.mask.dtype == bool
    assert iou(prediction.mask, expected) >= 0.99
    assert prediction.score == pytest.approx(score, abs=1e-5)
    assert prediction.low_res_logits.shape == (1, 64, 64)
    np.testing.assert_allclose(prediction.low_res_logits, logits, atol=1e-4)


def test_the_masks_depend_on_where_the_prompt_is(sensitive_sam, image):
    """Guards the equivalence test: a shifted prompt gives a clearly different mask."""
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    here = segmenter.predict([[50.0, 60.0]]).mask
    there = segmenter.predict([[60.0, 60.0]]).mask
    assert_nontrivial(here)
    assert iou(here, there) < 0.95


def test_refinement_with_mask_input_matches_the_official_predictor(sensitive_sam, image):
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    first = segmenter.predict(**POINT, multimask=True)
    click = {"points_xy": np.array([[50.0, 60.0], [90.0, 30.0]]), "point_labels": [1, 0]}
    refined = segmenter.predict(**click, mask_input=first)
    from_array = segmenter.predict(**click, mask_input=first.low_res_logits)
    rgb = to_sam_rgb(image)
    expected, _, _ = official(sensitive_sam, rgb, False, **click, mask_input=first.low_res_logits)
    without, _, _ = official(sensitive_sam, rgb, False, **click)
    assert_nontrivial(expected)
    assert iou(expected, without) < 0.99  # the mask input matters
    assert iou(refined.mask, expected) >= 0.99
    np.testing.assert_array_equal(from_array.mask, refined.mask)


def test_a_tiled_prompt_is_answered_like_the_official_predictor_on_its_tile(sensitive_sam):
    image = make_image((256, 448), seed=1)[0]
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    assert segmenter.grid.x_starts == (0, 192)
    prediction = segmenter.predict([[330.0, 100.0], [300.0, 180.0]], [1, 0])
    assert prediction.tile == 1
    crop = np.ascontiguousarray(to_sam_rgb(image)[:, 192:])
    expected, score, _ = official(
        sensitive_sam,
        crop,
        False,
        points_xy=np.array([[138.0, 100.0], [108.0, 180.0]]),
        point_labels=np.array([1, 0]),
    )
    assert_nontrivial(expected)
    assert iou(prediction.mask[:, 192:], expected) >= 0.99
    assert not prediction.mask[:, :192].any()
    assert prediction.score == pytest.approx(score, abs=1e-5)


def test_a_box_larger_than_a_tile_is_answered_on_the_whole_image(sensitive_sam):
    image = make_image((256, 448), seed=2)[0]
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    box = np.array([20.0, 30.0, 420.0, 200.0])  # wider than a 256 px tile
    prediction = segmenter.predict(box_xyxy=box)
    assert prediction.tile == OVERVIEW
    expected, _, _ = official(sensitive_sam, to_sam_rgb(image), False, box_xyxy=box)
    assert_nontrivial(expected)
    assert iou(prediction.mask, expected) >= 0.99
    assert prediction.mask[:, :150].any() and prediction.mask[:, 300:].any()  # spans both tiles


@pytest.mark.parametrize("shape", [(3, 2000), (2000, 3), (1, 600)])
def test_a_prompt_across_the_tiles_of_a_very_thin_image_is_answered(sensitive_sam, shape):
    # the overview of an image over 2 * 256 times longer than wide has a short side that
    # SAM's resize rounds to 0 pixels: every prompt across tiles failed inside the resize
    image = np.random.default_rng(0).random(shape)
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    assert min(segmenter.grid.overview.input_size) == 1
    box = np.array([0.0, 0.0, shape[1] - 1.0, shape[0] - 1.0])
    prediction = segmenter.predict(box_xyxy=box)
    assert prediction.tile == OVERVIEW and prediction.mask.shape == shape
    refined = segmenter.predict(box_xyxy=box, mask_input=prediction)
    assert refined.mask.shape == shape
    assert segmenter.predict_boxes(box[None]).shape == shape


def test_reprojected_logits_land_on_the_same_image_pixels():
    grid = TileGrid.for_image((256, 448), 256, TilingConfig())
    left, right = grid.tiles
    logits = torch.full((1, 1, 64, 64), -5.0)
    logits[0, 0, 20, 56] = 30.0  # low-res pixel centred on image x = 56 * 4 + 1.5 = 225.5
    moved = reproject_logits(logits, left, right)[0, 0]
    assert tuple(np.unravel_index(int(moved.argmax()), moved.shape)) == (20, 8)  # x = 192 + 33.5
    assert moved[20, 8] == pytest.approx(30.0, abs=1e-3)
    assert torch.all(moved[:, 20:] == BACKGROUND_LOGIT)  # right of image x = 256: never seen
    back = reproject_logits(moved[None, None], right, left)[0, 0]
    torch.testing.assert_close(back[:, 49:63], logits[0, 0, :, 49:63])  # the shared columns


def test_a_refinement_that_moves_to_another_tile_uses_the_reprojected_mask(sensitive_sam):
    image = make_image((256, 448), seed=3)[0]
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    # the random model's masks reach every tile's edges: kept on the tile they choose
    segmenter.view_past_cut = lambda *args: None
    first = segmenter.predict([[220.0, 100.0]])  # in the overlap, more central in tile 0
    assert first.tile == 0
    click = {"points_xy": [[220.0, 100.0], [300.0, 120.0]], "point_labels": [1, 1]}
    refined = segmenter.predict(**click, mask_input=first)
    assert refined.tile == 1
    plain = segmenter.predict(**click)
    assert not np.array_equal(refined.low_res_logits, plain.low_res_logits)


@pytest.mark.parametrize(
    "shape", [(256, 200), (200, 240)], ids=["input frame is the view", "view resized"]
)
def test_upscaled_windows_hold_every_pixel_above_the_threshold(tiny_sam, shape):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(make_image(shape, seed=5)[0])
    side = segmenter.grid.view(0).lowres_size
    generator = torch.Generator().manual_seed(0)
    lowres = torch.full((4, side, side), -3.0)
    lowres[0, 10:20, 30:41] = torch.rand(10, 11, generator=generator) * 4 - 1  # a blob
    lowres[1, :5, 45:] = 2.0  # at the top edge, and into the padding columns of 256 x 200
    lowres[2] = torch.randn(side, side, generator=generator)  # all over the view
    # lowres[3]: nothing above the threshold
    full = segmenter.upscale(0, lowres).numpy()
    windows = segmenter.upscale_windows(0, lowres)
    for logits, window in zip(full, windows, strict=True):
        inside = np.zeros(shape, dtype=bool)
        inside[window.region] = True
        np.testing.assert_allclose(window.logits.numpy(), logits[window.region], atol=1e-6)
        np.testing.assert_array_equal(window.logits.numpy() > 0, logits[window.region] > 0)
        assert not (logits[~inside] > 0).any()
    assert windows[3].logits.numel() == 0
    assert windows[0].logits.shape[0] < shape[0] / 4  # the blob's window only
    assert (full[2] > 0).mean() > 0.3  # the all-over object is really all over


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_window_marks_its_pixels_above_the_threshold_in_place(dtype):
    logits = torch.tensor([[-1.0, 0.0, 0.5], [2.0, 0.25, -0.25]], dtype=dtype)
    window = Window(1, 2, logits)
    expected = np.array([[False, False, True], [True, True, False]])
    np.testing.assert_array_equal(window.above(0.0), expected)
    np.testing.assert_array_equal(window.above(0.25), [[False, False, True], [True, False, False]])
    image = np.ones((4, 6), dtype=bool)  # only the window's pixels are written
    returned = window.above(0.0, out=image[window.region])
    np.testing.assert_array_equal(image[1:3, 2:5], expected)
    assert image.sum() == image.size - 6 + expected.sum()
    assert np.shares_memory(returned, image)


def test_predict_boxes_gives_one_object_per_box(sensitive_sam, image):
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    boxes = np.array([[10, 10, 60, 70], [120, 20, 220, 90], [40, 120, 150, 190.0]])
    labels = segmenter.predict_boxes(boxes)
    singles = [segmenter.predict(box_xyxy=b).mask for b in boxes]
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    np.testing.assert_array_equal(labels > 0, np.logical_or.reduce(singles))
    coverage = np.sum(singles, axis=0)
    for object_id, single in enumerate(singles, start=1):
        assert np.all(labels[single & (coverage == 1)] == object_id)
    # where masks overlap, the object with the largest logit gets the pixel
    low, _ = segmenter.decode(0, boxes_xyxy=boxes)
    logits = segmenter.upscale(0, low[:, 0]).numpy()
    expected = np.where(logits.max(0) > 0, logits.argmax(0) + 1, 0)
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) >= 3  # background and at least two objects: not degenerate


def test_batched_points_give_one_object_per_point(sensitive_sam):
    image = make_image((256, 448), seed=4)[0]
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    points = np.array([[30.0, 40.0], [420.0, 200.0], [230.0, 128.0]])
    labels = segmenter.predict_points_batched(points)
    singles = [segmenter.predict([p], multimask=True).mask for p in points]
    np.testing.assert_array_equal(labels > 0, np.logical_or.reduce(singles))
    coverage = np.sum(singles, axis=0)
    for object_id, single in enumerate(singles, start=1):
        assert np.all(labels[single & (coverage == 1)] == object_id)


@pytest.mark.parametrize("low_rank", [False, True])
def test_decoding_with_a_minimum_iou_keeps_exactly_the_prompts_that_reach_it(
    sensitive_sam, image, low_rank, monkeypatch
):
    """The prompts whose masks all fall below ``min_iou`` are dropped before upscaling; the
    others come back as in a full decode (automatic segmentation's IoU filter), with the
    plain and the low-rank image tokens."""
    if low_rank:
        monkeypatch.setattr(fast_decoder, "LOW_RANK_MIN_TOKENS", 0)
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    points = np.random.default_rng(0).uniform(0, 256, size=(12, 1, 2))
    labels = np.ones((12, 1), dtype=np.int64)
    low, iou = segmenter.decode(0, points, labels, multimask=True)
    threshold = float(iou.max(dim=1).values.median())
    passing = (iou >= threshold).any(dim=1)
    assert 0 < passing.sum() < len(points)  # some prompts kept, some dropped
    kept_low, kept_iou = segmenter.decode(0, points, labels, multimask=True, min_iou=threshold)
    torch.testing.assert_close(kept_iou, iou[passing])
    torch.testing.assert_close(kept_low, low[passing], rtol=0, atol=1e-5)
    none_low, none_iou = segmenter.decode(0, points, labels, multimask=True, min_iou=2.0)
    assert none_low.shape == (0, 3, *low.shape[-2:]) and none_iou.shape == (0, 3)


@pytest.mark.parametrize("low_rank", [False, True])
def test_decoding_the_best_candidate_only_gives_the_full_decodes_best(
    sensitive_sam, image, low_rank, monkeypatch
):
    """``best_only`` makes one mask per prompt, that of the highest predicted IoU: the one a
    full decode of the three candidates picks (the predictions and batched points use it)."""
    if low_rank:
        monkeypatch.setattr(fast_decoder, "LOW_RANK_MIN_TOKENS", 0)
    # the IoUs are features of the IoU token, which rank the candidates by the prompt
    sensitive_sam.mask_decoder.iou_prediction_head = torch.nn.Identity()
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    points = np.random.default_rng(1).uniform(0, 200, size=(12, 1, 2))
    labels = np.ones((12, 1), dtype=np.int64)
    low, iou = segmenter.decode(0, points, labels, multimask=True)
    best = torch.argmax(iou, dim=1)
    assert len(set(best.tolist())) > 1  # the candidates picked differ from prompt to prompt
    best_low, best_iou = segmenter.decode(0, points, labels, multimask=True, best_only=True)
    rows = torch.arange(len(points))
    torch.testing.assert_close(best_iou, iou[rows, best, None])
    torch.testing.assert_close(best_low, low[rows, best, None], rtol=0, atol=1e-5)
    k = int(torch.nonzero(best)[0, 0])  # a prompt whose best candidate is not the first
    prediction = segmenter.predict(points[k], multimask=True)
    assert prediction.score == pytest.approx(float(iou[k, best[k]]), abs=1e-5)
    np.testing.assert_allclose(prediction.low_res_logits, low[k, best[k], None], atol=1e-5)


def test_prepared_prompts_project_a_single_tile_image_once_and_set_image_does_not(
    tiny_sam, image, monkeypatch
):
    """Projecting the decoder tokens (tens of ms) happens in ``prepare_prompts`` (the
    widget's embedding worker), not at the first prompt and not for every image set (the
    widget sets every plane of a stack to embed them all); later prompts reuse them."""
    calls = []
    real = view_decoding.decoder_image
    monkeypatch.setattr(
        view_decoding, "decoder_image", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(image)
    assert len(segmenter.grid.tiles) == 1 and not calls
    segmenter.prepare_prompts()
    assert len(calls) == 1
    segmenter.predict(points_xy=np.array([[40.0, 50.0]]))
    segmenter.predict(box_xyxy=np.array([10.0, 10.0, 90.0, 80.0]))
    assert len(calls) == 1


def test_a_multichannel_image_is_normalised_through_to_sam_rgb(sensitive_sam, image):
    stack = np.stack([np.zeros_like(image), image.astype(np.uint16) * 100], axis=0)
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(stack, channel_axis=0, channels=[1])
    expected, _, _ = official(sensitive_sam, to_sam_rgb(stack, 0, [1]), True, **POINT)
    assert iou(segmenter.predict(**POINT).mask, expected) >= 0.99


def test_boxes_reaching_past_the_image_are_clipped(sensitive_sam, image):
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    beyond = segmenter.predict(box_xyxy=[-30, -40, 120, 150]).mask
    clipped = segmenter.predict(box_xyxy=[-0.5, -0.5, 120, 150]).mask
    np.testing.assert_array_equal(beyond, clipped)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"points_xy": [[260.0, 10.0]]}, r"points_xy\[0\] = \[260.0, 10.0\] lies outside"),
        ({"points_xy": [[10.0, 199.7]]}, r"-0.5 <= x <= 239.5 and -0.5 <= y <= 199.5"),
        ({"points_xy": [[10.0, 10.0, 1.0]]}, r"shape \(N, 2\)"),
        ({"points_xy": [[10.0, 10.0]], "point_labels": [2]}, "use 1 for positive"),
        ({"points_xy": [[10.0, 10.0]], "point_labels": [1, 0]}, "one label per point"),
        ({"box_xyxy": [50, 50, 10, 80]}, "min > max"),
        ({"box_xyxy": [300, 10, 400, 80]}, "outside the image"),
        ({"box_xyxy": [[1, 2, 3, 4], [1, 2, 3, 4]]}, r"one XYXY box of shape \(4,\)"),
        ({}, "needs a prompt"),
        ({"box_xyxy": [10, 10, 80, 80], "point_labels": [0]}, "given without points_xy"),
        ({"points_xy": [[10.0, 10.0]], "mask_input": np.zeros((256, 256))}, r"\(1, 64, 64\)"),
    ],
)
def test_bad_prompts_raise_clear_errors(tiny_sam, image, prompt, message):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(image)
    with pytest.raises(ValueError, match=message):
        segmenter.predict(**prompt)


def test_points_up_to_half_a_pixel_beyond_the_outermost_centres_are_inside(tiny_sam, image):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(image)
    for point in ([-0.5, -0.5], [239.5, 199.5], [239.4, 0.0]):
        assert segmenter.predict(points_xy=[point]).mask.shape == (200, 240)


def test_non_numeric_prompts_raise_type_errors(tiny_sam, image):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(image)
    with pytest.raises(TypeError, match="points_xy=.*is not numeric"):
        segmenter.predict(points_xy=[["a", "b"]])
    with pytest.raises(TypeError, match=r"multimask='no'; pass True, False or None"):
        segmenter.predict(points_xy=[[150, 100]], multimask="no")  # it was taken as True


def test_prompting_before_an_image_is_set_says_what_to_do(tiny_sam):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    with pytest.raises(RuntimeError, match="call Segmenter.set_image"):
        segmenter.predict(**POINT)


@pytest.mark.parametrize("path", ["cells.tif", Path("cells.tif")])
def test_a_file_name_given_as_the_image_says_to_read_it_first(tiny_sam, path):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    with pytest.raises(TypeError, match=r"'cells.tif', not its pixels.*tifffile.imread"):
        segmenter.set_image(path)  # it said 'image has shape ()'


def test_a_model_that_is_not_sam_is_rejected():
    with pytest.raises(TypeError, match="expected a segment_anything Sam model"):
        Segmenter(torch.nn.Linear(2, 2))


def test_a_prediction_carries_what_refinement_needs(tiny_sam, image):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(image)
    prediction = segmenter.predict(**BOX)
    assert isinstance(prediction, Prediction)
    assert prediction.low_res_logits.dtype == np.float32
    assert isinstance(prediction.score, float) and prediction.tile == 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])  # fp16: GPUs without bf16
def test_low_precision_embeddings_stay_close_to_fp32_and_are_cached_apart(
    sensitive_sam, image, tmp_path, precision
):
    fp32 = Segmenter(sensitive_sam, model_id="tiny", cache_dir=tmp_path, precision="fp32")
    low_seg = Segmenter(sensitive_sam, model_id="tiny", cache_dir=tmp_path, precision=precision)
    fp32.set_image(image)
    low_seg.set_image(image)
    reference, low = fp32.features(0).flatten(), low_seg.features(0).flatten()
    assert not torch.equal(reference, low)  # really a different path, not a cache hit
    assert torch.nn.functional.cosine_similarity(reference, low, dim=0) > 0.999
    assert len(list(tmp_path.rglob("*.pt"))) == 2


def test_fp16_masks_match_fp32(sensitive_sam, image):
    """fp16 embeddings (what "auto" picks on GPUs without bf16) give the fp32 masks."""
    fp32 = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    fp16 = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp16")
    assert fp16.compute_dtype is torch.float16
    fp32.set_image(image)
    fp16.set_image(image)
    for prompt in (BOX, POINT, BOX_AND_POINTS):
        mask, expected = fp16.predict(**prompt).mask, fp32.predict(**prompt).mask
        assert expected.any() and (mask & expected).sum() / (mask | expected).sum() > 0.98


def test_decoder_tokens_are_kept_for_a_few_tiles_only(tiny_sam):
    """Prompting all over a many-tile image keeps a bounded cache and the same answers."""
    from napari_samtune.core.view_decoding import DECODER_VIEWS_KEPT

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(900, 900), dtype=np.uint8)
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    assert len(segmenter.grid.tiles) > DECODER_VIEWS_KEPT
    points = [np.array([[x, y]], dtype=float) for x in (60, 450, 840) for y in (60, 450, 840)]
    first = [segmenter.predict(points_xy=p) for p in points]
    assert len({p.tile for p in first}) > DECODER_VIEWS_KEPT
    assert len(segmenter._decoder_images) <= DECODER_VIEWS_KEPT
    again = segmenter.predict(points_xy=points[0])  # its tile's tokens were dropped: remade
    np.testing.assert_array_equal(again.low_res_logits, first[0].low_res_logits)


def test_a_lone_click_takes_the_best_of_three_by_default(sensitive_sam, image):
    """As the widget and `samtune segment` do, so a script gets the masks they give."""
    segmenter = Segmenter(sensitive_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    best_of_three = segmenter.predict(**POINT, multimask=True).mask
    single = segmenter.predict(**POINT, multimask=False).mask
    assert iou(best_of_three, single) < 0.99  # the choice shows
    np.testing.assert_array_equal(segmenter.predict(**POINT).mask, best_of_three)
    both = segmenter.predict(**BOX_AND_POINTS)  # a box says which object: one candidate
    np.testing.assert_array_equal(
        both.mask, segmenter.predict(**BOX_AND_POINTS, multimask=False).mask
    )


def test_a_prediction_of_another_image_is_refused_as_mask_input(tiny_sam, image):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(make_image((700, 700), seed=3)[0])
    earlier = segmenter.predict(points_xy=[[600, 600]])
    segmenter.set_image(image)
    with pytest.raises(ValueError, match="mask_input is a Prediction of another image"):
        segmenter.predict(points_xy=[[100, 100]], mask_input=earlier)
    segmenter.predict(points_xy=[[100, 100]], mask_input=segmenter.predict(**POINT))  # its own


def test_segment_all_uses_the_settings_for_the_models_input_size(tiny_sam, image, monkeypatch):
    """SAM's thresholds keep no object of a nano-sized model: its defaults are looser."""
    from napari_samtune.core import automatic

    used = []
    monkeypatch.setattr(automatic, "segment_automatic", lambda s, config, p: used.append(config))
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(image)
    segmenter.segment_all()
    assert used == [automatic.default_auto_config(segmenter.img_size)]
    assert used[0] != automatic.AutoSegmentConfig()  # (tiny is nano-sized)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_an_image_without_a_finite_pixel_is_refused_not_embedded_black(tiny_sam, fill):
    """An all-NaN export was embedded as a black image, and prompts on it gave masks."""
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    with pytest.raises(ValueError, match=r"image holds no finite pixel value \(all NaN or inf"):
        segmenter.set_image(np.full((64, 80), fill, np.float32))
    with pytest.raises(RuntimeError, match="no image is set"):
        segmenter.predict(**POINT)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_an_image_without_pixels_is_named_empty_whatever_its_dtype(tiny_sam, dtype):
    """A float (0, W) image was said to hold "no finite pixel value (all NaN or infinite)"."""
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    with pytest.raises(ValueError, match=r"image is empty \(shape \(0, 80\)\)"):
        segmenter.set_image(np.zeros((0, 80), dtype))


def test_nan_pixels_among_finite_ones_are_embedded_as_black_without_warnings(tiny_sam, image):
    """NaN pixels (e.g. outside a registered region) take the low end of the finite pixels'
    range: the image embeds as its normalisation with those pixels black, quietly."""
    holed = image.astype(np.float32)
    holed[:40] = np.nan
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "invalid value encountered in cast"
        segmenter.set_image(holed)
        prediction = segmenter.predict(**POINT)
    features = segmenter.features(0)
    assert torch.isfinite(features).all() and np.isfinite(prediction.low_res_logits).all()
    expected = np.zeros((*holed.shape, 3), np.uint8)  # black where NaN
    expected[40:] = to_sam_rgb(holed[40:])  # the finite pixels, normalised on their own
    segmenter.set_image(expected)
    np.testing.assert_array_equal(segmenter.features(0), features)
