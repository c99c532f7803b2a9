"""``Segmenter.set_image(..., embed=False)``: a large image's tiles are embedded when a prompt
first needs them, so a few prompts cost the tiles they are in, not the whole image, with the
same masks as embedding every tile first."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tifffile
import torch

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core import view_predictor
from napari_samtune.core.made_views import EmbeddingNeeded
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

SHAPE = (512, 700)  # tiny model: 256 px tiles, x from 0, 148, 296, 444; y from 0, 128, 256
IN_FIRST_TILE = np.array([[20.0, 30.0, 90.0, 100.0]])  # XYXY, inside tile 0 only
IN_LAST_TILE = np.array([[600.0, 400.0, 680.0, 490.0]])


@pytest.fixture
def image():
    return make_image(SHAPE, seed=3)[0]


@pytest.fixture
def embedded_tiles(monkeypatch) -> list[int]:
    """How many tiles or views the image encoder embedded, over all calls."""
    counted = [0]
    real = view_predictor.embed_tiles

    def counting(model, rgb, tiles, *args, **kwargs):
        counted[0] += len(tiles)
        return real(model, rgb, tiles, *args, **kwargs)

    monkeypatch.setattr(view_predictor, "embed_tiles", counting)
    return counted


def segmenter(sam, **kwargs) -> Segmenter:
    return Segmenter(sam, model_id="tiny", precision="fp32", **kwargs)


def test_boxes_in_one_tile_embed_that_tile_only_with_the_masks_of_all_tiles(
    tiny_sam, image, embedded_tiles
):
    eager = segmenter(tiny_sam, use_disk_cache=False)
    eager.set_image(image)
    n_tiles = len(eager.grid.tiles)
    expected = eager.predict_boxes(IN_FIRST_TILE)
    assert embedded_tiles[0] == n_tiles == 12

    lazy = segmenter(tiny_sam, use_disk_cache=False)
    lazy.set_image(image, embed=False)
    assert embedded_tiles[0] == n_tiles  # nothing yet
    labels = lazy.predict_boxes(IN_FIRST_TILE)
    assert embedded_tiles[0] == n_tiles + 1
    np.testing.assert_array_equal(labels, expected)
    assert labels.max() == 1
    lazy.predict_boxes(IN_FIRST_TILE)  # kept in memory
    assert embedded_tiles[0] == n_tiles + 1


def test_inside_no_encoder_passes_a_tile_left_is_named_and_embed_views_embeds_it(
    tiny_sam, image, embedded_tiles
):
    lazy = segmenter(tiny_sam, use_disk_cache=False)
    lazy.set_image(image, embed=False)
    with lazy.no_encoder_passes(), pytest.raises(EmbeddingNeeded) as needed:
        lazy.predict_boxes(IN_LAST_TILE)
    (tile,) = needed.value.views
    assert tile == lazy.grid.tiles[-1]
    lazy.embed_views(needed.value.views)
    assert embedded_tiles[0] == 1
    with lazy.no_encoder_passes():
        assert lazy.predict_boxes(IN_LAST_TILE).max() == 1


def test_tiles_embedded_one_at_a_time_are_cached_on_disk(tiny_sam, image, embedded_tiles):
    first = segmenter(tiny_sam)
    first.set_image(image, embed=False)
    expected = first.predict_boxes(IN_LAST_TILE)
    again = segmenter(tiny_sam)
    again.set_image(image, embed=False)
    np.testing.assert_array_equal(again.predict_boxes(IN_LAST_TILE), expected)
    assert embedded_tiles[0] == 1


def test_an_image_embedded_whole_before_is_read_whole_from_the_cache(
    tiny_sam, image, embedded_tiles
):
    segmenter(tiny_sam).set_image(image)
    n_tiles = embedded_tiles[0]
    lazy = segmenter(tiny_sam)
    lazy.set_image(image, embed=False)
    lazy.predict_boxes(np.vstack([IN_FIRST_TILE, IN_LAST_TILE]))
    assert embedded_tiles[0] == n_tiles


def test_a_single_tile_image_shares_its_cache_entry_either_way(tiny_sam, embedded_tiles):
    small = make_image((200, 240), seed=1)[0]
    lazy = segmenter(tiny_sam)
    lazy.set_image(small, embed=False)
    lazy.predict_boxes([[10, 10, 60, 70]])
    assert embedded_tiles[0] == 1
    segmenter(tiny_sam).set_image(small)  # read from the entry the lazy one wrote
    assert embedded_tiles[0] == 1


def test_the_same_image_set_again_to_embed_embeds_every_tile(tiny_sam, image, embedded_tiles):
    seg = segmenter(tiny_sam, use_disk_cache=False)
    seg.set_image(image, embed=False)
    seg.set_image(image)
    assert embedded_tiles[0] == len(seg.grid.tiles)
    seg.predict_boxes(IN_LAST_TILE)
    assert embedded_tiles[0] == len(seg.grid.tiles)


def test_samtune_segment_embeds_only_the_tiles_its_prompts_are_in(
    tmp_path, monkeypatch, tiny_sam, tiny_checkpoint, image, embedded_tiles
):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("segment",))
    tifffile.imwrite(tmp_path / "big.tif", image)
    (tmp_path / "boxes.csv").write_text("x_min,y_min,x_max,y_max\n20,30,90,100\n30,40,80,90\n")
    (tmp_path / "points.csv").write_text("x,y,label\n650,450,1\n600,420,0\n40,60,1\n")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "big.tif"), "--model", str(tiny_checkpoint)]
    args += ["--device", "cpu", "--no-progress"]
    assert main([*args, "--boxes", str(tmp_path / "boxes.csv"), "-o", str(out / "b.tif")]) == 0
    assert embedded_tiles[0] == 1
    assert main([*args, "--points", str(tmp_path / "points.csv"), "-o", str(out / "p.tif")]) == 0
    # the point at (650, 450) with the negative (600, 420): the last tile; (40, 60) without
    # it (far away, in another tile): the first tile, embedded (and cached) for the boxes;
    # with it, a view made for both was embedded too, downscaled
    assert embedded_tiles[0] == 2

    # the precision samtune segment takes: "auto" (bf16 where the CPU runs it faster)
    reference = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    reference.set_image(image)
    boxes = np.array([[20.0, 30, 90, 100], [30, 40, 80, 90]])
    np.testing.assert_array_equal(tifffile.imread(out / "b.tif"), reference.predict_boxes(boxes))
    by_points = reference.predict_with_negatives(
        np.zeros((0, 4)), np.array([[650.0, 450], [40, 60]]), np.array([[600.0, 420]])
    )
    expected = np.zeros_like(by_points)
    expected[by_points == 1], expected[by_points == 2] = 1, 3  # ids: the rows' numbers
    np.testing.assert_array_equal(tifffile.imread(out / "p.tif"), expected)


def test_embedding_whole_reads_the_tiles_embedded_one_at_a_time_before(
    tiny_sam, image, embedded_tiles
):
    """A later set_image of the whole image (the annotation widget, after `samtune segment
    --boxes`) embedded every tile again; now the tiles cached one at a time are read, the
    others embedded, with the embeddings of a whole embedding."""
    lazy = segmenter(tiny_sam)
    lazy.set_image(image, embed=False)
    lazy.predict_boxes(np.vstack([IN_FIRST_TILE, IN_LAST_TILE]))
    assert embedded_tiles[0] == 2
    whole = segmenter(tiny_sam)
    whole.set_image(image)
    n_tiles = len(whole.grid.tiles)
    assert embedded_tiles[0] == n_tiles  # the other tiles only
    reference = segmenter(tiny_sam, use_disk_cache=False)
    reference.set_image(image)
    for view in range(n_tiles):
        torch.testing.assert_close(whole.features(view), reference.features(view))
    segmenter(tiny_sam).set_image(image)  # cached whole now
    assert embedded_tiles[0] == n_tiles + n_tiles  # the reference's own, no more


def test_the_tiles_own_entries_go_once_the_whole_image_is_cached(tiny_sam, image, embedded_tiles):
    """The tiles embedded one at a time were kept in the cache beside the whole image's
    entry, which holds them too: twice the space until evicted."""
    lazy = segmenter(tiny_sam)
    lazy.set_image(image, embed=False)
    lazy.predict_boxes(np.vstack([IN_FIRST_TILE, IN_LAST_TILE]))
    cache = lazy.cache
    tile_sizes = sorted(size for _, size, _ in cache.entries())
    assert len(tile_sizes) == 2
    whole = segmenter(tiny_sam)
    whole.set_image(image)
    (entry,) = cache.entries()  # the whole image's only
    assert entry[1] > 2 * tile_sizes[-1]
    again = segmenter(tiny_sam)
    again.set_image(image, embed=False)  # reads the whole entry: nothing embedded
    again.predict_boxes(IN_LAST_TILE)
    assert embedded_tiles[0] == len(whole.grid.tiles)


def test_a_tile_entry_that_cannot_be_deleted_stays(tiny_sam, image, monkeypatch):
    lazy = segmenter(tiny_sam)
    lazy.set_image(image, embed=False)
    lazy.predict_boxes(IN_FIRST_TILE)
    ((_, _, tile_path),) = lazy.cache.entries()
    real_unlink = pathlib.Path.unlink

    def unlink(path, *args, **kwargs):
        if path == tile_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    whole = segmenter(tiny_sam)
    whole.set_image(image)  # the whole entry is written all the same, without a word
    assert tile_path in [path for _, _, path in lazy.cache.entries()]
    assert len(lazy.cache.entries()) == 2
