"""The training widget's layer choices while a person renames the layers in the viewer."""

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
