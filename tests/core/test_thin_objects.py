"""Objects less than half of every 4 x 4 block of the low-res grid (2 px filaments, small
cells off the grid) had an empty training truth: an empty prediction was trained toward
IoU 1 and their corrective click was placed beside them."""

from __future__ import annotations

import numpy as np
import torch

from napari_samtune.core.losses import hard_truth, mask_iou
from napari_samtune.core.train_step import PatchInput, _next_click, lowres_targets

SIDE = 64  # the model input of this test (low-res grid 16 x 16)


def _targets(labels: np.ndarray) -> torch.Tensor:
    return lowres_targets(labels, np.array([1]), labels.shape, SIDE, torch.device("cpu"))


def _line() -> np.ndarray:
    labels = np.zeros((SIDE, SIDE), dtype=np.uint32)
    labels[21:23, 8:56] = 1  # 2 px high, rows 21-22: half of each block of rows 20-23
    return labels


def test_a_thin_object_s_truth_is_its_most_covered_blocks():
    targets = _targets(_line())
    assert float(targets.max()) == 0.5  # nothing above half: "> 0.5" was empty
    truth = hard_truth(targets)[0, 0]
    rows, cols = np.nonzero(truth.numpy())
    assert set(rows.tolist()) == {5} and (cols.min(), cols.max()) == (2, 13)
    square = np.zeros((SIDE, SIDE), dtype=np.uint32)
    square[30:34, 30:34] = 1  # 4 x 4 px at offset 2 of the grid: a quarter of 4 blocks
    assert hard_truth(_targets(square))[0, 0].sum() == 4
    big = np.zeros((SIDE, SIDE), dtype=np.uint32)
    big[8:40, 8:40] = 1  # more than half covered somewhere: the usual truth, unchanged
    torch.testing.assert_close(hard_truth(_targets(big)), _targets(big) > 0.5)


def test_an_empty_prediction_of_a_thin_object_scores_0_and_gets_a_click_on_it():
    targets = _targets(_line())
    empty = torch.full((1, 1, SIDE // 4, SIDE // 4), -5.0)
    assert float(mask_iou(empty, targets)) == 0.0  # was 1.0: "nothing there, nothing found"
    on_it = torch.where(targets > 0.25, 5.0, -5.0)
    assert float(mask_iou(on_it, targets)) == 1.0  # was 0.0
    inp = PatchInput((0, 0, 0, 0), None, (SIDE, SIDE), (SIDE, SIDE), _line()[None] > 0, targets)
    points, labels = _next_click(empty, inp)
    assert int(labels[0, 0]) == 1  # add: the object was missed
    x, y = points[0, 0].tolist()
    assert 20 <= y <= 23 and 8 <= x <= 55  # on the line, not beside it
