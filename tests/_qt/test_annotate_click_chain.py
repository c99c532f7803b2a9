"""In the widget, each click of an object refines the mask of the clicks before it (fed
back as mask_input, as SAM trains): corrective clicks used to be answered all at once."""

from __future__ import annotations

import numpy as np

from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

CLICKS_RC = [(30.0, 40.0), (52.0, 60.0), (70.0, 25.0)]  # napari (row, col)


def test_the_preview_of_several_clicks_feeds_each_mask_to_the_next(sensitive_widget, sensitive_sam):
    image = make_image((96, 112), seed=4)[0]
    viewer, widget = sensitive_widget(image, "cells")
    # in the widget's precision, "auto" (bf16 on a CPU that runs it faster): pixel for pixel
    reference = Segmenter(sensitive_sam, model_id="ref", use_disk_cache=False)
    reference.set_image(image)
    points = widget.session.layers.points
    previous = None
    for k, click in enumerate(CLICKS_RC, start=1):
        points.add(click)
        assert widget.update_preview()
        xy = np.array(CLICKS_RC[:k])[:, ::-1]
        previous = reference.predict(
            xy, np.ones(k, np.int64), mask_input=previous, multimask=None if k == 1 else False
        )
        np.testing.assert_array_equal(widget.session.layers.preview.data > 0, previous.mask)
    at_once = reference.predict(np.array(CLICKS_RC)[:, ::-1], np.ones(3, np.int64))
    assert not np.array_equal(previous.low_res_logits, at_once.low_res_logits)
    assert widget.commit() == [1]
    np.testing.assert_array_equal(viewer.layers["cells annotations"].data == 1, previous.mask)


def test_u_puts_the_clicks_back_without_segmenting_each_step_again(sensitive_widget, drain_jobs):
    """The commit's removal of the prompts segmented the box left alone, and U segmented
    every layer event of the way back (points without their labels, no boxes yet), each
    replacing the chain's steps: 41 decoder passes for 21 clicks."""
    image = make_image((96, 112), seed=4)[0]
    viewer, widget = sensitive_widget(image, "cells")
    points = widget.session.layers.points
    widget.session.layers.boxes.add_rectangles(np.array([[20.0, 30.0], [80.0, 90.0]]))
    for click in CLICKS_RC:
        points.add(click)
    widget.toggle_polarity()
    points.add((60.0, 80.0))  # a negative click: its label must come back too
    assert widget.update_preview()
    before = widget.session.layers.preview.data.copy()
    assert widget.commit() == [1]
    drain_jobs(widget)
    calls = []
    predict = widget.segmenter.predict
    widget.segmenter.predict = lambda **prompt: calls.append(prompt) or predict(**prompt)
    assert widget.undo()
    assert calls == []  # the chain still holds every step
    np.testing.assert_array_equal(widget.session.layers.preview.data, before)
    assert list(widget.session.layers.points.features["label"])[-1] == "negative"
