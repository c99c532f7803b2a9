"""Batched-mode ids apart from the preview's other planes, known without reading them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune._qt import preview_tops
from napari_samtune._qt.image_planes import describe_image
from napari_samtune._qt.prompt_layers import PromptLayers
from napari_samtune.core.label_files import image_fingerprint


def _layers(viewer) -> PromptLayers:
    image = viewer.layers["stack"]
    axes = describe_image(image.data.shape)
    return PromptLayers(viewer, image, axes, image_fingerprint(image.data))


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 32, 32), np.uint8), name="stack")
    return viewer


def _objects(*ids: int) -> np.ndarray:
    """uint32 (32, 32) with a 4 x 4 square of each id, side by side."""
    labels = np.zeros((32, 32), np.uint32)
    for i, object_id in enumerate(ids):
        labels[2:6, 2 + 6 * i : 6 + 6 * i] = object_id
    return labels


def _ids(labels: np.ndarray) -> list[int]:
    return sorted(set(np.unique(labels).tolist()) - {0})


def _write_unseen(layers: PromptLayers, plane: int, object_id: int) -> None:
    """Put ``object_id`` on ``plane`` behind the widget's back (no event, no write of its)."""
    layers.preview.data[plane, 20:24, 20:24] = object_id


def test_ids_go_above_the_other_planes_without_reading_them(viewer):
    layers = _layers(viewer)
    layers.set_preview(0, _objects(1, 2))
    first = layers.ids_apart_from_other_planes(1, _objects(1, 2))
    assert _ids(first) == [3, 4]
    layers.set_preview(1, first)
    _write_unseen(layers, 3, 100)  # a plane the click does not read: 100 is not seen
    assert _ids(layers.ids_apart_from_other_planes(2, _objects(1))) == [5]
    assert _ids(layers.ids_apart_from_other_planes(0, _objects(1, 2))) == [5, 6]  # not itself
    layers.set_preview(1, None)  # emptied: its ids no longer count
    assert _ids(layers.ids_apart_from_other_planes(2, _objects(1))) == [3]
    layers.clear_preview()
    assert _ids(layers.ids_apart_from_other_planes(2, _objects(1, 2))) == [1, 2]


def test_propagation_s_planes_cleared_no_longer_count(viewer):
    layers = _layers(viewer)
    for plane in (0, 1, 2):
        layers.set_preview(plane, _objects(plane + 1))
    layers.propagated.update({0: None, 2: None})  # what clear_propagated empties
    layers.clear_propagated(keep=0)
    assert _ids(layers.ids_apart_from_other_planes(3, _objects(1))) == [3]  # plane 1's 2 (+1)


def test_a_painted_preview_is_read_whole_from_then_on(viewer):
    """The person's strokes (and their undo, which napari does unsaid) are not tracked."""
    layers = _layers(viewer)
    layers.set_preview(0, _objects(1))
    _write_unseen(layers, 3, 100)
    layers.preview.paint((2, 10, 10), 77)
    assert _ids(layers.ids_apart_from_other_planes(1, _objects(1))) == [101]
    layers.clear_preview()  # even emptied, the layer's undo could bring strokes back
    layers.preview.data[2, 0, 0] = 5  # as that undo would, unsaid
    assert _ids(layers.ids_apart_from_other_planes(1, _objects(1))) == [6]


def test_the_tops_stay_with_the_layer_when_the_image_is_picked_again(viewer):
    layers = _layers(viewer)
    layers.set_preview(0, _objects(1, 2))
    again = _layers(viewer)
    assert again.preview is layers.preview
    _write_unseen(again, 3, 100)
    assert _ids(again.ids_apart_from_other_planes(1, _objects(1))) == [3]


def test_a_preview_layer_made_elsewhere_is_read_whole(viewer):
    """One the widget did not make in this process (its tops dropped here, as for a layer
    from before): every plane is read, as before tops were kept."""
    layers = _layers(viewer)
    del preview_tops._TRACKED[layers.preview]
    again = _layers(viewer)
    assert again.preview is layers.preview
    _write_unseen(again, 3, 100)
    assert _ids(again.ids_apart_from_other_planes(1, _objects(1))) == [101]
