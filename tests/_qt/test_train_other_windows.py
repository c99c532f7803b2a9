"""A model finetuned in one napari window is listed in the others' panels too: a second
window's Annotate panel (and Finetune panel) listed it only after its refresh button was
pressed, while the README says the model appears in the annotation widget when done."""

from __future__ import annotations

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.presets import MachineResources

WAIT_MS = 120_000
SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


def _docked_panels(viewer):
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate with SAM")
    finetune = TrainWidget(viewer, machine=SMALL_CPU)
    viewer.window.add_dock_widget(finetune, name="Finetune SAM")
    return annotate, finetune


def test_a_finetuned_model_is_listed_in_every_window_and_loaded_in_its_own(
    qtbot, cells_viewer, add_pair, use_tiny_model, drain_jobs, better_each_epoch
):
    first, second = cells_viewer(2, 64), cells_viewer(1, 64)
    annotate, finetune = _docked_panels(first)
    other_annotate, other_finetune = _docked_panels(second)
    assert add_pair(finetune.train_data, "cells0", "cells0 labels")
    assert add_pair(finetune.train_data, "cells1", "cells1 labels")
    use_tiny_model(finetune, epochs=1)
    finetune.settings.name_edit.setText("from-window-one")
    assert "from-window-one" not in other_annotate.ui.model_picker.model_names()
    with qtbot.waitSignal(finetune.training_finished, timeout=WAIT_MS) as finished:
        assert finetune.start() is not None
    qtbot.waitUntil(lambda: not finetune.is_running, timeout=WAIT_MS)
    name = finished.args[0].registered_name
    assert name == "from-window-one"

    qtbot.waitUntil(lambda: annotate.model_name == name, timeout=WAIT_MS)  # loaded here
    assert name in other_annotate.ui.model_picker.model_names()  # listed there ...
    assert other_annotate.model_name != name  # ... not loaded over its person's model
    assert name in other_finetune.settings.model_picker.model_names()
    for viewer, panel in ((first, annotate), (second, other_annotate)):
        viewer.layers.clear()
        drain_jobs(panel)
