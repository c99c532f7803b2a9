"""Prompts that fit in no tile of a large image: answered on a view made for them, centred on
them, as SAM answers them on a crop around them (not on the coarse whole-image overview)."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamPredictor

from napari_samtune.core import made_views, view_decoding
from napari_samtune.core.embeddings import (
    OVERVIEW,
    Tile,
    TileGrid,
    TilingConfig,
    centred_view,
    tile_margin,
)
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.made_views import EmbeddingNeeded
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

SHAPE = (512, 700)  # tiny model: 256 px tiles, x from 0, 148, 296, 444; y from 0, 128, 256
ACROSS = np.array([120.0, 150.0, 300.0, 300.0])  # XYXY, 181 px wide: in no tile


def count_encoder_calls(sam) -> list[int]:
    calls = [0]
    sam.image_encoder.register_forward_hook(lambda m, i, o: calls.__setitem__(0, calls[0] + 1))
    return calls


def on_crop(sam, rgb: np.ndarray, tile: Tile, box_xyxy: np.ndarray) -> np.ndarray:
    """The official predictor's mask for a box on the crop ``tile`` of ``rgb``."""
    predictor = SamPredictor(sam)
    predictor.set_image(np.ascontiguousarray(tile.crop(rgb)))
    shifted = box_xyxy - np.array([tile.x0, tile.y0, tile.x0, tile.y0])
    masks, _, _ = predictor.predict(box=shifted, multimask_output=False)
    return masks[0]


def segmenter_for(sam, image, **kwargs) -> Segmenter:
    segmenter = Segmenter(sam, model_id="tiny", precision="fp32", **kwargs)
    segmenter.set_image(image)
    return segmenter


@pytest.fixture
def image():
    return make_image(SHAPE, seed=7)[0]


def test_a_view_for_a_small_prompt_is_a_full_resolution_tile_centred_on_it():
    view = centred_view(np.array([[600.0, 400.0], [700.0, 480.0]]), (1000, 1500), 256)
    assert (view.height, view.width, view.input_size) == (256, 256, (256, 256))
    assert abs(view.x0 + 127.5 - 650) <= 16 and abs(view.y0 + 127.5 - 440) <= 16  # 256 / 16
    assert view.x0 % 32 == view.y0 % 32 == 0
    assert tile_margin(view, (1000, 1500), [[600, 400], [700, 480]]) > 50


def test_a_view_keeps_inside_the_image_and_grows_with_a_large_prompt():
    at_border = centred_view(np.array([[0.0, 990.0], [50.0, 999.0]]), (1000, 1500), 256)
    assert (at_border.x0, at_border.y0 + at_border.height) == (0, 1000)
    large = centred_view(np.array([[100.0, 100.0], [499.0, 300.0]]), (1000, 1500), 256)
    assert large.height == large.width == 512  # 1.25 x the 400 px extent, to 64 px, downscaled
    assert large.input_size == (256, 256)
    grid = TileGrid.for_image((600, 700), 256, TilingConfig())
    assert centred_view(np.array([[10.0, 10.0], [650.0, 590.0]]), (600, 700), 256) == grid.overview


def test_a_box_across_tiles_is_answered_as_on_a_crop_centred_on_it(sensitive_sam, image):
    segmenter = segmenter_for(sensitive_sam, image, use_disk_cache=False)
    assert segmenter.grid.choose_tile(ACROSS.reshape(2, 2)) == OVERVIEW
    prediction = segmenter.predict(box_xyxy=ACROSS)
    assert prediction.tile >= len(segmenter.grid.tiles)  # a view made for it
    view = segmenter.view_tile(prediction.tile)
    assert (view.height, view.width) == (256, 256)  # full resolution, not the 2.7x overview
    expected = on_crop(sensitive_sam, to_sam_rgb(image), view, ACROSS)
    assert 0.02 < expected.mean() < 0.98
    inside = view.crop(prediction.mask)
    assert (inside & expected).sum() / (inside | expected).sum() >= 0.99
    assert prediction.mask.sum() == inside.sum()  # nothing outside the view


def test_prompts_inside_a_made_view_use_it_again(sensitive_sam, image):
    calls = count_encoder_calls(sensitive_sam)
    segmenter = segmenter_for(sensitive_sam, image, use_disk_cache=False)
    first = segmenter.predict(box_xyxy=ACROSS)
    passes = calls[0]
    inner = ACROSS + np.array([10.0, 10.0, -10.0, -10.0])  # still in no tile, inside the view
    assert segmenter.predict(box_xyxy=inner).tile == first.tile
    labels = segmenter.predict_boxes(np.stack([ACROSS, inner]))
    assert set(np.unique(labels)) == {0, 1, 2}
    assert calls[0] == passes


def test_without_encoder_passes_a_prompt_names_the_views_to_embed(sensitive_sam, image):
    calls = count_encoder_calls(sensitive_sam)
    segmenter = segmenter_for(sensitive_sam, image, use_disk_cache=False)
    passes = calls[0]
    other = np.array([400.0, 20.0, 560.0, 100.0])  # 161 px wide across x = 444 .. 551
    with segmenter.no_encoder_passes(), pytest.raises(EmbeddingNeeded) as needed:
        segmenter.predict_boxes(np.stack([ACROSS, other]))
    assert calls[0] == passes
    assert len(needed.value.views) == 2
    assert all(
        tile_margin(v, SHAPE, b.reshape(2, 2)) >= 0
        for v, b in zip(needed.value.views, (ACROSS, other), strict=True)
    )
    segmenter.embed_views(needed.value.views)
    assert calls[0] == passes + 2
    with segmenter.no_encoder_passes():
        held = segmenter.predict(box_xyxy=ACROSS)
    np.testing.assert_array_equal(held.mask, segmenter.predict(box_xyxy=ACROSS).mask)
    with segmenter.no_encoder_passes(), pytest.raises(EmbeddingNeeded) as whole:
        segmenter.predict(box_xyxy=np.array([5.0, 5.0, 690.0, 500.0]))
    assert whole.value.views == (segmenter.grid.overview,)
    assert calls[0] == passes + 2


def test_made_views_come_from_the_disk_cache_the_next_time(sensitive_sam, image, tmp_path):
    calls = count_encoder_calls(sensitive_sam)
    first = segmenter_for(sensitive_sam, image, cache_dir=tmp_path).predict(box_xyxy=ACROSS)
    passes = calls[0]
    again = segmenter_for(sensitive_sam, image, cache_dir=tmp_path).predict(box_xyxy=ACROSS)
    assert calls[0] == passes
    np.testing.assert_array_equal(again.mask, first.mask)


def test_a_made_view_dropped_from_memory_is_embedded_again(sensitive_sam, image, monkeypatch):
    monkeypatch.setattr(made_views, "MADE_VIEWS_KEPT", 1)
    monkeypatch.setattr(view_decoding, "DECODER_VIEWS_KEPT", 1)
    segmenter = segmenter_for(sensitive_sam, image, use_disk_cache=False)
    first = segmenter.predict(box_xyxy=ACROSS)
    other = segmenter.predict(box_xyxy=np.array([400.0, 20.0, 560.0, 100.0]))
    assert other.tile != first.tile
    np.testing.assert_array_equal(segmenter.predict(box_xyxy=ACROSS).mask, first.mask)


def test_a_refinement_leaving_a_made_view_uses_its_mask_reprojected(sensitive_sam, image):
    segmenter = segmenter_for(sensitive_sam, image, use_disk_cache=False)
    # the random model's masks reach every tile's edges: kept on the tile they choose
    segmenter.view_past_cut = lambda *args: None
    first = segmenter.predict([[120.0, 200.0], [320.0, 260.0]], [1, 1])  # 200 px apart in x
    assert first.tile >= len(segmenter.grid.tiles)
    click = {"points_xy": [[320.0, 260.0]], "point_labels": [1]}
    refined = segmenter.predict(**click, mask_input=first, multimask=False)
    assert refined.tile < len(segmenter.grid.tiles)
    plain = segmenter.predict(**click, multimask=False)
    assert not np.array_equal(refined.low_res_logits, plain.low_res_logits)


def test_more_boxes_in_no_tile_than_views_kept_are_answered_after_one_embedding(tiny_sam):
    """12 boxes that fit in no tile: embedding their 12 views kept only the last 8, so the
    next try asked for the first 4 again, and so on: the annotation panel, embedding what
    each try asked for, went round without end."""
    image = make_image((1000, 1000), seed=2)[0]
    segmenter = segmenter_for(tiny_sam, image, use_disk_cache=False)
    corners = [(x, y) for y in (100, 290, 480) for x in (100, 290, 480, 660)]  # across seams
    boxes = np.array([[x, y, x + 180, y + 180] for x, y in corners], dtype=float)
    assert all(segmenter.view_for(b.reshape(2, 2)) >= len(segmenter.grid.tiles) for b in boxes)
    asked = []
    while len(asked) < 3:  # as the annotation panel asks: embed what is needed, again
        try:
            with segmenter.no_encoder_passes():
                segmenter.predict_boxes(boxes)
            break
        except EmbeddingNeeded as needed:
            asked.append(len(needed.views))
            segmenter.embed_views(needed.views)
    assert asked == [12]
