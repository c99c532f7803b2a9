"""The Finetune widget on layers and choices that were mishandled: multiscale (pyramid)
layers, a z-stack paired with one plane's labels, and a refusal taken back by unticking
separate validation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.synthetic import make_image


@pytest.fixture
def viewer_and_widget(finetune_on_cells):
    return finetune_on_cells()


def test_multiscale_layers_train_on_their_full_resolution(viewer_and_widget, add_pair):
    """np.asarray of a pyramid's data is its coarsest level: training took those pixels,
    and refused full-resolution labels next to a pyramid as of another size."""
    viewer, widget = viewer_and_widget
    image, labels = make_image((128, 128), seed=7)
    viewer.add_image([image, image[::2, ::2]], name="pyramid", multiscale=True)
    viewer.add_labels([labels, labels[::2, ::2]], name="pyramid labels", multiscale=True)
    viewer.add_labels(labels, name="full labels")
    data = widget.train_data
    assert add_pair(data, "pyramid", "pyramid labels"), data.pair_error.text()
    assert add_pair(data, "pyramid", "full labels"), data.pair_error.text()
    pairs, _ = data.snapshot()
    assert [pair.image.shape for pair in pairs] == [(128, 128), (128, 128)]
    for pair in pairs:
        np.testing.assert_array_equal(pair.image, image)
        np.testing.assert_array_equal(pair.labels, labels)


@pytest.mark.parametrize(
    "stack_shape, rgb", [((30, 64, 64), False), ((2, 64, 64, 3), True)], ids=["gray", "rgb"]
)
def test_a_z_stack_next_to_one_plane_s_labels_is_called_a_stack(
    viewer_and_widget, add_pair, stack_shape, rgb
):
    """A 30-plane stack (or a stack of RGB planes) paired with one plane's labels was called
    an image with channels, to split into 30 layers or merge to RGB."""
    viewer, widget = viewer_and_widget
    _, labels = make_image((64, 64), seed=5)
    viewer.add_image(np.zeros(stack_shape, np.uint8), name="stack", rgb=rgb)
    viewer.add_labels(labels, name="plane labels")
    data = widget.train_data
    assert not add_pair(data, "stack", "plane labels")
    problem = data.pair_error.text()
    assert f"image layer 'stack' is a stack of {stack_shape[0]} planes" in problem
    assert f"labels of shape {(stack_shape[0], 64, 64)!r}" in problem
    assert "channel" not in problem and "Split Stack" not in problem


def test_unticking_separate_validation_takes_back_its_refusal(viewer_and_widget, add_pair):
    """A Start refused for empty validation data kept saying "fix the problems marked in
    red" once separate validation was unticked, with nothing marked any more."""
    _, widget = viewer_and_widget
    assert add_pair(widget.train_data, "cells0", "cells0 labels")
    widget.separate_val_check.setChecked(True)
    assert widget.start() is None  # no validation pair added
    assert "fix the problems marked in red" in widget.start_error.text()
    widget.separate_val_check.setChecked(False)
    assert not widget.start_error.isVisibleTo(widget) and not widget.start_error.text()
