"""Prompt geometry: boxes, jitter, points and corrective clicks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.prompts import (
    NEGATIVE,
    PADDING,
    POSITIVE,
    bounding_box,
    corrective_point,
    corrective_points,
    interior_point,
    jitter_box,
    sample_points,
)
from napari_samtune.core.synthetic import make_image


def _disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _inside(mask, xy):
    x, y = np.round(xy).astype(int)
    return bool(mask[y, x])


def test_bounding_box_is_xyxy_of_first_and_last_pixel():
    mask = np.zeros((20, 30), bool)
    mask[4:9, 11:25] = True  # rows 4..8, cols 11..24
    assert bounding_box(mask).tolist() == [11, 4, 24, 8]
    with pytest.raises(ValueError, match="empty"):
        bounding_box(np.zeros((5, 5), bool))


def test_jittered_boxes_stay_in_the_image_ordered_and_near_the_object(rng):
    shape = (50, 60)
    box = np.array([0.0, 10.0, 20.0, 49.0])  # touches the left and bottom borders
    width, height = 21, 40
    for _ in range(500):
        x0, y0, x1, y1 = jitter_box(box, rng, 0.2, shape)
        assert 0 <= x0 <= x1 <= 59 and 0 <= y0 <= y1 <= 49
        assert abs(x1 - box[2]) <= 0.2 * width + 1e-9
        assert abs(y0 - box[1]) <= 0.2 * height + 1e-9
    assert np.array_equal(jitter_box(box, rng, 0.0, shape), box)
    moved = np.array([jitter_box(box, rng, 0.2, shape) for _ in range(50)])
    assert moved[:, 2].std() > 0


def test_interior_point_equals_the_full_image_distance_transform(rng):
    """It transforms only the object's box plus a margin: the same point as transforming
    the whole (padded) image, for objects inside, at the edges and of any shape."""
    from scipy import ndimage

    labels = make_image((96, 128), seed=3)[1]
    masks = [labels == i for i in np.unique(labels)[1:]]
    masks += [rng.random((40, 50)) < 0.3, np.ones((5, 7), bool), _disk((30, 30), (0, 29), 9)]
    for mask in masks:
        for part in ndimage.find_objects(ndimage.label(mask)[0]):  # edge, non-convex, ...
            region = np.zeros_like(mask)
            region[part] = mask[part]
            distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
            row, col = np.unravel_index(int(np.argmax(distance)), region.shape)
            np.testing.assert_array_equal(interior_point(region), [col, row])


def test_interior_point_lies_inside_a_non_convex_mask():
    ring = _disk((61, 61), (30, 30), 25) & ~_disk((61, 61), (30, 30), 15)
    ring[25:36, :30] = False  # a C shape whose centroid is in the hole
    centroid = np.argwhere(ring).mean(axis=0)[::-1]
    assert not _inside(ring, centroid)
    assert _inside(ring, interior_point(ring))


def test_sampled_points_positive_inside_negative_nearby(rng):
    mask = _disk((100, 100), (50, 50), 10)
    points, labels = sample_points(mask, 3, 4, rng)
    assert labels.tolist() == [POSITIVE] * 3 + [NEGATIVE] * 4
    assert all(_inside(mask, p) for p in points[:3])
    assert not any(_inside(mask, p) for p in points[3:])
    assert np.abs(points[3:] - 50).max() <= 10 + 11  # within the grown box
    full = np.ones((8, 8), bool)
    _, labels = sample_points(full, 1, 2, rng)
    assert labels.tolist() == [POSITIVE, PADDING, PADDING]


def test_corrective_click_fixes_the_largest_error():
    target = np.zeros((60, 60), bool)
    target[10:40, 10:40] = True
    missed = target.copy()
    missed[10:40, 25:40] = False  # false negatives: a 30 x 15 strip
    point, label = corrective_point(missed, target)
    assert label == POSITIVE
    assert _inside(target & ~missed, point)
    assert abs(point[0] - 32) <= 1  # middle of the strip's width
    spilled = target.copy()
    spilled[40:55, 0:60] = True  # false positives: larger than any miss
    spilled[10:12, 10:12] = False
    point, label = corrective_point(spilled, target)
    assert label == NEGATIVE
    assert _inside(spilled & ~target, point)


def test_a_perfect_prediction_gets_a_padding_click():
    target = _disk((30, 30), (15, 15), 6)
    point, label = corrective_point(target, target)
    assert label == PADDING and point.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        corrective_point(target, target[:-1])


def test_corrective_points_for_a_stack():
    targets = np.stack([_disk((40, 40), (20, 20), 8)] * 2)
    predictions = np.zeros_like(targets)
    predictions[1] = targets[1]
    points, labels = corrective_points(predictions, targets)
    assert points.shape == (2, 2) and labels.tolist() == [POSITIVE, PADDING]
    assert _inside(targets[0], points[0])


def test_non_finite_mask_logits_are_named_not_printed():
    """A NaN model's logits (a diverged run) made a message of 65,536 numbers."""
    from napari_samtune.core.prompt_checks import check_mask_input, check_points

    with pytest.raises(ValueError, match=r"mask_input contains NaN .*\(65536 of 65536\): '\(1, 2"):
        check_mask_input(np.full((1, 256, 256), np.nan), 256)
    with pytest.raises(ValueError, match=r"\(1 of 2\): \[nan, 3.0\]$"):
        check_points([np.nan, 3], (10, 10))
