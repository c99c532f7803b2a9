"""A box across the tiles of a large image: the widget embeds the view made for it in the
background (never on the main thread) and then shows the mask SAM gives there."""

from __future__ import annotations

import threading

import numpy as np

from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

BOX_RC = np.array([[150.0, 120.0], [150.0, 300.0], [300.0, 300.0], [300.0, 120.0]])  # rows, cols


def test_a_box_in_no_tile_is_embedded_in_the_background_then_previewed(
    sensitive_widget, sensitive_sam, drain_jobs
):
    image = make_image((512, 700), seed=7)[0]
    _, widget = sensitive_widget(image, "large")
    main = threading.current_thread()
    on_main = []
    sensitive_sam.image_encoder.register_forward_hook(
        lambda *_: on_main.append(threading.current_thread() is main)
    )
    layers = widget.session.layers
    layers.boxes.add_rectangles(BOX_RC)  # 181 px wide, across the 256 px tiles
    assert not widget.update_preview()  # it waits for the view's embedding
    assert widget.runner.is_running()
    drain_jobs(widget)
    assert on_main == [False]  # one encoder pass, in the worker
    assert widget.update_preview()
    # in the widget's precision, "auto" (bf16 on a CPU that runs it faster): pixel for pixel
    reference = Segmenter(sensitive_sam, model_id="ref", use_disk_cache=False)
    reference.set_image(image)
    expected = reference.predict(box_xyxy=np.array([120.0, 150.0, 300.0, 300.0])).mask
    assert expected.any()
    np.testing.assert_array_equal(layers.preview.data > 0, expected)
    assert widget.commit() == [1]
