"""The Finetune widget on layers and choices that were mishandled: multiscale (pyramid)
layers, a z-stack paired with one plane's labels, and a refusal taken back by unticking
separate validation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.presets import MachineResources
from napari_samtune.core.synthetic import make_image

SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


@pytest.fixture
def viewer_and_widget(cells_viewer):
    viewer = cells_viewer()
    return viewer, TrainWidget(viewer, machine=SMALL_CPU)


def _add(data, image: str, labels: str) -> bool:
    data.image_combo.setCurrentText(image)
    data.labels_combo.setCurrentText(labels)
    return data.add_current_pair()


def test_multiscale_layers_train_on_their_full_resolution(viewer_and_widget):
    """np.asarray of a pyramid's data is its coarsest level: training took those pixels,
    and refused full-resolution labels next to a pyramid as of another size."""
    viewer, widget = viewer_and_widget
    image, labels = make_image((128, 128), seed=7)
    viewer.add_image([image, image[::2, ::2]], name="pyramid", multiscale=True)
    viewer.add_labels([labels, labels[::2, ::2]], name="pyramid labels", multiscale=True)
    viewer.add_labels(labels, name="full labels")
    data = widget.train_data
    assert _add(data, "pyramid", "pyramid labels"), data.pair_error.text()
    assert _add(data, "pyramid", "full labels"), data.pair_error.text()
    pairs, _ = data.snapshot()
    assert [pair.image.shape for pair in pairs] == [(128, 128), (128, 128)]
    for pair in pairs:
        np.testing.assert_array_equal(pair.image, image)
        np.testing.assert_array_equal(pair.labels, labels)
