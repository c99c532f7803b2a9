"""A training step's host work, made cheaper for GPU steps, gives exactly what the
straightforward code gave (benchmarks/bench_host.py keeps that code as its baseline)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_samtune.core.prompts import corrective_point
from napari_samtune.core.synthetic import SyntheticStyle, make_image
from napari_samtune.core.train_step import lowres_targets

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_host import near_miss, stock_corrective_point, stock_targets  # noqa: E402

CPU = torch.device("cpu")


def _labels(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Crowded objects, some cut by the edges (the patch is a crop of a larger image)."""
    big = (shape[0] + 40, shape[1] + 40)
    _, labels = make_image(big, SyntheticStyle(n_objects=(30, 40), radius=(4.0, 14.0)), seed)
    return labels[20 : 20 + shape[0], 17 : 17 + shape[1]]


@pytest.mark.parametrize(
    ("shape", "img_size"),
    [((64, 64), 64), ((64, 45), 64), ((47, 64), 64), ((40, 50), 64), ((96, 61), 64)],
)
def test_low_res_targets_equal_full_size_masks_pooled(shape, img_size):
    """Patches of the model's size, with sides that are not multiples of 4 (the last blocks
    straddle the padding), and patches that are resized (down and up) first."""
    for seed in range(4):
        labels = _labels(shape, seed)
        present = np.unique(labels)[1:]
        absent = np.array([int(labels.max()) + 3], dtype=labels.dtype)  # an empty target
        ids = np.concatenate([present[::-1], absent])
        side = max(shape)
        input_size = tuple(round(s * img_size / side) for s in shape)
        expected = stock_targets(labels, ids, input_size, img_size, CPU)
        found = lowres_targets(labels, ids, input_size, img_size, CPU)
        assert found.shape == (len(ids), 1, img_size // 4, img_size // 4)
        assert found.dtype == torch.float32
        torch.testing.assert_close(found, expected, rtol=0, atol=0)
        assert found[-1].sum() == 0 and found[:-1].flatten(1).sum(1).min() > 0


def test_low_res_targets_refuse_the_background_id():
    labels = _labels((64, 64), 0)
    with pytest.raises(ValueError, match="id 0 is the background"):
        lowres_targets(labels, np.array([1, 0], dtype=labels.dtype), (64, 64), 64, CPU)


def test_corrective_clicks_equal_the_whole_grid_computation():
    """Near misses (shifted, grown, shrunk), errors at the grid's edges, ties between equal
    regions, perfect predictions and empty ones, and noise everywhere."""
    rng = np.random.default_rng(0)
    cases = []
    for seed in range(6):
        labels = _labels((64, 64), seed)
        truth = labels[None] == np.unique(labels)[1:, None, None]
        cases += list(zip(near_miss(truth, rng), truth, strict=True))
        cases += [(t, t) for t in truth[:3]] + [(np.zeros_like(t), t) for t in truth[:3]]
        cases += [(rng.random(t.shape) > 0.7, t) for t in truth[:3]]
    tie = np.zeros((20, 20), bool)
    tie[2:5, 2:5] = tie[12:15, 12:15] = True  # two equal misses: the first in row order wins
    cases.append((np.zeros_like(tie), tie))
    edge = np.zeros((20, 20), bool)
    edge[:, 14:] = True  # an object cut by the edge, half of it missed
    cases.append((ndimage.shift(edge, (0, 3), order=0), edge))
    changed = 0
    for prediction, target in cases:
        point, label = corrective_point(prediction, target)
        expected_point, expected_label = stock_corrective_point(prediction, target)
        assert label == expected_label
        np.testing.assert_array_equal(point, expected_point)
        changed += label != -1 and point.any()
    assert changed > 0.6 * len(cases)  # most cases do place a click away from (0, 0)
