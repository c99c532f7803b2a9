"""The propagation rule (Qt-free) with a stand-in segmenter that knows the true objects."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_samtune._qt.propagate import PropagationConfig, iter_propagate, prompts_from_mask
from napari_samtune.core.coords import sam_to_napari


def _disk(shape, centre, radius) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


class TruthSegmenter:
    """Answers a prompt with the true object under the positive point on the current plane."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth  # (Z, H, W) instance labels
        self.plane = None
        self.calls: list[dict] = []

    def set_plane(self, plane: int) -> None:
        self.plane = plane

    def predict(self, points_xy, point_labels, box_xyxy):
        self.calls.append({"plane": self.plane, "points_xy": points_xy, "box_xyxy": box_xyxy})
        row, col = np.rint(sam_to_napari(points_xy[0])).astype(int)
        object_id = self.truth[self.plane, row, col]
        mask = (self.truth[self.plane] == object_id) & (object_id > 0)
        return SimpleNamespace(mask=mask)


def _ball_stack(radii: list[float]) -> np.ndarray:
    shape = (64, 64)
    return np.stack(
        [
            _disk(shape, (30, 34), r).astype(np.uint32) if r else np.zeros(shape, np.uint32)
            for r in radii
        ]
    )


def test_propagation_follows_the_object_until_it_vanishes():
    radii = [0, 0, 7, 9, 10, 9, 7, 0, 0]
    truth = _ball_stack(radii)
    segmenter = TruthSegmenter(truth)
    start = truth[4] > 0
    results = dict(iter_propagate(segmenter, segmenter.set_plane, len(radii), 4, start))
    assert sorted(results) == [2, 3, 5, 6]
    for plane, mask in results.items():
        np.testing.assert_array_equal(mask, truth[plane] > 0)
    assert [c["plane"] for c in segmenter.calls] == [5, 6, 7, 3, 2, 1]  # up, then down


def test_propagation_keeps_out_of_planes_it_is_told_to_and_does_not_embed_them():
    radii = [0, 7, 9, 10, 9, 7, 0]
    truth = _ball_stack(radii)
    segmenter = TruthSegmenter(truth)
    start = truth[3] > 0
    results = dict(iter_propagate(segmenter, segmenter.set_plane, 7, 3, start, keep_out={5}))
    assert sorted(results) == [1, 2, 4]  # up to plane 4, down to where the object ends
    assert [c["plane"] for c in segmenter.calls] == [4, 2, 1, 0]  # plane 5 never predicted


def test_propagation_stops_at_a_large_area_change():
    radii = [10, 10, 10, 3, 3]  # area drops ~11x at plane 3
    truth = _ball_stack(radii)
    segmenter = TruthSegmenter(truth)
    results = dict(
        iter_propagate(segmenter, segmenter.set_plane, 5, 0, truth[0] > 0, PropagationConfig())
    )
    assert sorted(results) == [1, 2]
    lenient = PropagationConfig(max_area_ratio=20.0)
    results = dict(iter_propagate(segmenter, segmenter.set_plane, 5, 0, truth[0] > 0, lenient))
    assert sorted(results) == [1, 2, 3, 4]


def test_prompts_come_from_the_previous_mask():
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:21, 30:51] = True  # rows 10..20, cols 30..50
    point_rc, box_rc = prompts_from_mask(mask, box_margin=0.0)
    assert mask[int(point_rc[0]), int(point_rc[1])]
    assert point_rc[0] == 15 and 35 <= point_rc[1] <= 45  # as deep inside as can be
    np.testing.assert_allclose(box_rc, [10, 30, 20, 50])
    _, grown = prompts_from_mask(mask, box_margin=0.1)
    np.testing.assert_allclose(grown, [8.9, 27.9, 21.1, 52.1])
    segmenter = TruthSegmenter(np.stack([mask, mask]).astype(np.uint32))
    list(
        iter_propagate(segmenter, segmenter.set_plane, 2, 0, mask, PropagationConfig(box_margin=0))
    )
    np.testing.assert_allclose(segmenter.calls[0]["box_xyxy"], [30, 10, 50, 20])  # XYXY


def test_bad_settings_and_empty_masks_are_refused():
    with pytest.raises(ValueError, match="max_area_ratio"):
        PropagationConfig(max_area_ratio=1.0)
    with pytest.raises(ValueError, match="empty"):
        list(iter_propagate(None, print, 3, 1, np.zeros((4, 4), dtype=bool)))


def test_a_speck_beside_the_mask_does_not_widen_the_next_plane_s_box():
    """SAM's mask with one stray pixel on a neighbour: the box took the neighbour in on the
    next plane, and each plane after merged more cells, while the note said it propagated."""
    mask = np.zeros((96, 96), dtype=bool)
    mask[20:41, 60:81] = True
    clean_point, clean_box = prompts_from_mask(mask, box_margin=0.0)
    mask[72, 57] = True  # the speck
    point_rc, box_rc = prompts_from_mask(mask, box_margin=0.0)
    np.testing.assert_allclose(box_rc, clean_box)
    np.testing.assert_allclose(point_rc, clean_point)
    mask[60:80, 10:22] = True  # a real second piece (a cell cut in two): kept
    _, box_rc = prompts_from_mask(mask, box_margin=0.0)
    np.testing.assert_allclose(box_rc, [20, 10, 79, 80])
