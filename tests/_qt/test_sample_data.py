"""The plugin's sample data opens through napari's own menu route, ready for training."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.data import ImageLabelPair, prepare_pair


@pytest.mark.parametrize(
    ("key", "name"), [("nuclei", "synthetic nuclei"), ("dark_cells", "synthetic dark cells")]
)
def test_sample_data_opens_as_an_image_with_its_labels(make_napari_viewer, key, name):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", key)
    image, labels = viewer.layers[name], viewer.layers[f"{name} labels"]
    assert image.data.shape == labels.data.shape == (512, 512)
    assert image.data.dtype == np.uint8 and np.issubdtype(labels.data.dtype, np.integer)
    assert type(labels).__name__ == "Labels" and image.data.std() > 0
    prepared = prepare_pair(ImageLabelPair(image.data, labels.data, name=name))
    assert len(prepared.object_areas) >= 5 and prepared.object_areas.min() > 0
