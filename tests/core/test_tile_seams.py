"""A point prompt near a seam between tiles: its tile (where the point was most central)
ends about an overlap's half past it, and an object lying across the seam was cut at that
tile's edge. Such masks are decoded again on a view centred on the prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_samtune.core.embeddings import Tile, TileGrid, TilingConfig, reaches_inner_edge
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter

SHAPE = (256, 1000)  # nano: 256 px tiles, 64 px overlap


def test_reaching_an_edge_inside_the_image_is_told_from_reaching_its_border():
    tile = Tile(0, 192, 256, 256, 256)  # inside a (256, 1000) image on the left and right
    logits = torch.full((64, 64), -5.0)
    logits[20:30, 20:30] = 5.0  # inside
    assert not reaches_inner_edge(tile, SHAPE, logits, 0.0)
    logits[0, 40] = 5.0  # its top edge is the image's border
    assert not reaches_inner_edge(tile, SHAPE, logits, 0.0)
    logits[40, 63] = 5.0  # its right edge is inside the image
    assert reaches_inner_edge(tile, SHAPE, logits, 0.0)
    assert not reaches_inner_edge(Tile(0, 744, 256, 256, 256), SHAPE, logits, 0.0)  # the last


@pytest.fixture(scope="module")
def seam_disc():
    """nano on an image with a disc of radius 60 across the seam of tiles 1 and 2, and
    the disc's centre, where a click falls 32 px from its tile's edge."""
    grid = TileGrid.for_image(SHAPE, 256, TilingConfig())
    first, second = grid.x_starts[1], grid.x_starts[2]
    centre_x = (second + first + 256) // 2  # the middle of their overlap
    rows, cols = np.ogrid[: SHAPE[0], : SHAPE[1]]
    disc = (rows - 128) ** 2 + (cols - centre_x) ** 2 <= 60**2
    image = ndimage.gaussian_filter(np.where(disc, 0.8, 0.1), 1.0)
    image = np.clip(image * 255 + np.random.default_rng(0).normal(0, 8, SHAPE), 0, 255)
    model = load_model("nano")
    segmenter = Segmenter(model.sam, model.model_id)
    segmenter.set_image(image.astype(np.uint8))
    return segmenter, disc, np.array([[centre_x, 128.0]]), len(grid.tiles)


def _iou(mask, truth) -> float:
    return (mask & truth).sum() / (mask | truth).sum()


def test_a_click_on_an_object_across_a_seam_gives_it_whole(seam_disc):
    segmenter, disc, point, n_tiles = seam_disc
    prediction = segmenter.predict(points_xy=point, point_labels=[1])
    assert prediction.tile >= n_tiles  # decoded again on a view made for it
    assert _iou(prediction.mask, disc) > 0.9  # cut at the tile's edge: 0.76
    labels = segmenter.predict_points_batched(point)
    assert _iou(labels == 1, disc) > 0.9


def test_many_points_across_seams_are_answered_after_one_round_of_embeddings():
    """Each point cut at a seam asked for a view of its own: with more than the Segmenter
    keeps (8), those embedded first were dropped again, and the panel's preview, embedding
    what each try asked for, went round without end (73 embeddings, no preview)."""
    from napari_samtune.core.made_views import EmbeddingNeeded

    grid = TileGrid.for_image((1000, 1000), 256, TilingConfig())
    seams = [(a + b + 256) // 2 for a, b in zip(grid.x_starts, grid.x_starts[1:], strict=False)]
    rows, cols = np.ogrid[:1000, :1000]
    image = np.full((1000, 1000), 30.0)
    points = np.array([[x, y] for y in seams for x in seams], dtype=float)  # 16 crossings
    for x, y in points:
        image[(rows - y) ** 2 + (cols - x) ** 2 <= 40**2] = 200
    image += np.random.default_rng(1).normal(0, 8, image.shape)
    model = load_model("nano")
    segmenter = Segmenter(model.sam, model.model_id, use_disk_cache=False)
    segmenter.set_image(np.clip(image, 0, 255).astype(np.uint8))
    embedded = []
    while len(embedded) < 3:  # as the annotation panel asks: embed what is needed, again
        try:
            with segmenter.no_encoder_passes():
                labels = segmenter.predict_points_batched(points)
            break
        except EmbeddingNeeded as needed:
            segmenter.embed_views(needed.views)
            embedded.append(len(needed.views))
    else:
        raise AssertionError(f"not answered after embedding {embedded} views in turn")
    assert len(embedded) == 1 and len(np.unique(labels)) - 1 == len(points)
