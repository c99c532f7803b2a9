"""Propagate one object's mask from its plane through the neighbouring planes of a stack.

Qt-free. The rule, applied plane by plane, first upwards (z + 1, z + 2, ...) and then
downwards (z - 1, ...), always starting again from the user's mask on plane z:

1. Prompt SAM on the next plane with the previous plane's mask, without its specks (pieces
   of less than a tenth of its largest): its bounding box, grown by ``box_margin`` of its
   size on every side (objects drift and grow between planes), as a box prompt, plus its
   most interior pixel (the maximum of the distance transform) as a positive point.
2. Stop in that direction when the new mask vanishes (fewer than ``min_area`` pixels), when
   its area changes by more than ``max_area_ratio`` (either way) relative to the previous
   plane, or after ``max_planes`` planes. The plane that triggered a stop is not kept.

Coordinates go to SAM through :func:`napari_samtune.core.coords.napari_to_sam` only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_samtune.core.coords import napari_to_sam


@dataclass(frozen=True)
class PropagationConfig:
    """When and how far to propagate a mask through a stack."""

    max_area_ratio: float = 2.0  # stop when the area grows or shrinks more than this factor
    min_area: int = 10  # stop when the mask has fewer pixels than this (the object ended)
    box_margin: float = 0.1  # grow the previous bounding box by this fraction per side
    max_planes: int = 1000  # at most this many planes in each direction

    def __post_init__(self) -> None:
        if not self.max_area_ratio > 1.0:
            raise ValueError(f"max_area_ratio={self.max_area_ratio!r} must be > 1, e.g. 2.0")
        if self.min_area < 1 or self.max_planes < 1 or self.box_margin < 0:
            raise ValueError(
                f"min_area={self.min_area!r} and max_planes={self.max_planes!r} must be >= 1 "
                f"and box_margin={self.box_margin!r} >= 0"
            )


def prompts_from_mask(mask: np.ndarray, box_margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The prompts that carry ``mask`` (bool (H, W), not empty) to the next plane.

    Returns:
        point_rc: float (2,) the most interior pixel, (row, col).
        box_rc: float (4,) grown bounding box, (row_min, col_min, row_max, col_max),
            clipped to the image.
    """
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("mask is empty; draw or segment the object on this plane first")
    offset = np.array([rows.min(), cols.min()])
    crop = _without_specks(mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    rows, cols = np.nonzero(crop)
    low = offset + np.array([rows.min(), cols.min()], dtype=np.float64)
    high = offset + np.array([rows.max(), cols.max()], dtype=np.float64)
    point_rc = low + _most_interior(crop[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    margin = box_margin * (high - low + 1)
    low = np.maximum(low - margin, 0)
    high = np.minimum(high + margin, np.array(mask.shape) - 1)
    return point_rc, np.concatenate([low, high])


SPECK_FRACTION = 0.1  # pieces of a mask smaller than this part of its largest: specks


def _without_specks(crop: np.ndarray) -> np.ndarray:
    """``crop`` (bool (h, w)) without its pieces smaller than :data:`SPECK_FRACTION` of its
    largest (8-connected): SAM often adds a stray pixel or two on a neighbour, and the box
    around them took in the neighbours on the next plane, and on each plane after, wider."""
    pieces, n_pieces = ndimage.label(crop, structure=np.ones((3, 3)))
    if n_pieces < 2:
        return crop
    areas = np.bincount(pieces.ravel())
    areas[0] = 0  # the background
    return np.isin(pieces, np.flatnonzero(areas >= SPECK_FRACTION * areas.max()))


def _most_interior(crop: np.ndarray) -> np.ndarray:
    """(row, col) of the pixel of ``crop`` (bool (h, w), the mask's bounding box) farthest
    from background, the first in row-major order: the distance transform of the box alone
    (padded with background, as the image's edges and all beyond the box are), which the
    GUI thread computes for each plane propagation reaches (of a whole 2048 x 2048 plane it
    took 0.4 s, of 4096 x 4096 2 s: the viewer froze that long per plane)."""
    distance = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(np.argmax(distance), crop.shape), dtype=np.float64)


def _predict_from(segmenter, previous: np.ndarray, margin: float) -> np.ndarray:
    point_rc, box_rc = prompts_from_mask(previous, margin)
    prediction = segmenter.predict(
        points_xy=napari_to_sam(point_rc[None]),
        point_labels=np.array([1]),
        box_xyxy=napari_to_sam(box_rc.reshape(2, 2)).reshape(4),
    )
    return np.asarray(prediction.mask, dtype=bool)


def _keeps_going(previous_area: int, area: int, config: PropagationConfig) -> bool:
    if area < config.min_area:
        return False
    ratio = area / previous_area
    return 1.0 / config.max_area_ratio <= ratio <= config.max_area_ratio


def planes_past(start: int, reached: Collection[int]) -> tuple[int, int]:
    """The planes just past the runs :func:`iter_propagate` reached from ``start`` (any
    order), above and below: where it stopped, or the stack's ends (may lie outside it)."""
    above, below = (sum((plane - start) * step > 0 for plane in reached) for step in (1, -1))
    return start + above + 1, start - below - 1


def iter_propagate(
    segmenter,
    set_plane: Callable[[int], None],
    n_planes: int,
    start_plane: int,
    start_mask: np.ndarray,
    config: PropagationConfig = PropagationConfig(),
    keep_out: Collection[int] = (),
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(plane, mask)`` for every plane the object reaches (not the start plane).

    Args:
        segmenter: a Segmenter; ``set_plane(z)`` must make it embed plane ``z``.
        set_plane: callback that loads plane ``z`` into ``segmenter`` (``set_image``).
        n_planes: number of planes in the stack.
        start_plane: the plane where ``start_mask`` was drawn.
        start_mask: bool (H, W) mask of the object on ``start_plane``.
        config: stopping rule and box margin.
        keep_out: planes not to enter (they hold another object's prompts): propagation
            stops before them, leaving them as they are.

    Masks are bool (H, W). Planes above the start come first, in order, then those below.
    """
    start_mask = np.asarray(start_mask, dtype=bool)
    if not start_mask.any():
        raise ValueError("the object to propagate is empty; segment it on this plane first")
    for step in (1, -1):
        previous = start_mask
        plane = start_plane + step
        while 0 <= plane < n_planes and abs(plane - start_plane) <= config.max_planes:
            if plane in keep_out:
                break
            set_plane(plane)
            mask = _predict_from(segmenter, previous, config.box_margin)
            if not _keeps_going(int(previous.sum()), int(mask.sum()), config):
                break
            yield plane, mask
            previous = mask
            plane += step
