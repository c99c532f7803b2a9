"""Automatic segmentation: filtering, suppression, tile stitching and painting.

Most tests replace the mask decoder by an oracle that answers a point with the
ground-truth object under it (plus decoys that the filters must reject), so the
expected result is known exactly; one test runs the real tiny model end to end.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_samtune.core.automatic import (
    AutoSegmentConfig,
    Candidates,
    filter_candidates,
    nms,
    owned_by_tile,
    paint,
    rasterise,
)
from napari_samtune.core.embeddings import TileGrid, TilingConfig
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

CONFIG = AutoSegmentConfig(points_per_side=16, points_per_batch=50)


def disks(shape: tuple[int, int], objects: list[tuple[float, float, float]]) -> np.ndarray:
    """uint32 labels with one disk per (x, y, radius), ids 1..N."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels = np.zeros(shape, dtype=np.uint32)
    for object_id, (x, y, radius) in enumerate(objects, start=1):
        labels[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = object_id
    return labels


def lowres_labels(segmenter: Segmenter, view: int, truth: np.ndarray) -> np.ndarray:
    """Ground truth sampled at the centres of a tile's low-res logit pixels (0 outside it)."""
    tile = segmenter.grid.view(view)
    side = tile.lowres_size
    centres = (np.arange(side) + 0.5) * (tile.img_size / side) - 0.5
    image_xy = np.rint(tile.from_input_frame(np.stack([centres, centres], axis=1))).astype(int)
    xs, ys = image_xy[:, 0], image_xy[:, 1]
    inside = (ys[:, None] >= tile.y0) & (ys[:, None] < tile.y0 + tile.height)
    inside = inside & (xs[None] >= tile.x0) & (xs[None] < tile.x0 + tile.width)
    sampled = truth[np.clip(ys, 0, truth.shape[0] - 1)][:, np.clip(xs, 0, truth.shape[1] - 1)]
    return np.where(inside, sampled, 0)


def install_oracle(segmenter: Segmenter, truth: np.ndarray, tile_scores=(0.95, 0.97)) -> None:
    """Replace ``segmenter.decode``: each point gets three candidates:

    0. the object under the point, clipped to the tile (confident, stable; its
       predicted IoU depends on the tile), or the background (predicted IoU 0.5);
    1. the whole tile, predicted IoU 0.6 (the IoU filter must reject it);
    2. the object grown by 16 pixels with logits of +-0.5, predicted IoU 0.99
       (only the stability filter rejects it).
    """

    def decode(
        view,
        points_xy,
        point_labels,
        boxes_xyxy=None,
        mask_input=None,
        multimask=False,
        min_iou=None,
    ):
        assert multimask and boxes_xyxy is None and mask_input is None
        tile_truth = lowres_labels(segmenter, view, truth)
        logits, scores = [], []
        for x, y in np.asarray(points_xy)[:, 0]:
            object_id = truth[int(round(y)), int(round(x))]
            mask = tile_truth == object_id
            grown = ndimage.binary_dilation(mask, iterations=4)
            logits.append(
                [np.where(mask, 10.0, -10.0), np.full(mask.shape, 10.0), np.where(grown, 0.5, -0.5)]
            )
            scores.append([tile_scores[view] if object_id else 0.5, 0.6, 0.99])
        logits, scores = torch.tensor(np.array(logits), dtype=torch.float32), torch.tensor(scores)
        rows = slice(None) if min_iou is None else (scores >= min_iou).any(dim=1)
        return logits[rows], scores[rows]

    segmenter.decode = decode


def match(labels: np.ndarray, truth: np.ndarray) -> list[float]:
    """For each true object, the best IoU of a predicted object; also checks no extras."""
    best = []
    for object_id in range(1, int(truth.max()) + 1):
        true_mask = truth == object_id
        ids, counts = np.unique(labels[true_mask], return_counts=True)
        candidate = ids[np.argmax(np.where(ids > 0, counts, -1))]
        predicted = labels == candidate
        best.append((true_mask & predicted).sum() / (true_mask | predicted).sum())
    assert labels.max() == truth.max(), "a different number of objects than in the truth"
    return best


@pytest.fixture
def segmenter_for(tiny_sam):
    def make(truth: np.ndarray) -> Segmenter:
        segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
        segmenter.set_image(make_image(truth.shape, seed=0)[0])
        install_oracle(segmenter, truth)
        return segmenter

    return make


def test_the_oracles_objects_come_back_and_the_decoys_do_not(segmenter_for):
    truth = disks((256, 256), [(60, 60, 16), (180, 70, 20), (120, 190, 18), (205, 205, 15)])
    labels = segmenter_for(truth).segment_all(CONFIG)
    assert labels.dtype == np.uint32 and labels.shape == truth.shape
    assert min(match(labels, truth)) > 0.85
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}


def test_objects_crossing_tile_borders_come_out_once_and_whole(segmenter_for):
    objects = [
        (224, 128, 20),  # on the boundary of the inner regions, whole in both tiles
        (200, 60, 22),  # whole in the left tile, cut by the right tile's edge (x = 192)
        (250, 200, 22),  # whole in the right tile, cut by the left tile's edge (x = 255)
        (80, 180, 20),
        (380, 60, 20),
    ]
    truth = disks((256, 448), objects)
    segmenter = segmenter_for(truth)
    assert segmenter.grid.x_starts == (0, 192)
    labels = segmenter.segment_all(CONFIG)
    assert min(match(labels, truth)) > 0.85


def test_filters_keep_only_confident_stable_non_empty_masks():
    grid = TileGrid.for_image((256, 448), 256, TilingConfig())
    tile = grid.tiles[1]  # x0 = 192
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:24, 8:12] = True
    confident = np.where(mask, 8.0, -8.0)
    logits = torch.tensor(
        np.array([confident, confident, np.where(mask, 0.5, -0.5), np.full((64, 64), -8.0)]),
        dtype=torch.float32,
    )
    scores = torch.tensor([0.9, 0.5, 0.99, 0.99])
    kept = filter_candidates(tile, 1, logits, scores, AutoSegmentConfig(pred_iou_thresh=0.8))
    assert len(kept) == 1 and kept.scores.tolist() == [pytest.approx(0.9)]
    assert kept.views.tolist() == [1]
    # low-res columns 8..11 are input columns 32..47, image columns 224..239; rows 80..95
    assert kept.boxes.tolist() == [[224.0, 80.0, 239.0, 95.0]]


def test_each_centre_is_owned_by_a_tile_and_those_by_the_boundary_by_both():
    grid = TileGrid.for_image((256, 448), 256, TilingConfig())
    centres = np.array(
        [[10.0, 5.0], [220.0, 100.0], [223.0, 100.0], [224.0, 100.0], [240.0, 7.0], [440.0, 250.0]]
    )
    boxes = torch.tensor(np.concatenate([centres - 3, centres + 3], axis=1), dtype=torch.float32)
    candidates = Candidates(
        torch.zeros(6, dtype=torch.int64), torch.zeros(6, 4, 4), torch.ones(6), boxes
    )
    left = owned_by_tile(candidates, grid, 0).boxes[:, 0] + 3
    right = owned_by_tile(candidates, grid, 1).boxes[:, 0] + 3
    assert left.tolist() == [10.0, 220.0, 223.0, 224.0]  # the inner boundary is x = 223.5
    assert right.tolist() == [223.0, 224.0, 240.0, 440.0]


def test_an_object_on_the_boundary_found_a_pixel_off_by_each_tile_is_kept_once():
    """Each tile's box of the same cell had its centre half a pixel on the other tile's
    side of the boundary, and neither kept it: the cell was missing from the labels."""
    grid = TileGrid.for_image((256, 448), 256, TilingConfig())
    boxes = torch.tensor([[210.0, 90.0, 238.0, 118.0], [209.0, 90.0, 237.0, 118.0]])  # x 224, 223
    candidates = Candidates(
        torch.tensor([0, 1]), torch.zeros(2, 4, 4), torch.tensor([0.9, 0.95]), boxes
    )
    parts = [owned_by_tile(candidates.select(candidates.views == v), grid, v) for v in (0, 1)]
    kept = nms(Candidates.concat(parts), AutoSegmentConfig().box_nms_thresh)
    assert len(kept) == 1 and kept.views.tolist() == [1]  # the better one


def test_painting_drops_small_and_mostly_covered_objects():
    square = np.ones((10, 10), dtype=bool)
    masks = [
        (0, 0, square),  # id 1
        (0, 6, square),  # 40 % covered by the first: kept, gets its 60 free pixels
        (0, 2, square),  # 80 % covered: dropped
        (30, 30, np.ones((4, 4), dtype=bool)),  # 16 px < min_area: dropped
        (20, 0, np.zeros((0, 0), dtype=bool)),  # empty
        (40, 40, square),  # id 3: ids stay consecutive
    ]
    labels = paint((60, 60), masks, AutoSegmentConfig(min_area=20, max_overlap=0.5))
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels == 1).sum() == 100 and (labels == 2).sum() == 60
    assert np.all(labels[40:50, 40:50] == 3) and not labels[30:34, 30:34].any()


def test_an_object_keeps_no_specks_of_its_mask_around_better_objects():
    """What a mask kept around better objects painted first came out in pieces: specks
    far from its body, which stretched its box (training boxes) up to 5x."""
    first = np.zeros((20, 60), dtype=bool)
    first[:, 2:38] = True  # a better object, painted first
    second = np.ones((20, 60), dtype=bool)  # its free pixels: cols 0-1 (40 px), 38-59 (440)
    config = AutoSegmentConfig(min_area=50, max_overlap=0.7)
    labels = paint((20, 60), [(0, 0, first), (0, 0, second)], config)
    assert (labels == 1).sum() == 720
    assert not labels[:, :2].any()  # the 40 px strip beyond the first: dropped
    assert (labels[:, 38:] == 2).all() and (labels == 2).sum() == 440
    assert AutoSegmentConfig().min_area > 1  # on by default


@pytest.mark.parametrize("field", ["points_per_side", "box_nms_thresh", "max_overlap", "min_area"])
def test_config_rejects_impossible_values(field):
    with pytest.raises(ValueError, match=f"{field}=-1"):
        AutoSegmentConfig(**{field: -1})


@pytest.mark.parametrize(
    ("field", "value", "error", "rule"),
    [
        ("points_per_side", 8.5, TypeError, "use a positive integer"),
        ("points_per_side", "8", TypeError, "use a positive integer"),
        ("points_per_side", True, TypeError, "use a positive integer"),
        ("points_per_batch", 0, ValueError, "use a positive integer"),
        ("points_per_batch", 64.0, TypeError, "use a positive integer"),
        ("min_area", 2.5, TypeError, "use a whole number >= 0"),
        ("min_area", False, TypeError, "use a whole number >= 0"),
        ("pred_iou_thresh", 1.5, ValueError, "use a value <= 1"),
        ("pred_iou_thresh", float("nan"), ValueError, "use a value <= 1"),
        ("pred_iou_thresh", "0.8", TypeError, "use a value <= 1"),
        ("stability_score_thresh", 1.5, ValueError, r"use a value in \[0, 1\]"),
        ("stability_score_thresh", None, TypeError, r"use a value in \[0, 1\]"),
        ("stability_score_offset", float("inf"), ValueError, "use a finite value >= 0"),
        ("stability_score_offset", -1.0, ValueError, "use a finite value >= 0"),
        ("box_nms_thresh", float("nan"), ValueError, r"use a value in \[0, 1\]"),
        ("max_overlap", 1.01, ValueError, r"use a value in \[0, 1\]"),
    ],
)
def test_config_names_a_field_of_the_wrong_type_or_range(field, value, error, rule):
    with pytest.raises(error, match=rf"^{field}={re.escape(repr(value))}; {rule}"):
        AutoSegmentConfig(**{field: value})


def test_config_takes_numpy_numbers_and_thresholds_below_zero():
    config = AutoSegmentConfig(points_per_side=np.int64(8), pred_iou_thresh=-1, min_area=0)
    assert config.points_per_side == 8 and config.pred_iou_thresh == -1


def test_a_dict_for_the_config_is_told_how_to_make_one(tiny_sam):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(make_image((64, 64), seed=5)[0])
    message = r"config is a dict .*; pass AutoSegmentConfig\(points_per_side=8\)"
    with pytest.raises(TypeError, match=message):
        segmenter.segment_all({"points_per_side": 8})


def test_the_real_tiny_model_runs_end_to_end_on_a_tiled_image(tiny_sam):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(make_image((256, 448), seed=5)[0])
    progress = []
    config = AutoSegmentConfig(
        points_per_side=4,
        points_per_batch=6,
        pred_iou_thresh=-1.0,
        stability_score_thresh=0.0,
        min_area=1,
    )
    labels = segmenter.segment_all(config, progress=lambda *step: progress.append(step))
    # two tiles of 16 points in batches of 6, 6 and 4
    assert progress == [(done, 6) for done in range(1, 7)]
    assert labels.dtype == np.uint32 and labels.shape == (256, 448)
    ids = np.unique(labels[labels > 0])
    assert len(ids) > 0 and ids.tolist() == list(range(1, len(ids) + 1))


def test_rasterised_masks_are_the_upscaled_masks_cut_to_their_boxes(tiny_sam):
    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(make_image((256, 448), seed=5)[0])  # two 256 px tiles
    side = segmenter.grid.view(0).lowres_size
    logits = torch.full((3, side, side), -4.0)
    logits[0, 5:9, 20:30] = 3.0
    logits[1, 40:50, 0:6] = 3.0  # at the left edge of the second tile
    # candidate 2: nothing above the threshold
    views = torch.tensor([0, 1, 1])
    candidates = Candidates(views, logits, torch.ones(3), torch.zeros(3, 4))
    masks = rasterise(segmenter, candidates)
    for (row, col, crop), view, low in zip(masks[:2], views[:2].tolist(), logits[:2], strict=True):
        tile = segmenter.grid.view(view)
        full = np.zeros((256, 448), dtype=bool)
        upscaled = segmenter.upscale(view, low[None])[0].numpy() > 0
        full[tile.y0 : tile.y0 + tile.height, tile.x0 : tile.x0 + tile.width] = upscaled
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        assert (row, col) == (rows[0], cols[0])
        np.testing.assert_array_equal(crop, full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    assert masks[2][2].size == 0


class _WithoutFloat64(torch.Tensor):
    """A CPU tensor that acts as one on a device without float64 (Apple's MPS): converting
    it to float64 before moving it to the CPU raises as MPS does."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.double:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype")
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_low_res_boxes_leave_the_device_before_float64():
    """Automatic segmentation raised on Apple GPUs: its boxes became float64 on the device."""
    from napari_samtune.core.automatic import lowres_boxes

    (tile,) = TileGrid.for_image((256, 256), 256, TilingConfig()).tiles
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 4:10, 6:20] = True
    masks[1, 30:40, 30:35] = True
    boxes = lowres_boxes(tile, masks.as_subclass(_WithoutFloat64))
    torch.testing.assert_close(boxes, lowres_boxes(tile, masks))
    assert boxes[0].tolist() == [24.0, 16.0, 79.0, 39.0]
