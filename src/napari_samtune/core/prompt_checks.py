"""Validation of prompt arrays given to :class:`~napari_samtune.core.predict.Segmenter`.

Coordinates are SAM (x, y) = (column, row) image pixels with pixel centres at
integers, so an (H, W) image spans x in [-0.5, W - 0.5] and y in [-0.5, H - 0.5].
"""

from __future__ import annotations

import numpy as np

EDGE = 0.5  # the image extends half a pixel beyond the outermost pixel centres


def _as_float_array(value: object, name: str) -> np.ndarray:
    if value is None:  # numpy makes it NaN, and the message then spoke of NaN values
        raise TypeError(f"{name} is None; pass an array of numbers")
    detach = getattr(value, "detach", None)  # a tensor that tracks gradients: numpy refuses it
    value = detach().cpu() if callable(detach) else value
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}={value!r} is not numeric: {err}") from None
    if not np.all(np.isfinite(array)):
        shown = array.tolist() if array.size <= 16 else f"{array.shape} array"  # not a mask
        n_bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(
            f"{name} contains NaN or infinite values ({n_bad} of {array.size}): {shown!r}"
            + ("; the model's weights may be NaN (a diverged training run)" if n_bad > 16 else "")
        )
    return array


def check_points(
    points_xy: object, image_shape: tuple[int, int], name: str = "points_xy"
) -> np.ndarray:
    """Return float64 (N, 2) (x, y) points; every point must lie inside the image."""
    points = _as_float_array(points_xy, name)
    if points.shape == (2,):
        points = points[None]
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(
            f"{name} must have shape (N, 2) with N >= 1, in (x, y) = (column, row) order; "
            f"got shape {points.shape!r}"
        )
    height, width = image_shape
    outside = (
        (points[:, 0] < -EDGE)
        | (points[:, 0] > width - EDGE)
        | (points[:, 1] < -EDGE)
        | (points[:, 1] > height - EDGE)
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{name}[{i}] = {points[i].tolist()!r} lies outside the image of (H, W) = "
            f"{tuple(image_shape)!r}; points are (x, y) = (column, row) with pixel centres at "
            f"integers, -{EDGE} <= x <= {width - EDGE} and -{EDGE} <= y <= {height - EDGE} "
            "(napari (row, col) data: convert with napari_to_sam)"
        )
    return points


def check_point_labels(point_labels: object, n_points: int | None) -> np.ndarray | None:
    """Return int64 (N,) labels (1 positive, 0 negative); None means all positive. Without
    points (``n_points`` None) there is nothing to label: None, and labels are refused."""
    if n_points is None:
        if point_labels is not None:
            raise ValueError(
                f"point_labels={point_labels!r} was given without points_xy; pass the points "
                "they label as points_xy ((x, y) = (column, row)), or leave point_labels out"
            )
        return None
    if point_labels is None:
        return np.ones(n_points, dtype=np.int64)
    labels = _as_float_array(point_labels, "point_labels").reshape(-1)
    if len(labels) != n_points:
        raise ValueError(
            f"point_labels has {len(labels)} entries for {n_points} points; give one label "
            "per point (1 positive, 0 negative)"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(
            f"point_labels={labels.tolist()!r}; use 1 for positive and 0 for negative points"
        )
    return labels.astype(np.int64)


def check_boxes(
    boxes_xyxy: object, image_shape: tuple[int, int], name: str = "boxes_xyxy", single: bool = False
) -> np.ndarray:
    """Return float64 (N, 4) XYXY boxes clipped to the image ((4,) when ``single``).

    A box must have x_min <= x_max and y_min <= y_max and overlap the image.
    """
    boxes = _as_float_array(boxes_xyxy, name)
    if single and boxes.shape != (4,):
        raise ValueError(f"{name} must be one XYXY box of shape (4,); got shape {boxes.shape!r}")
    boxes = boxes.reshape(1, 4) if boxes.shape == (4,) else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(
            f"{name} must have shape (N, 4) with rows (x_min, y_min, x_max, y_max); "
            f"got shape {boxes.shape!r}"
        )
    height, width = image_shape
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if x0 > x1 or y0 > y1:
            raise ValueError(
                f"{name}[{i}] = {boxes[i].tolist()!r} has min > max; boxes are "
                "(x_min, y_min, x_max, y_max) with x = column, y = row"
            )
        if x1 < -EDGE or y1 < -EDGE or x0 > width - EDGE or y0 > height - EDGE:
            raise ValueError(
                f"{name}[{i}] = {boxes[i].tolist()!r} lies outside the image of (H, W) = "
                f"{tuple(image_shape)!r}"
            )
    limits = (width - EDGE, height - EDGE, width - EDGE, height - EDGE)
    clipped = np.clip(boxes, -EDGE, limits)
    return clipped[0] if single else clipped


def check_mask_input(mask_input: object, side: int) -> np.ndarray:
    """Return float32 (1, L, L) low-res logits from a (1, L, L) or (L, L) array."""
    logits = _as_float_array(mask_input, "mask_input").astype(np.float32)
    if logits.shape == (side, side):
        logits = logits[None]
    if logits.shape != (1, side, side):
        raise ValueError(
            f"mask_input has shape {logits.shape!r}; expected the low_res_logits of a previous "
            f"prediction, shape (1, {side}, {side})"
        )
    return logits
