"""The Finetune widget's messages about layers, worded for a napari user: a float mask
opened as an Image layer and chosen as labels, an image of more axes than a stack holds."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.layers._layer_actions import _convert_to_labels

from napari_samtune._qt import layer_pairs
from napari_samtune.core import data_checks
from napari_samtune.core.tiff_files import float_labels_problem


@pytest.fixture
def viewer_and_widget(finetune_on_cells):
    return finetune_on_cells(n=1)


def test_a_float_mask_image_layer_is_told_to_convert_to_labels_in_napari(
    viewer_and_widget, add_pair
):
    """It was told to call ``.astype('uint32')``, which a napari user has nowhere to type."""
    viewer, widget = viewer_and_widget
    mask = viewer.layers["cells0 labels"].data.astype(np.float32)
    viewer.add_image(mask, name="mask.tif")
    data = widget.train_data
    assert not add_pair(data, "cells0", "mask.tif")
    message = data.pair_error.text()
    assert "astype" not in message
    assert "'mask.tif' is an Image layer of float32 values" in message
    assert "right-click 'mask.tif' in the layer list and choose Convert to Labels" in message
    viewer.layers.selection = {viewer.layers["mask.tif"]}
    _convert_to_labels(viewer.layers)  # what the menu item does: the advice works
    [converted] = [layer for layer in viewer.layers if isinstance(layer, Labels)][1:]
    assert add_pair(data, "cells0", converted.name), data.pair_error.text()


def test_a_float_image_with_fractions_keeps_the_core_s_description(viewer_and_widget, add_pair):
    """Convert to Labels would truncate fractions: no such advice for a probability map."""
    viewer, widget = viewer_and_widget
    viewer.add_image(viewer.layers["cells0 labels"].data / 2.0, name="halves")
    data = widget.train_data
    assert not add_pair(data, "cells0", "halves")
    message = data.pair_error.text()
    assert "fractions" in message and "Convert to Labels" not in message


@pytest.mark.parametrize("stack", [False, True])
@pytest.mark.parametrize("fraction", [False, True])
def test_a_float_layer_chosen_as_labels_is_read_once_per_check(monkeypatch, stack, fraction):
    """The core's label check and the widget's advice both read the floats through
    float_labels_problem (0.25 s each for 4096 x 4096 float32): a 2D layer is read once,
    and a stack's first plane twice at most."""
    labels = np.zeros((2, 16, 16) if stack else (16, 16), np.float32)
    labels[..., 4:8, 4:8] = 1.0 + (0.5 if fraction else 0.0)
    image = Image(np.zeros(labels.shape, np.uint8), name="img")
    calls = []

    def counted(array):
        calls.append(array.size)
        return float_labels_problem(array)

    monkeypatch.setattr(data_checks, "float_labels_problem", counted)
    monkeypatch.setattr(layer_pairs, "float_labels_problem", counted)
    message = layer_pairs.pair_problem((image, Image(labels, name="mask")))
    assert ("fractions" in message) == fraction
    assert ("Convert to Labels" in message) == (not fraction)
    assert calls[0] == 256 and len(calls) == (2 if stack and not fraction else 1), calls


@pytest.mark.parametrize(
    "shape, told",
    [
        ((3, 40, 40), "choose Split Stack to pair one channel, or Merge to RGB"),
        ((2, 5, 40, 40), "2 more axes than labels layer 'mask' (40, 40): a pair is one plane"),
        ((2, 3, 5, 40, 40), "3 more axes than labels layer"),
    ],
)
def test_axes_beyond_a_stack_are_not_called_channels(shape, told):
    """A (time, z, H, W) layer paired with one plane's labels was told its two extra axes were
    channels, to be split or merged to RGB."""
    labels = np.zeros((40, 40), np.uint16)
    labels[5:15, 5:15] = 1
    message = layer_pairs.pair_problem(
        (Image(np.zeros(shape, np.float32)), Labels(labels, name="mask"))
    )
    assert told in message
    assert ("channels" in message) == (len(shape) == 3)
