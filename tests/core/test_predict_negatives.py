"""Batched prompts with negative points (the widget's batched mode, samtune segment's point
files): where objects overlap the larger logit wins, as without negatives; the first prompt
took every pixel it shared with a later one."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

BOXES = np.array([[10.0, 12.0, 70.0, 60.0], [40.0, 30.0, 100.0, 85.0]])  # overlapping
POSITIVE = np.array([[55.0, 45.0]])
NEGATIVE = np.array([[100.0, 10.0], [5.0, 90.0]])


@pytest.fixture
def segmenter(sensitive_sam):
    segmenter = Segmenter(sensitive_sam, model_id="s", use_disk_cache=False, precision="fp32")
    segmenter.set_image(make_image((96, 112), seed=4)[0])
    return segmenter


def test_overlaps_go_to_the_larger_logit_whatever_the_order(segmenter):
    labels = segmenter.predict_with_negatives(BOXES, POSITIVE, NEGATIVE)
    swapped = segmenter.predict_with_negatives(BOXES[::-1], POSITIVE, NEGATIVE)
    assert set(np.unique(labels)) - {0} <= {1, 2, 3}
    first, second = (labels == 1), (labels == 2)
    np.testing.assert_array_equal(first, swapped == 2)  # box 0 is id 2 when given second
    np.testing.assert_array_equal(second, swapped == 1)
    masks = [
        segmenter.predict(NEGATIVE, np.zeros(2, np.int64), box, multimask=False).mask
        for box in BOXES
    ]
    assert (masks[0] & masks[1]).any()  # an overlap to decide: first come took it all


def test_each_object_is_its_own_prompt_with_every_negative(segmenter):
    labels = segmenter.predict_with_negatives(np.zeros((0, 4)), POSITIVE, NEGATIVE)
    prompt = np.vstack([POSITIVE, NEGATIVE])
    alone = segmenter.predict(prompt, np.array([1, 0, 0]), multimask=False).mask
    np.testing.assert_array_equal(labels == 1, alone)
    with pytest.raises(ValueError):
        segmenter.predict_with_negatives(BOXES, np.array([[500.0, 5.0]]), NEGATIVE)


def test_a_negative_point_far_away_on_a_large_image_leaves_an_object_alone(sensitive_sam):
    """Every negative point joined every object's prompt, and the view answering it was
    stretched over both, downscaled: a cell at one corner of a 1536 px image lost its
    detail to a negative at the opposite corner (nano: IoU 0.84 -> 0.32). A negative in
    the object's view still joins its prompt."""
    segmenter = Segmenter(sensitive_sam, model_id="s", use_disk_cache=False, precision="fp32")
    image = np.zeros((1024, 1024), np.float32)
    image[:256, :256] = make_image((256, 256), seed=4)[0]
    segmenter.set_image(image)
    positive = np.array([[100.0, 100.0]])
    far, near = np.array([[1000.0, 990.0]]), np.array([[130.0, 110.0]])
    decoded = []
    real_decode = segmenter.decode

    def recording(view, points, labels, box, **options):
        decoded.append((view, None if points is None else points[0].tolist()))
        return real_decode(view, points, labels, box, **options)

    segmenter.decode = recording
    alone = segmenter.predict_with_negatives(np.zeros((0, 4)), positive, np.zeros((0, 2)))
    with_far = segmenter.predict_with_negatives(np.zeros((0, 4)), positive, far)
    np.testing.assert_array_equal(with_far, alone)
    assert decoded[0] == decoded[1] == (decoded[0][0], [[100.0, 100.0]])
    segmenter.predict_with_negatives(np.zeros((0, 4)), positive, np.vstack([far, near]))
    assert decoded[2] == (decoded[0][0], [[100.0, 100.0], [130.0, 110.0]])
    box = np.array([[60.0, 60.0, 140.0, 140.0]])
    segmenter.predict_with_negatives(box, np.zeros((0, 2)), np.vstack([far, near]))
    assert decoded[3] == (decoded[0][0], [[130.0, 110.0]])


def test_a_point_left_alone_by_the_negatives_is_decoded_as_without_them(segmenter):
    """A negative point anywhere chose predict_with_negatives, which decoded each lone point
    as one mask where predict_points_batched takes the best of three: every object got
    worse (IoU 0.96 -> 0.41) for a negative point in no object's view."""
    points = np.array([[30.0, 40.0], [80.0, 60.0]])
    alone = segmenter.predict_with_negatives(np.zeros((0, 4)), points, np.zeros((0, 2)))
    np.testing.assert_array_equal(alone, segmenter.predict_points_batched(points))
