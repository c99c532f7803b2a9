"""The Finetune widget's messages about layers, worded for a napari user: a float mask
opened as an Image layer and chosen as labels."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels
from napari.layers._layer_actions import _convert_to_labels


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
