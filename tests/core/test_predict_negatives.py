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
