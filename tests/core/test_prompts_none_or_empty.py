"""None and empty prompts in the Segmenter's methods mean "none", as ``predict``'s
defaults do (found by scripting the API: None was reported as NaN values)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.prompt_checks import check_boxes, check_points
from napari_samtune.core.synthetic import make_dataset


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    model = load_model("nano")
    segmenter = Segmenter(model.sam, model.model_id, use_disk_cache=False)
    segmenter.set_image(make_dataset(1, (40, 48), seed=0)[0][0])
    return segmenter


def test_none_for_a_batch_of_prompts_means_no_prompts(segmenter):
    # predict_boxes(None) said "boxes_xyxy contains NaN or infinite values (1 of 1): nan"
    for labels in (segmenter.predict_boxes(None), segmenter.predict_points_batched(None)):
        assert labels.shape == (40, 48) and labels.dtype == np.uint32 and not labels.any()
    boxes = [[8, 6, 30, 28]]
    without = segmenter.predict_with_negatives(boxes, None, None)
    np.testing.assert_array_equal(without, segmenter.predict_boxes(boxes))
    assert without.any()


def test_empty_points_beside_a_box_are_no_points_and_an_empty_box_no_box(segmenter):
    # predict(points_xy=[], point_labels=[], box_xyxy=box) said "points_xy must have shape
    # (N, 2) with N >= 1", and box_xyxy=[] "must be one XYXY box of shape (4,)"
    box, point = [8, 6, 30, 28], [[20, 18]]
    by_box = segmenter.predict(box_xyxy=box).mask
    assert by_box.any()
    for points, labels in (([], []), (np.zeros((0, 2)), np.zeros(0)), ([], None)):
        result = segmenter.predict(points_xy=points, point_labels=labels, box_xyxy=box)
        np.testing.assert_array_equal(result.mask, by_box)
    by_point = segmenter.predict(points_xy=point).mask
    np.testing.assert_array_equal(segmenter.predict(points_xy=point, box_xyxy=[]).mask, by_point)
    with pytest.raises(ValueError, match="predict needs a prompt"):
        segmenter.predict(points_xy=[], box_xyxy=np.zeros((0, 4)))
    with pytest.raises(ValueError, match="point_labels has 1 entries for 2 points"):
        segmenter.predict(points_xy=[[20, 18], [5, 5]], point_labels=[1])
    with pytest.raises(ValueError, match=r"points_xy must have shape \(N, 2\) with N >= 1"):
        segmenter.predict(points_xy=[], point_labels=[1], box_xyxy=box)


def test_a_prompt_of_none_is_named_as_none_not_as_nan():
    for check, name in ((check_points, "points_xy"), (check_boxes, "boxes_xyxy")):
        with pytest.raises(TypeError, match=f"^{name} is None; pass an array of numbers$"):
            check(None, (40, 48))
