"""Prompts the preview leaves out are said, once until it stops happening: a click just off
the image gave no preview and no word, and in one-object mode every box but the newest was
ignored silently."""

from __future__ import annotations

import numpy as np

from napari_samtune._qt.annotate_ui import BATCHED_MODE


def _said(notifications, words: str) -> int:
    return sum(words in n for n in notifications)


def test_a_click_off_the_image_is_said_once_and_again_after_a_good_one(
    viewer_widget, notifications
):
    _, widget = viewer_widget
    points = widget.session.layers.points
    height, width = widget.session.annotations.shape
    points.add([height + 5, width / 2])
    assert not widget.session.layers.preview.data.any()
    assert _said(notifications, "outside the image is left out") == 1
    points.add([height + 9, 3])
    assert _said(notifications, "outside the image is left out") == 1  # once
    points.data = np.array([[height / 2, width / 2]])  # on the image: previewed
    assert widget.session.layers.preview.data.any()
    points.add([-20, 10])
    assert _said(notifications, "outside the image is left out") == 2


def test_several_boxes_of_one_object_say_that_the_newest_is_used(viewer_widget, notifications):
    _, widget = viewer_widget
    boxes = widget.session.layers.boxes
    boxes.add_rectangles(np.array([[20.0, 20.0], [80.0, 80.0]]))
    assert _said(notifications, "the newest box is used") == 0
    boxes.add_rectangles(np.array([[150.0, 150.0], [200.0, 210.0]]))
    said = [n for n in notifications if "the newest box is used" in n]
    assert len(said) == 1 and BATCHED_MODE in said[0]
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)  # an object per box: nothing left out
    boxes.add_rectangles(np.array([[100.0, 30.0], [140.0, 90.0]]))
    assert _said(notifications, "the newest box is used") == 1
