"""Automatic ("segment everything") instance segmentation from a grid of point prompts.

Pipeline, per tile of the image (see :mod:`napari_samtune.core.embeddings`):

1. a ``points_per_side`` x ``points_per_side`` grid of positive points over the tile,
   decoded in batches with three candidates per point;
2. candidates are kept when their predicted IoU and their stability score (the IoU
   of the mask thresholded at +-``stability_score_offset`` logits) reach the
   thresholds; both are computed on the low-res logits, so nothing is upscaled
   before it has survived filtering;
3. box non-maximum suppression among the survivors of the tile;
4. an object is kept only from the tile in whose inner region (the tile minus half
   the overlap on interior sides) its box centre lies, so objects crossing tile
   borders come out once and whole (objects smaller than the overlap are never cut).

Then box NMS across tiles, upscaling of the survivors, and painting in order of
decreasing predicted IoU: an object claims only unclaimed pixels (less pieces of them
smaller than ``min_area``), and is dropped when more than ``max_overlap`` of it was
already claimed or fewer than ``min_area`` pixels remain. The result is uint32 labels with
ids 1..N.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
)
from torchvision.ops import batched_nms

from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.embeddings import ProgressCallback, Tile, TileGrid
from napari_samtune.core.progress import check_callback

if TYPE_CHECKING:
    from napari_samtune.core.predict import Segmenter

PADDING_LOGIT = -1e4  # logits over the padded (non-image) part of a tile's model input


@dataclass(frozen=True)
class AutoSegmentConfig:
    """Parameters of automatic segmentation (SAM's automatic mask generator defaults)."""

    points_per_side: int = 32  # the point grid per tile is points_per_side x points_per_side
    points_per_batch: int = 64  # points decoded at once (memory vs speed)
    pred_iou_thresh: float = 0.88  # keep candidates whose predicted IoU reaches this
    stability_score_thresh: float = 0.95  # keep candidates at least this stable
    stability_score_offset: float = 1.0  # logit offset of the stability score
    box_nms_thresh: float = 0.7  # drop a candidate whose box IoU with a better one exceeds this
    max_overlap: float = 0.5  # drop an object when more of it is covered by better objects
    min_area: int = 25  # smallest object kept, in pixels, after overlaps are removed

    def __post_init__(self) -> None:
        for name, (whole, allowed, rule) in _FIELD_RULES.items():
            value = getattr(self, name)
            kinds = (int, np.integer) if whole else (int, float, np.integer, np.floating)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds):
                raise TypeError(f"{name}={value!r}; {rule}")
            if not allowed(value):  # NaN fails every comparison: refused too
                raise ValueError(f"{name}={value!r}; {rule}")


_IN_0_1 = "use a value in [0, 1]"
# 256 x 256 points: one every 4 pixels of SAM's 1024-pixel input (one per pixel of nano's);
# the point grid and its masks grow with the square, so 100000 failed on memory.
MAX_POINTS_PER_SIDE = 256
# field: (whole number?, allowed, what to use)
_FIELD_RULES: dict[str, tuple[bool, Callable[[float], bool], str]] = {
    "points_per_side": (
        True,
        lambda v: 1 <= v <= MAX_POINTS_PER_SIDE,
        f"use a positive integer up to {MAX_POINTS_PER_SIDE} (SAM's default is 32; the time "
        "and memory it takes grow with its square)",
    ),
    "points_per_batch": (True, lambda v: v >= 1, "use a positive integer"),
    "pred_iou_thresh": (
        False,
        lambda v: v <= 1,
        "use a value <= 1, as a predicted IoU is at most about 1 (SAM's default is 0.88; "
        "lower values keep more candidates)",
    ),
    "stability_score_thresh": (False, lambda v: 0 <= v <= 1, _IN_0_1),
    "stability_score_offset": (False, lambda v: 0 <= v < math.inf, "use a finite value >= 0"),
    "box_nms_thresh": (False, lambda v: 0 <= v <= 1, _IN_0_1),
    "max_overlap": (False, lambda v: 0 <= v <= 1, _IN_0_1),
    "min_area": (True, lambda v: v >= 0, "use a whole number >= 0 (pixels)"),
}


# Automatic segmentation settings for nano, tuned on generated images (seeds not used for
# training or for the reported numbers): a 24 x 24 grid (about 11 px spacing on the 256 px
# input) reaches small nuclei; nano's predicted-IoU head is far less confident than SAM's,
# so candidates are kept from a predicted IoU of 0.4 (SAM: 0.88) and stability 0.9 (0.95).
NANO_AUTO_CONFIG = AutoSegmentConfig(
    points_per_side=24, pred_iou_thresh=0.4, stability_score_thresh=0.9, min_area=30
)
SMALL_INPUT_SIZE = 256  # models with at most this input size get NANO_AUTO_CONFIG


def default_auto_config(img_size: int) -> AutoSegmentConfig:
    """The automatic-segmentation defaults for a model of input size ``img_size``: SAM's,
    or :data:`NANO_AUTO_CONFIG` for nano-sized models (nano and models finetuned from it),
    with which SAM's thresholds keep few objects (0-4 of 14-19 on sample images)."""
    if isinstance(img_size, (bool, np.bool_)) or not isinstance(img_size, (int, np.integer)):
        raise TypeError(
            f"img_size must be the model's input size in pixels, a whole number such as 1024 "
            f"(sam.image_encoder.img_size); got {type(img_size).__name__} {img_size!r}"
        )
    return NANO_AUTO_CONFIG if img_size <= SMALL_INPUT_SIZE else AutoSegmentConfig()


@dataclass
class Candidates:
    """Candidate masks on the low-res grids of their tiles."""

    views: torch.Tensor  # int64 (n,) tile index of each candidate
    logits: torch.Tensor  # float32 (n, L, L) low-res logits in the tile's frame
    scores: torch.Tensor  # float32 (n,) predicted IoU
    boxes: torch.Tensor  # float32 (n, 4) XYXY box in image pixels

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep: torch.Tensor) -> Candidates:
        return Candidates(self.views[keep], self.logits[keep], self.scores[keep], self.boxes[keep])

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        return Candidates(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("views", "logits", "scores", "boxes")


def point_grid(tile: Tile, points_per_side: int) -> np.ndarray:
    """(P, 2) image (x, y) points evenly spread over ``tile``."""
    fractions = build_point_grid(points_per_side)  # (P, 2) in (0, 1), x first
    return fractions * (tile.width, tile.height) - 0.5 + (tile.x0, tile.y0)


def lowres_boxes(tile: Tile, masks: torch.Tensor) -> torch.Tensor:
    """XYXY image-pixel boxes of (n, L, L) bool low-res masks of ``tile``."""
    factor = tile.img_size / masks.shape[-1]
    # to the CPU first: MPS (Apple GPUs) has no float64
    boxes = batched_mask_to_box(masks).cpu().double().numpy().reshape(-1, 2, 2)
    boxes[:, 1] += 1  # the far edge of the last low-res pixel
    corners = tile.from_input_frame(boxes * factor)
    corners[:, 1] -= 1  # back to the last covered pixel (inclusive)
    return torch.as_tensor(corners.reshape(-1, 4), dtype=torch.float32)


def _mask_padding(tile: Tile, logits: torch.Tensor) -> torch.Tensor:
    """Set logits over the padded part of the model input to background."""
    factor = tile.img_size / logits.shape[-1]
    rows, cols = (int(np.ceil(s / factor)) for s in tile.input_size)
    logits = logits.clone()
    logits[..., rows:, :] = PADDING_LOGIT
    logits[..., :, cols:] = PADDING_LOGIT
    return logits


def filter_candidates(
    tile: Tile, view: int, logits: torch.Tensor, scores: torch.Tensor, config: AutoSegmentConfig
) -> Candidates:
    """Keep (n, L, L) candidates that pass the IoU, stability and non-empty tests."""
    logits = _mask_padding(tile, logits.float())
    threshold = 0.0  # SAM's mask threshold on logits
    stability = calculate_stability_score(logits, threshold, config.stability_score_offset)
    area = (logits > threshold).flatten(1).sum(1)
    keep = (
        (scores >= config.pred_iou_thresh)
        & (stability >= config.stability_score_thresh)
        & (area > 0)
    )
    logits, scores = logits[keep], scores[keep].float()
    boxes = lowres_boxes(tile, logits > threshold)
    views = torch.full((len(scores),), view, dtype=torch.int64)
    return Candidates(views, logits.cpu(), scores.cpu(), boxes)


def nms(candidates: Candidates, threshold: float) -> Candidates:
    """Box non-maximum suppression; the result is sorted by decreasing score."""
    if len(candidates) == 0:
        return candidates
    keep = batched_nms(
        candidates.boxes, candidates.scores, torch.zeros_like(candidates.views), threshold
    )
    return candidates.select(keep)


def tile_candidates(
    segmenter: Segmenter,
    view: int,
    config: AutoSegmentConfig,
    batch_done: Callable[[], None] | None = None,
) -> Candidates:
    """Decode the point grid of one tile; return its filtered, suppressed candidates.

    ``batch_done`` is called after each batch of points (:func:`batches_per_tile` of them).
    """
    tile = segmenter.grid.view(view)
    points = point_grid(tile, config.points_per_side)
    pool: Candidates | None = None
    for start in range(0, len(points), config.points_per_batch):
        batch = points[start : start + config.points_per_batch]
        labels = np.ones((len(batch), 1), dtype=np.int64)
        # points without a candidate that reaches the IoU threshold are dropped before their
        # masks are upscaled: filter_candidates would drop all of them
        low, iou = segmenter.decode(
            view, batch[:, None], labels, multimask=True, min_iou=config.pred_iou_thresh
        )
        found = filter_candidates(tile, view, low.flatten(0, 1), iou.flatten(), config)
        # suppress as we go so memory stays proportional to the number of objects
        pool = found if pool is None else Candidates.concat([pool, found])
        pool = nms(pool, config.box_nms_thresh)
        if batch_done is not None:
            batch_done()
    return pool


def batches_per_tile(config: AutoSegmentConfig) -> int:
    """How many batches of points :func:`tile_candidates` decodes per tile."""
    return math.ceil(config.points_per_side**2 / config.points_per_batch)


# how far beyond its inner region a tile still owns a box centre: the two tiles that both
# hold an object on their dividing line each found its box a pixel or so off, each centre
# on the other's side, and neither kept it (4 of 841 cells on 2048 px, gone without a
# trace); kept by both, the NMS after keeps one
OWNERSHIP_MARGIN_PX = 2.0


def owned_by_tile(candidates: Candidates, grid: TileGrid, view: int) -> Candidates:
    """Keep candidates whose box centre lies in the tile's inner region, or within
    :data:`OWNERSHIP_MARGIN_PX` of it."""
    y_lo, y_hi, x_lo, x_hi = np.array(grid.inner_bounds(view)) + OWNERSHIP_MARGIN_PX * np.array(
        [-1, 1, -1, 1]
    )
    centre_x = (candidates.boxes[:, 0] + candidates.boxes[:, 2]) / 2
    centre_y = (candidates.boxes[:, 1] + candidates.boxes[:, 3]) / 2
    inside = (centre_x >= x_lo) & (centre_x < x_hi) & (centre_y >= y_lo) & (centre_y < y_hi)
    return candidates.select(inside)


def rasterise(segmenter: Segmenter, candidates: Candidates) -> list[tuple[int, int, np.ndarray]]:
    """Full-resolution masks as (row, col, bool crop) in candidate order (crop = mask's bbox)."""
    masks: list[tuple[int, int, np.ndarray]] = [(0, 0, np.zeros((0, 0), bool))] * len(candidates)
    threshold = segmenter.model.mask_threshold
    for view in torch.unique(candidates.views).tolist():
        indices = torch.nonzero(candidates.views == view).flatten().tolist()
        for start in range(0, len(indices), segmenter.batch_size):
            chunk = indices[start : start + segmenter.batch_size]
            lowres = candidates.logits[chunk].to(segmenter.model.device)
            windows = segmenter.upscale_windows(view, lowres)
            for index, window in zip(chunk, windows, strict=True):
                window = window.trimmed(threshold)
                if window.logits.numel():
                    masks[index] = (window.row, window.col, window.above(threshold))
    return masks


def paint(
    shape: tuple[int, int], masks: list[tuple[int, int, np.ndarray]], config: AutoSegmentConfig
) -> np.ndarray:
    """Paint masks (best first) into uint32 labels; ids 1..N in painting order."""
    labels = np.zeros(shape, dtype=np.uint32)
    next_id = 1
    for row, col, crop in masks:
        region = labels[row : row + crop.shape[0], col : col + crop.shape[1]]
        free = _part_kept(crop, region != 0, config)
        if free is not None:
            region[free] = next_id
            next_id += 1
    return labels


def around_taken(labels: np.ndarray, taken: np.ndarray, config: AutoSegmentConfig) -> np.ndarray:
    """Objects ``labels`` (integer, as :func:`paint` made them) painted by :func:`paint`'s
    rule around the pixels ``taken`` (bool, e.g. existing annotations): each keeps its free
    part less the specks under ``min_area``, and is dropped where more than ``max_overlap``
    of it is taken or less than ``min_area`` is left. Returns new labels (same ids)."""
    out = np.zeros_like(labels)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            free = _part_kept(labels[box] == index, taken[box], config)
            if free is not None:
                out[box][free] = index
    return out


def _part_kept(mask: np.ndarray, taken: np.ndarray, config: AutoSegmentConfig):
    """What an object ``mask`` keeps around the ``taken`` pixels (same shape), or None when
    it is dropped: more than ``max_overlap`` of it taken, or under ``min_area`` left."""
    area = int(mask.sum())
    free = without_specks(mask & ~taken, config.min_area)
    n_free = int(free.sum())
    if area == 0 or n_free < max(config.min_area, 1) or area - n_free > config.max_overlap * area:
        return None
    return free


def without_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` less its pieces (diagonal neighbours touch) of fewer than ``min_area``
    pixels: what an object keeps of its mask around better objects painted first came out
    with specks of 1-6 pixels far from its body, whose box they stretched (up to 5x)."""
    if min_area <= 1:
        return mask
    pieces, n_pieces = ndimage.label(mask, np.ones((3, 3), dtype=bool))
    if n_pieces <= 1:
        return mask
    sizes = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    return (sizes >= min_area)[pieces] & mask


def _check_config(config: object) -> None:
    """``TypeError`` for a ``config`` that is not an :class:`AutoSegmentConfig` (a dict, say),
    showing the call that makes one."""
    if isinstance(config, AutoSegmentConfig):
        return
    if isinstance(config, Mapping) and all(isinstance(key, str) for key in config):
        example = ", ".join(f"{key}={value!r}" for key, value in config.items())
    else:
        example = "points_per_side=16"
    raise TypeError(
        f"config is {kind_of(config)} ({config!r}), not an AutoSegmentConfig; pass "
        f"AutoSegmentConfig({example})"
    )


def segment_automatic(
    segmenter: Segmenter,
    config: AutoSegmentConfig = AutoSegmentConfig(),
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Segment every object of the segmenter's current image.

    Args:
        segmenter: a :class:`~napari_samtune.core.predict.Segmenter` with an image set.
        config: filtering parameters.
        progress: called as ``progress(batches_done, n_batches)`` after each batch of
            ``config.points_per_batch`` points of each tile (decoding them is nearly all the
            work: a 1024 px image with vit_t is one tile of 16 batches, ~1.6 s each on a
            2-core CPU).

    Returns:
        uint32 (H, W) instance labels, 0 = background, ids 1..N consecutive
        (in order of decreasing predicted IoU).
    """
    _check_config(config)
    check_callback(progress, "progress", "progress(batches_done, n_batches)")
    grid = segmenter.grid
    n_tiles = len(grid.tiles)
    n_batches, done = n_tiles * batches_per_tile(config), 0

    def batch_done() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, n_batches)

    with torch.inference_mode(), segmenter.batch_memory():
        parts = []
        for view in range(n_tiles):
            found = tile_candidates(segmenter, view, config, batch_done)
            parts.append(owned_by_tile(found, grid, view))
        # neighbours both own the near-duplicates whose centres lie by the boundary
        candidates = nms(Candidates.concat(parts), config.box_nms_thresh)
        masks = rasterise(segmenter, candidates)
    return paint(grid.image_shape, masks, config)
