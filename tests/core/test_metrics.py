"""Instance metrics against cases whose scores are computed by hand in each test."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.metrics import (
    IOU_THRESHOLDS,
    SegmentationScores,
    evaluate_instances,
    instance_scores,
    iou_matrix,
    match_counts,
)


def _labels(shape: tuple[int, int], *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """A uint32 label image with rectangles (label_id, row0, row1, col0, col1), ends exclusive."""
    image = np.zeros(shape, dtype=np.uint32)
    for label_id, row0, row1, col0, col1 in boxes:
        image[row0:row1, col0:col1] = label_id
    return image


def _assert_scores(scores: SegmentationScores, **expected: float) -> None:
    for name, value in expected.items():
        assert getattr(scores, name) == pytest.approx(value), name


THREE_OBJECTS = _labels((40, 40), (1, 0, 10, 0, 10), (2, 20, 30, 0, 10), (3, 5, 15, 25, 35))


def test_thresholds_are_050_to_095_in_steps_of_005():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_perfect_match_with_permuted_ids_scores_one():
    prediction = np.choose(THREE_OBJECTS, [0, 3, 1, 2]).astype(np.uint16)  # ids 1,2,3 -> 3,1,2
    scores = instance_scores(THREE_OBJECTS, prediction)
    _assert_scores(scores, msa=1, sa50=1, sa75=1, precision=1, recall=1, f1=1)


def test_one_missed_object():
    prediction = THREE_OBJECTS * (THREE_OBJECTS != 2)
    counts = match_counts(THREE_OBJECTS, prediction)
    assert counts.tolist() == [[2, 0, 1]] * len(IOU_THRESHOLDS)
    # SA = 2 / (2 + 0 + 1) at every threshold; F1 = 2*2 / (2*2 + 0 + 1).
    scores = instance_scores(THREE_OBJECTS, prediction)
    _assert_scores(scores, msa=2 / 3, sa50=2 / 3, sa75=2 / 3, precision=1, recall=2 / 3, f1=0.8)


def test_split_object():
    labels = _labels((10, 10), (1, 0, 10, 0, 10))
    prediction = _labels((10, 10), (1, 0, 10, 0, 6), (2, 0, 10, 6, 10))  # 60 + 40 pixels
    iou, gt_ids, pred_ids = iou_matrix(labels, prediction)
    np.testing.assert_allclose(iou, [[0.6, 0.4]])
    assert gt_ids.tolist() == [1] and pred_ids.tolist() == [1, 2]
    # IoU 0.6 > t only for t = 0.5, 0.55: there TP=1, FP=1, FN=0 (SA 1/2); above TP=0, FP=2, FN=1.
    scores = instance_scores(labels, prediction)
    _assert_scores(scores, msa=0.1, sa50=0.5, sa75=0, precision=0.5, recall=1, f1=2 / 3)


def test_merged_objects():
    labels = _labels((10, 20), (1, 0, 10, 0, 12), (2, 0, 10, 12, 20))  # 120 + 80 pixels
    prediction = _labels((10, 20), (5, 0, 10, 0, 20))
    np.testing.assert_allclose(iou_matrix(labels, prediction)[0], [[0.6], [0.4]])
    # t = 0.5, 0.55: TP=1, FP=0, FN=1 (SA 1/2); above: TP=0, FP=1, FN=2 (SA 0).
    scores = instance_scores(labels, prediction)
    _assert_scores(scores, msa=0.1, sa50=0.5, sa75=0, precision=1, recall=0.5, f1=2 / 3)


def test_iou_of_exactly_one_half_does_not_match():
    labels = _labels((10, 20), (1, 0, 10, 0, 10), (2, 0, 10, 10, 20))
    prediction = _labels((10, 20), (1, 0, 10, 0, 20))  # IoU 100/200 with each
    assert match_counts(labels, prediction)[0].tolist() == [0, 1, 2]
    _assert_scores(instance_scores(labels, prediction), msa=0, sa50=0, precision=0, f1=0)


@pytest.mark.parametrize(
    ("n_pixels", "n_thresholds_passed"),
    [(60, 2), (75, 5), (96, 10), (50, 0)],  # IoU 0.6, 0.75, 0.96, 0.5 with a 100-pixel object
)
def test_iou_between_thresholds(n_pixels, n_thresholds_passed):
    labels = _labels((10, 10), (1, 0, 10, 0, 10))
    prediction = np.zeros_like(labels)
    prediction.reshape(-1)[:n_pixels] = 4
    # A match (SA 1) strictly above each passed threshold, TP=0, FP=1, FN=1 (SA 0) elsewhere.
    expected_msa = n_thresholds_passed / 10
    scores = instance_scores(labels, prediction)
    _assert_scores(scores, msa=expected_msa, sa50=float(n_thresholds_passed >= 1))
    assert scores.sa75 == (1.0 if n_thresholds_passed > 5 else 0.0)


def test_ids_need_not_be_consecutive_or_small():
    labels = _labels((10, 10), (1, 0, 10, 0, 10))
    prediction = _labels((10, 10), (1, 0, 10, 0, 6), (2, 0, 10, 6, 10))
    reference = instance_scores(labels, prediction)
    big = np.uint64(2**40)  # beyond the bincount fast path
    relabelled_gt = np.where(labels == 1, big + 7, 0).astype(np.uint64)
    relabelled_pred = np.choose(prediction, [0, 900, 3]).astype(np.int32)
    assert instance_scores(relabelled_gt, relabelled_pred) == reference
    _, gt_ids, pred_ids = iou_matrix(relabelled_gt, relabelled_pred)
    assert gt_ids.tolist() == [2**40 + 7] and pred_ids.tolist() == [3, 900]


def test_empty_prediction_empty_ground_truth_and_both_empty():
    empty = np.zeros_like(THREE_OBJECTS)
    zeros = dict(msa=0, sa50=0, sa75=0, precision=0, recall=0, f1=0)
    _assert_scores(instance_scores(THREE_OBJECTS, empty), **zeros)
    _assert_scores(instance_scores(empty, THREE_OBJECTS), **zeros)
    assert match_counts(THREE_OBJECTS, empty)[0].tolist() == [0, 0, 3]
    assert match_counts(empty, THREE_OBJECTS)[0].tolist() == [0, 3, 0]
    ones = dict(msa=1, sa50=1, sa75=1, precision=1, recall=1, f1=1)
    _assert_scores(instance_scores(empty, empty), **ones)


def test_low_thresholds_use_optimal_not_greedy_matching():
    # One image row: GT A=[0,10), B=[10,16); predictions X=[4,14), Y=[0,4).
    # IoU(A,X)=6/14, IoU(B,X)=4/12, IoU(A,Y)=4/10, IoU(B,Y)=0. Greedy by IoU takes A-X and
    # leaves B unmatched; the optimum A-Y, B-X matches both.
    labels = _labels((1, 16), (1, 0, 1, 0, 10), (2, 0, 1, 10, 16))
    prediction = _labels((1, 16), (1, 0, 1, 4, 14), (2, 0, 1, 0, 4))
    np.testing.assert_allclose(iou_matrix(labels, prediction)[0], [[6 / 14, 4 / 10], [4 / 12, 0]])
    assert match_counts(labels, prediction, thresholds=[0.3, 0.35, 0.5]).tolist() == [
        [2, 0, 0],
        [1, 1, 1],
        [0, 2, 2],
    ]


def test_iou_matrix_agrees_with_pairwise_masks(rng):
    labels = rng.integers(0, 6, size=(30, 40)).astype(np.uint8)
    prediction = rng.integers(0, 9, size=(30, 40)).astype(np.uint16) * 3
    iou, gt_ids, pred_ids = iou_matrix(labels, prediction)
    for i, g in enumerate(gt_ids):
        for j, p in enumerate(pred_ids):
            a, b = labels == g, prediction == p
            assert iou[i, j] == pytest.approx((a & b).sum() / (a | b).sum())


def test_aggregation_pools_counts_and_averages_images():
    missed = _labels((10, 10), (1, 0, 5, 0, 5))
    result = evaluate_instances([THREE_OBJECTS, missed], [THREE_OBJECTS, np.zeros_like(missed)])
    assert result.counts.shape == (2, 10, 3)
    _assert_scores(result.per_image[0], msa=1, precision=1)
    _assert_scores(result.per_image[1], msa=0, precision=0)
    # Pooled: TP=3, FP=0, FN=1 -> SA 3/4, precision 1, recall 3/4, F1 6/7.
    _assert_scores(result.pooled, msa=0.75, sa50=0.75, precision=1, recall=0.75, f1=6 / 7)
    _assert_scores(result.image_mean, msa=0.5, sa50=0.5, precision=0.5, recall=0.5, f1=0.5)
    summary = result.summary()
    assert summary["msa"] == pytest.approx(0.75)
    assert summary["image_mean_msa"] == pytest.approx(0.5)
    assert len(summary) == 12


@pytest.mark.parametrize(
    ("labels", "prediction", "error", "match"),
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), ValueError, "same image"),
        (np.zeros((4, 4), float), np.zeros((4, 4), int), TypeError, "integer label"),
        (np.full((4, 4), -1), np.zeros((4, 4), int), ValueError, "negative"),
    ],
)
def test_bad_label_images_are_clear_errors(labels, prediction, error, match):
    with pytest.raises(error, match=match):
        instance_scores(labels, prediction)
    with pytest.raises(error, match="image 1"):
        evaluate_instances([np.zeros((4, 4), int), labels], [np.zeros((4, 4), int), prediction])


def test_bad_arguments_are_clear_errors():
    image = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="one prediction per"):
        evaluate_instances([image, image], [image])
    with pytest.raises(ValueError, match="at least one"):
        evaluate_instances([], [])
    with pytest.raises(ValueError, match=r"thresholds=\[1.0\]"):
        match_counts(image, image, thresholds=[1.0])
    with pytest.raises(ValueError, match="expected"):
        SegmentationScores.from_counts(np.zeros((3, 3)))


def _grid_of_objects(n_per_side: int, size: int) -> np.ndarray:
    """(n * size, n * size) labels: n x n square objects of ``size`` px, ids 1..n*n."""
    ids = np.arange(1, n_per_side**2 + 1, dtype=np.uint32).reshape(n_per_side, n_per_side)
    return np.kron(ids, np.ones((size, size), dtype=np.uint32))


def test_scores_of_many_objects_take_memory_of_the_pixels_not_of_every_pair():
    """A dense table of every (gt, prediction) pair took 3.3 GB for 10,000 objects."""
    import tracemalloc

    labels = _grid_of_objects(60, 10)  # 3600 objects, 600 x 600 px: 360k pixels
    prediction = np.roll(labels, 1, axis=1)  # each object shifted by 1 px: IoU 9/11
    tracemalloc.start()
    scores = instance_scores(labels, prediction)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scores.sa50 == pytest.approx(3599 / 3601, abs=1e-3)  # one object wraps around
    assert peak < 60e6  # a dense 3601 x 3601 table is 104 MB per copy


def test_low_threshold_matching_is_the_largest_one_to_one_matching(rng):
    from scipy.optimize import linear_sum_assignment

    for _ in range(20):
        labels = rng.integers(0, 7, size=(12, 12)).astype(np.uint8)
        prediction = rng.integers(0, 7, size=(12, 12)).astype(np.uint8)
        iou, _, _ = iou_matrix(labels, prediction)
        hits = iou > 0.1
        rows, cols = linear_sum_assignment(hits, maximize=True)
        expected = int(hits[rows, cols].sum())
        assert match_counts(labels, prediction, [0.1])[0, 0] == expected
