"""Tiling geometry, tile embeddings and the on-disk embedding cache."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from napari_samtune.core.embedding_cache import EmbeddingCache, default_cache_dir
from napari_samtune.core.embeddings import (
    OVERVIEW,
    TileGrid,
    TilingConfig,
    embed_view,
    encoder_pixels,
)
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image


def count_encoder_calls(sam) -> list[int]:
    """Attach a forward hook; the returned one-element list counts encoder passes."""
    calls = [0]

    def hook(module, inputs, output):
        calls[0] += inputs[0].shape[0]

    sam.image_encoder.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("shape", [(256, 256), (256, 100), (37, 256), (1, 1)])
def test_encoder_pixels_are_sams_preprocessing_channels_last(tiny_sam, shape):
    """One multiply-add into a zero-padded channels-last map: SAM's own normalisation and
    padding of a channels-first copy, up to float32 rounding."""
    size = tiny_sam.image_encoder.img_size
    crop = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    stock = torch.as_tensor(crop).permute(2, 0, 1).contiguous()[None]
    with torch.inference_mode():
        expected = tiny_sam.preprocess(stock)
        pixels = encoder_pixels(tiny_sam, crop)
    assert pixels.shape == (1, 3, size, size) and pixels.dtype == torch.float32
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(pixels, expected, rtol=1e-6, atol=1e-6)
    assert not pixels[..., shape[0] :, :].any() and not pixels[..., shape[1] :].any()


@pytest.mark.parametrize("shape", [(256, 256), (256, 100)])
def test_a_view_reaches_the_vit_blocks_as_a_contiguous_token_map(tiny_sam, shape):
    """The patch embedding's (B, H, W, C) tokens are contiguous, for a full-size crop too
    (whose pixels are a view of the crop with a batch stride the convolution misread as
    channels-first): every residual add and layer norm then reads contiguous memory."""
    tokens = []
    tiny_sam.image_encoder.patch_embed.register_forward_hook(lambda m, i, out: tokens.append(out))
    crop = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    grid = TileGrid.for_image(shape, tiny_sam.image_encoder.img_size, TilingConfig())
    embed_view(tiny_sam, crop, grid.tiles[0])
    assert tokens[0].shape[-1] == tiny_sam.image_encoder.patch_embed.proj.out_channels
    assert tokens[0].is_contiguous()


@pytest.mark.parametrize("length", [257, 300, 449, 512, 700, 1000])
@pytest.mark.parametrize("overlap_fraction", [0.0, 0.25, 0.5])
def test_tiles_cover_the_image_with_at_least_the_requested_overlap(length, overlap_fraction):
    grid = TileGrid.for_image((100, length), 256, TilingConfig(overlap_fraction))
    starts = np.array(grid.x_starts)
    overlap = round(overlap_fraction * 256)
    assert starts[0] == 0 and starts[-1] + 256 == length
    assert np.all(starts[:-1] + 256 - starts[1:] >= overlap)  # neighbours overlap enough
    assert np.all(np.diff(starts) > 0)
    assert grid.y_starts == (0,) and all(t.height == 100 and t.width == 256 for t in grid.tiles)
    assert grid.is_tiled


def test_small_images_are_one_untiled_view():
    grid = TileGrid.for_image((200, 256), 256, TilingConfig())
    assert not grid.is_tiled
    assert grid.tiles[0] == grid.overview
    assert grid.tiles[0].input_size == (200, 256)


def test_inner_regions_partition_the_image_and_keep_half_the_overlap():
    grid = TileGrid.for_image((600, 700), 256, TilingConfig(0.25))
    rows, cols = np.mgrid[0:600, 0:700]
    owners = np.zeros((600, 700), dtype=int)
    for i, tile in enumerate(grid.tiles):
        y_lo, y_hi, x_lo, x_hi = grid.inner_bounds(i)
        owned = (rows >= y_lo) & (rows < y_hi) & (cols >= x_lo) & (cols < x_hi)
        owners += owned
        # an interior border of the inner region is at least half the overlap from the tile edge
        owned_rows, owned_cols = np.nonzero(owned)
        if tile.x0 + tile.width < 700:
            assert tile.x0 + tile.width - 1 - owned_cols.max() >= 32 - 1
        if tile.x0 > 0:
            assert owned_cols.min() - tile.x0 >= 32 - 1
        assert owned_rows.min() >= tile.y0 and owned_rows.max() < tile.y0 + tile.height
    assert np.all(owners == 1)


def test_a_point_is_answered_in_the_tile_where_it_is_most_central():
    grid = TileGrid.for_image((256, 448), 256, TilingConfig(0.25))  # x starts 0 and 192
    assert grid.x_starts == (0, 192)
    assert grid.choose_tile([[100, 50]]) == 0  # only tile 0 has it
    assert grid.choose_tile([[400, 50]]) == 1
    assert grid.choose_tile([[200, 50]]) == 0  # 55 px from tile 0's edge, 8 from tile 1's
    assert grid.choose_tile([[250, 50]]) == 1  # 5 px from tile 0's edge, 58 from tile 1's


def test_a_box_goes_to_the_tile_containing_it_and_a_huge_box_to_the_overview():
    grid = TileGrid.for_image((256, 448), 256, TilingConfig(0.25))
    assert grid.choose_tile(np.reshape([200, 10, 250, 60], (2, 2))) == 1
    assert grid.choose_tile(np.reshape([195, 10, 240, 60], (2, 2))) == 0  # more margin in 0
    assert grid.choose_tile(np.reshape([20, 10, 400, 60], (2, 2))) == OVERVIEW


def test_tiling_config_rejects_an_overlap_that_never_ends():
    with pytest.raises(ValueError, match="overlap_fraction=0.9"):
        TilingConfig(0.9)


def test_input_frame_mapping_is_sams_and_invertible():
    grid = TileGrid.for_image((300, 500), 256, TilingConfig())
    for tile in (grid.overview, grid.tiles[-1]):
        coords = np.array([[10.0, 20.0], [480.0, 290.0]])
        inside = coords - (tile.x0, tile.y0)
        expected = ResizeLongestSide(256).apply_coords(inside, (tile.height, tile.width))
        np.testing.assert_allclose(tile.to_input_frame(coords), expected)
        np.testing.assert_allclose(tile.from_input_frame(tile.to_input_frame(coords)), coords)


def test_every_tile_is_embedded_at_full_resolution(tiny_sam):
    image, _ = make_image((300, 500), seed=1)
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False, precision="fp32")
    segmenter.set_image(image)
    rgb = to_sam_rgb(image)
    predictor = SamPredictor(tiny_sam)
    for i, tile in enumerate(segmenter.grid.tiles):
        predictor.set_image(np.ascontiguousarray(tile.crop(rgb)))
        torch.testing.assert_close(
            segmenter.features(i), predictor.get_image_embedding(), rtol=1e-4, atol=1e-5
        )


def test_a_second_segmenter_on_the_same_image_loads_the_cache(tiny_sam, tmp_path):
    image, _ = make_image((300, 400), seed=2)
    calls = count_encoder_calls(tiny_sam)
    first = Segmenter(tiny_sam, model_id="tiny-a", cache_dir=tmp_path)
    first.set_image(image)
    n_tiles = len(first.grid.tiles)
    assert n_tiles > 1 and calls[0] == n_tiles
    second = Segmenter(tiny_sam, model_id="tiny-a", cache_dir=tmp_path)
    progress = []
    second.set_image(image, progress=lambda done, total: progress.append((done, total)))
    assert calls[0] == n_tiles  # no encoder pass
    assert progress == [(n_tiles, n_tiles)]
    torch.testing.assert_close(second.features(1), first.features(1))
    first.set_image(image)  # the same image on the same segmenter: nothing at all to do
    assert calls[0] == n_tiles


def test_a_different_model_id_or_image_misses_the_cache(tiny_sam, tmp_path):
    image, _ = make_image((200, 200), seed=3)
    calls = count_encoder_calls(tiny_sam)
    Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path).set_image(image)
    Segmenter(tiny_sam, model_id="b", cache_dir=tmp_path).set_image(image)
    assert calls[0] == 2
    changed = image.copy()
    changed[0, 0] ^= 1
    Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path).set_image(changed)
    assert calls[0] == 3
    Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path).set_image(image)
    assert calls[0] == 3
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_different_tiling_misses_the_cache(tiny_sam, tmp_path):
    image, _ = make_image((200, 400), seed=3)
    calls = count_encoder_calls(tiny_sam)
    Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path).set_image(image)
    before = calls[0]
    tiling = TilingConfig(overlap_fraction=0.5)
    Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path, tiling=tiling).set_image(image)
    assert calls[0] > before


def test_without_model_id_the_weights_are_hashed(tiny_sam, tmp_path):
    image, _ = make_image((128, 128), seed=4)
    calls = count_encoder_calls(tiny_sam)
    Segmenter(tiny_sam, cache_dir=tmp_path).set_image(image)
    twin = copy.deepcopy(tiny_sam)  # same weights, another object: a hit
    Segmenter(twin, cache_dir=tmp_path).set_image(image)
    assert calls[0] == 1
    with torch.no_grad():
        twin.image_encoder.neck[0].weight.mul_(1.01)
    twin_calls = count_encoder_calls(twin)
    Segmenter(twin, cache_dir=tmp_path).set_image(image)
    assert twin_calls[0] == 1  # changed weights: recomputed


def test_a_corrupt_cache_file_is_ignored_and_recomputed(tiny_sam, tmp_path):
    image, _ = make_image((128, 128), seed=5)
    reference = Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path)
    reference.set_image(image)
    (cache_file,) = tmp_path.glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    calls = count_encoder_calls(tiny_sam)
    again = Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="corrupt embedding cache"):
        again.set_image(image)
    assert calls[0] == 1
    torch.testing.assert_close(again.features(0), reference.features(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is good again
        Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path).set_image(image)
    assert calls[0] == 1


def test_a_cache_file_with_wrong_shape_is_a_miss(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.save("k", torch.zeros(2, 4, 3, 3))
    assert cache.load("k", (2, 4, 3, 3)).shape == (2, 4, 3, 3)
    with pytest.warns(RuntimeWarning, match="unexpected content"):
        assert cache.load("k", (1, 4, 3, 3)) is None
    assert cache.load("missing", (1,)) is None


def test_an_unwritable_cache_only_warns(tiny_sam, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    segmenter = Segmenter(tiny_sam, model_id="a", cache_dir=blocker / "sub")
    with pytest.warns(RuntimeWarning, match="could not write the embedding cache"):
        segmenter.set_image(make_image((64, 64), seed=0)[0])
    assert segmenter.features(0).shape == (1, 32, 16, 16)


def test_the_default_cache_lives_under_the_samtune_cache_dir(tiny_sam, monkeypatch, tmp_path):
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "embeddings"
    Segmenter(tiny_sam, model_id="a").set_image(make_image((64, 64), seed=0)[0])
    assert len(list((tmp_path / "c" / "embeddings").glob("*.pt"))) == 1


def test_the_overview_is_embedded_on_demand_once_and_cached(tiny_sam, tmp_path):
    image, _ = make_image((256, 448), seed=6)
    calls = count_encoder_calls(tiny_sam)
    segmenter = Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path, precision="fp32")
    segmenter.set_image(image)
    assert calls[0] == 2
    overview = segmenter.features(OVERVIEW)
    segmenter.features(OVERVIEW)
    assert calls[0] == 3
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(to_sam_rgb(image))
    torch.testing.assert_close(overview, predictor.get_image_embedding(), rtol=1e-4, atol=1e-5)
    assert calls[0] == 4  # the predictor's own pass
    other = Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path, precision="fp32")
    other.set_image(image)
    other.features(OVERVIEW)
    assert calls[0] == 4  # tiles and overview both came from the cache


def test_the_hashed_model_id_is_the_one_load_model_gives_the_same_weights(
    tiny_sam, tiny_checkpoint
):
    from napari_samtune.core.models import load_model

    assert Segmenter(tiny_sam).model_id == load_model(tiny_checkpoint).model_id


def test_an_rgb_array_changed_after_set_image_does_not_leak_into_its_overview(tiny_sam, tmp_path):
    rng = np.random.default_rng(7)
    first, second = (rng.integers(0, 256, (256, 448, 3), dtype=np.uint8) for _ in range(2))
    buffer = first.copy()  # uint8 RGB: the normalised image can be the caller's own array
    segmenter = Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path, precision="fp32")
    segmenter.set_image(buffer)
    buffer[:] = second  # the caller reuses its array for the next frame
    overview = segmenter.features(OVERVIEW)
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(first)
    torch.testing.assert_close(overview, predictor.get_image_embedding(), rtol=1e-4, atol=1e-5)
    reopened = Segmenter(tiny_sam, model_id="a", cache_dir=tmp_path, precision="fp32")
    reopened.set_image(first)
    torch.testing.assert_close(reopened.features(OVERVIEW), overview)  # cached for `first`
