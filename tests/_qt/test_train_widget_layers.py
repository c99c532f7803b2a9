"""The training widget's layer choices: what is offered as labels, and how the choices
follow a person renaming the layers in the viewer."""

from __future__ import annotations

from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.presets import MachineResources

SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


def test_renaming_the_layers_chosen_keeps_them_chosen(cells_viewer):
    """Renaming a chosen layer (napari's "Labels" to "nuclei") switched the combo box to
    the first other layer, and "Add pair" then added a pair nobody chose."""
    viewer = cells_viewer()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    data.image_combo.setCurrentText("cells1")
    data.labels_combo.setCurrentText("cells1 labels")
    data.labels_combo.activated.emit(data.labels_combo.currentIndex())  # a person's choice
    viewer.layers["cells1 labels"].name = "nuclei"
    viewer.layers["cells1"].name = "dapi"
    assert (data.image_combo.currentText(), data.labels_combo.currentText()) == ("dapi", "nuclei")
    assert data.add_current_pair()
    assert data.layer_pairs == [(viewer.layers["dapi"], viewer.layers["nuclei"])]
    viewer.layers.remove("dapi")  # a chosen layer removed: another one is offered
    assert data.image_combo.currentText() == "cells0" and not data.layer_pairs


def test_the_annotation_widget_s_preview_layer_is_not_offered_as_labels(viewer_widget):
    """The Annotate widget's "<image> current object" layer is its uncommitted preview, never
    annotations to train on; it was offered as labels (ranked lower). Image layers are
    still offered: a mask opened as an image is told how to convert."""
    viewer, annotate = viewer_widget
    annotate.session.layers.points.add([128, 128])
    preview = annotate.session.layers.preview
    assert preview.name == "nuclei current object" and preview.data.any()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    combo = widget.train_data.labels_combo
    offered = [combo.itemText(i) for i in range(combo.count())]
    assert "nuclei annotations" in offered and "nuclei" in offered  # an Image layer
    assert preview.name not in offered
    viewer.add_labels(preview.data.copy(), name="nuclei labels")
    offered = [combo.itemText(i) for i in range(combo.count())]
    assert "nuclei labels" in offered and preview.name not in offered
