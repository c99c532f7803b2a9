"""The Annotate dock's model against what its name holds (a user model registered anew
under the same name, by a continued run, while the dock uses the copy loaded before), and
what a batched commit says of objects it could not write."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samtune._qt.annotate_jobs import LOAD_TASK
from napari_samtune._qt.annotate_ui import BATCHED_MODE
from napari_samtune._qt.train_run import offer_model
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.user_models import register_user_model


@pytest.fixture
def other_checkpoint(tmp_path):
    """Tiny weights other than ``tiny_checkpoint``'s: what a continued run registers."""
    torch.manual_seed(1)
    path = tmp_path / "continued.pth"
    torch.save(build_sam(TINY).state_dict(), path)
    return path


@pytest.fixture
def on_my_tiny(viewer_widget, tiny_checkpoint, run_job):
    """The docked widget with user model 'my_tiny' loaded by name."""
    viewer, widget = viewer_widget
    register_user_model(tiny_checkpoint, "my_tiny", TINY)
    widget.refresh_models()
    widget.select_model("my_tiny")
    run_job(widget, widget.load_model, LOAD_TASK)
    assert widget.model_name == "my_tiny"
    return viewer, widget


def _older_notices(notifications) -> list[str]:
    return [n for n in notifications if "my_tiny" in n and "Load model" in n]


def test_a_model_registered_anew_and_not_used_says_the_loaded_copy_is_older(
    on_my_tiny, other_checkpoint, run_job, notifications
):
    """A continued run re-registered 'my_tiny' with the new model's use in Annotate
    unticked: the dock kept predicting with the old weights while its picker and label
    named 'my_tiny', as if it were the new model. The dock keeps the copy it has (the
    person asked not to use the new one), and says, in its label too, that it is older
    and that Load model takes the new weights."""
    viewer, widget = on_my_tiny
    old_id = widget.segmenter.model_id
    register_user_model(other_checkpoint, "my_tiny", TINY, overwrite=True)
    assert offer_model(viewer, "my_tiny", use_it=False) == 1
    assert widget.segmenter.model_id == old_id  # not reloaded behind the person's back
    assert not widget.runner.is_running(LOAD_TASK)
    assert len(_older_notices(notifications)) == 1
    assert "older" in widget.ui.model_label.text()
    run_job(widget, widget.load_model, LOAD_TASK)
    assert widget.segmenter.model_id != old_id
    assert "older" not in widget.ui.model_label.text()
    widget.refresh_models()  # the new weights are in use now: nothing more to say
    assert len(_older_notices(notifications)) == 1


def test_the_refresh_button_tells_of_weights_registered_elsewhere(
    on_my_tiny, other_checkpoint, notifications
):
    """'samtune models' (or another napari) registered 'my_tiny' anew; ↻ shows it, once."""
    _, widget = on_my_tiny
    register_user_model(other_checkpoint, "my_tiny", TINY, overwrite=True)
    widget.ui.model_picker.refresh_button.click()
    widget.ui.model_picker.refresh_button.click()
    assert len(_older_notices(notifications)) == 1
    assert "older" in widget.ui.model_label.text()


def test_a_model_offered_for_use_loads_without_calling_the_old_copy_older(
    on_my_tiny, other_checkpoint, qtbot, drain_jobs, notifications
):
    viewer, widget = on_my_tiny
    old_id = widget.segmenter.model_id
    register_user_model(other_checkpoint, "my_tiny", TINY, overwrite=True)
    offer_model(viewer, "my_tiny", use_it=True)
    drain_jobs(widget)
    assert widget.segmenter.model_id != old_id
    assert not _older_notices(notifications)
    assert "older" not in widget.ui.model_label.text()


def test_the_same_weights_registered_anew_are_not_called_newer(
    on_my_tiny, tiny_checkpoint, notifications
):
    """A continued run whose best epoch stayed the same registers the same weights again;
    written anew, their file's bytes (and hash) differ, and the dock called its copy older."""
    viewer, widget = on_my_tiny
    before = (widget.ui.model_picker.model_combo.count(), widget.segmenter.model_id)
    register_user_model(tiny_checkpoint, "my_tiny", TINY, overwrite=True)
    widget.ui.model_picker.refresh_button.click()
    assert offer_model(viewer, "my_tiny", use_it=False) == 1
    assert not _older_notices(notifications)
    assert "older" not in widget.ui.model_label.text()
    assert widget.segmenter.model_id == before[1]


def test_a_model_offered_for_use_leaves_a_propagated_object_to_commit(
    stack_widget, tiny_checkpoint, notifications
):
    """A run ending in the background loaded its model into the dock, which cleared the
    propagated object the person was checking (or stopped the propagation running)."""
    from napari_samtune._qt.prompt_layers import PlanePrompts
    from napari_samtune._qt.propagated_planes import PropagatedPlane

    viewer, widget = stack_widget
    viewer.window.add_dock_widget(widget)  # offered to the docked annotation widgets
    layers = widget.session.layers
    mask = np.zeros((96, 96), dtype=np.uint32)
    mask[30:50, 30:50] = 1
    stands_for = PlanePrompts(np.array([[40.0, 40.0]]), np.array([True]), np.zeros((0, 4)))
    layers.propagated[1] = PropagatedPlane(mask, stands_for)
    layers.set_preview(1, mask, redraw=False)
    register_user_model(tiny_checkpoint, "my_tiny", TINY)
    viewer.add_image(np.zeros((96, 96), dtype=np.float32), name="other image")
    for chosen in ("other image", "stack"):  # the stack left (cleared when chosen again)
        widget.ui.image_combo.setCurrentText(chosen)
        assert offer_model(viewer, "my_tiny", use_it=True) == 1
        assert not widget.runner.is_running(LOAD_TASK) and widget.model_name == "tiny"
        said = notifications[-1]
        assert "'my_tiny' was not loaded for annotation" in said and "of 'stack'" in said
    layers = widget.session.layers
    assert layers.preview_planes() == [1] and 1 in layers.propagated
    assert widget.commit() == [1]  # the propagated object, as the model before made it


def test_a_file_named_like_a_user_model_is_not_that_model(
    viewer_widget, tiny_checkpoint, other_checkpoint, run_job, tmp_path, notifications
):
    """A weights file loaded by path is named after its stem; a user model of that name
    registered anew says nothing about it."""
    _, widget = viewer_widget
    file = tmp_path / "my_tiny.pth"
    file.write_bytes(tiny_checkpoint.read_bytes())
    register_user_model(tiny_checkpoint, "my_tiny", TINY)
    widget.select_model(str(file))
    run_job(widget, widget.load_model, LOAD_TASK)
    assert widget.model_name == "my_tiny"
    register_user_model(other_checkpoint, "my_tiny", TINY, overwrite=True)
    widget.refresh_models()
    assert not _older_notices(notifications)
    assert "older" not in widget.ui.model_label.text()


def test_a_batched_commit_says_which_objects_lay_wholly_on_existing_ones(
    viewer_widget, notifications
):
    """Batched mode, overwrite off: of two objects previewed, one lay wholly on an object
    already annotated. It was dropped without a word (its new id skipped, the prompts
    cleared): 'committed object(s) [3]' read as if all the preview went in. The person is
    now told how many of the objects shown were committed, and why not the others."""
    _, widget = viewer_widget
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    layers = widget.session.layers
    layers.boxes.add_rectangles(np.array([[20.0, 20.0], [80.0, 80.0]]))
    layers.boxes.add_rectangles(np.array([[150.0, 150.0], [230.0, 230.0]]))
    preview = layers.preview.data
    assert set(np.unique(preview)) == {0, 1, 2}
    widget.session.annotations[preview == 1] = 1  # painted before: object 1 covers it
    ids = widget.commit()
    assert len(ids) == 1
    said = [n for n in notifications if "1 of the 2 objects" in n and "overwrite" in n]
    assert len(said) == 1, list(notifications)


def test_a_batched_commit_of_every_object_shown_says_nothing_more(viewer_widget, notifications):
    _, widget = viewer_widget
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    layers = widget.session.layers
    layers.boxes.add_rectangles(np.array([[20.0, 20.0], [80.0, 80.0]]))
    layers.boxes.add_rectangles(np.array([[150.0, 150.0], [230.0, 230.0]]))
    assert widget.commit() == [1, 2]
    assert not [n for n in notifications if "objects" in n and "overwrite" in n]


def test_continue_with_its_use_unticked_leaves_the_dock_saying_its_copy_is_older(
    qtbot, cells_viewer, use_tiny_model, tmp_path, run_job, notifications, better_each_epoch
):
    """The whole story in the Finetune widget: a run's model loaded in the Annotate dock,
    then Continue… with 'use in Annotate' unticked registers it anew under its name (epoch
    2, scored best, is newer than the dock's copy)."""
    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune._qt.train_widget import TrainWidget
    from napari_samtune.core.presets import MachineResources

    wait_ms = 120_000
    viewer = cells_viewer()
    machine = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)
    train = TrainWidget(viewer, machine=machine)
    viewer.window.add_dock_widget(train, name="Finetune SAM")
    use_tiny_model(train, epochs=1)
    train.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    train.use_model_check.setChecked(False)
    train.train_data.image_combo.setCurrentText("cells0")
    train.train_data.labels_combo.setCurrentText("cells0 labels")
    assert train.train_data.add_current_pair()
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate with SAM")
    with qtbot.waitSignal(train.run_ended, timeout=wait_ms):
        assert train.start() is not None
    name = train.result.registered_name
    annotate.select_model(name)
    run_job(annotate, annotate.load_model, LOAD_TASK)
    old_id = annotate.segmenter.model_id
    train.settings.epochs_spin.setValue(2)
    with qtbot.waitSignal(train.run_ended, timeout=wait_ms):
        assert train.continue_run(train.run_folder) is not None
    assert train.result.registered_name == name and train.result.epochs_done == 2
    assert annotate.segmenter.model_id == old_id and annotate.model_name == name
    assert train.result.best_epoch == 1
    assert "older" in annotate.ui.model_label.text()
    assert any(name in n and "Load model" in n for n in notifications)


def test_load_model_of_a_user_model_removed_meanwhile_says_so_and_loads_nothing(
    on_my_tiny, notifications
):
    """It started the load and failed with the core's "is neither a model name ... nor an
    existing file", the removed model still offered; the Finetune dock's says to refresh."""
    from napari_samtune.core.user_model_removal import remove_user_model

    _, widget = on_my_tiny
    remove_user_model("my_tiny")
    assert widget.load_model() is None
    assert not widget.runner.is_running(LOAD_TASK)
    said = [n for n in notifications if "'my_tiny' is no longer in the model list" in n]
    assert len(said) == 1 and "choose the model to use" in said[0]
    assert "my_tiny" not in widget.ui.model_picker.model_names()
    assert widget.model_name == "my_tiny"  # the copy in use stays until another is loaded


def test_load_model_of_a_user_model_renamed_meanwhile_loads_it_by_its_new_name(
    on_my_tiny, run_job, notifications
):
    from napari_samtune.core.user_model_rename import rename_user_model

    _, widget = on_my_tiny
    rename_user_model("my_tiny", "cells")
    run_job(widget, widget.load_model, LOAD_TASK)
    assert widget.model_name == "cells"
    assert any("'my_tiny' was renamed 'cells'; it stays chosen" in n for n in notifications)


def test_load_model_of_a_broken_user_model_says_its_fix_and_keeps_it_chosen(
    on_my_tiny, notifications
):
    """Its weights file moved away (a share not mounted), the model is left out of the
    list: a9a0692 called it "no longer in the model list (removed?)" and chose another,
    which the next Load model would have downloaded."""
    from napari_samtune.core.user_models import user_models_dir

    _, widget = on_my_tiny
    (weights,) = user_models_dir().glob("my_tiny*.pt")
    weights.rename(weights.with_suffix(".moved"))
    assert widget.load_model() is None
    assert widget.ui.model_picker.model_combo.currentData() == "my_tiny"
    said = [n for n in notifications if "my_tiny" in n]
    assert not any("no longer in the model list" in n for n in said)
    assert any("is broken" in n and "samtune models --remove my_tiny" in n for n in said)


def test_refreshing_the_list_keeps_a_broken_user_model_chosen_and_says_its_fix(
    on_my_tiny, notifications
):
    """↻ called it "no longer in the model list (removed?)" and chose vit_t, whose Load model
    went to download it; the Finetune dock's settings went back to the preset's with it."""
    from napari_samtune.core.user_models import user_models_dir

    _, widget = on_my_tiny
    picker = widget.ui.model_picker
    (weights,) = user_models_dir().glob("my_tiny*.pt")
    weights.rename(weights.with_suffix(".moved"))
    changes = []
    picker.selection_changed.connect(lambda: changes.append(picker.model_source()))
    picker.refresh_button.click()
    assert picker.model_source() == "my_tiny" and changes == []
    assert picker.model_combo.currentText() == "my_tiny  (broken)"
    said = [n for n in notifications if "my_tiny" in n]
    assert not any("no longer in the model list" in n for n in said)
    assert any("is broken" in n and "samtune models --remove my_tiny" in n for n in said)
    weights.with_suffix(".moved").rename(weights)  # the share mounted again
    picker.refresh_button.click()
    assert picker.model_combo.currentText().startswith("my_tiny  (user")


def test_a_model_in_use_renamed_elsewhere_is_followed_under_its_new_name(
    on_my_tiny, other_checkpoint, notifications
):
    """After `samtune models --rename`, the dock kept the old name: other weights then
    registered under the new name went unnoticed, and commits were recorded as made by a
    model of the old name."""
    from napari_samtune.core.user_model_removal import remove_user_model
    from napari_samtune.core.user_model_rename import rename_user_model

    _, widget = on_my_tiny
    rename_user_model("my_tiny", "cells")
    widget.ui.model_picker.refresh_button.click()
    assert widget.model_name == "cells" and widget.ui.model_label.text().startswith("cells on")
    remove_user_model("cells")
    register_user_model(other_checkpoint, "cells", TINY)
    widget.ui.model_picker.refresh_button.click()
    assert any("user model 'cells' was registered anew" in n for n in notifications)
    assert "older" in widget.ui.model_label.text()
