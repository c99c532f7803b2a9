"""The one conversion between napari and SAM coordinates.

napari addresses a 2D point as (row, col) = (y, x); Segment Anything wants
(x, y) points and XYXY boxes. Every other module converts through these two
functions so the axis order is decided in exactly one place.
"""

from __future__ import annotations

import numpy as np


def napari_to_sam(coords: np.ndarray) -> np.ndarray:
    """Convert napari (row, col) coordinates to SAM (x, y).

    Args:
        coords: float array of shape (..., 2) in (row, col) order. For a box given
            as two corners [[row_min, col_min], [row_max, col_max]] the result is
            [[x_min, y_min], [x_max, y_max]], i.e. reshaped to (4,) it is XYXY.

    Returns:
        float64 array of the same shape in (x, y) order.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim == 0 or coords.shape[-1] != 2:
        raise ValueError(
            f"coords must have shape (..., 2) in (row, col) order; got shape {coords.shape!r}"
        )
    return coords[..., ::-1].copy()


def sam_to_napari(coords: np.ndarray) -> np.ndarray:
    """Convert SAM (x, y) coordinates to napari (row, col); the inverse of :func:`napari_to_sam`."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim == 0 or coords.shape[-1] != 2:
        raise ValueError(
            f"coords must have shape (..., 2) in (x, y) order; got shape {coords.shape!r}"
        )
    return coords[..., ::-1].copy()
