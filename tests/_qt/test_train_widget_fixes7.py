"""The Finetune widget: a weights file moved after it was read, and what Continue… says it
keeps when the settings here cannot start a run."""

from __future__ import annotations

import shutil

from tests._qt.test_train_widget_fixes3 import WAIT_MS, _run_once, _two_pairs_one_epoch


def _warnings(notifications) -> list[str]:
    return [str(n) for n in notifications if n.severity == "warning"]


def _errors(notifications) -> list[str]:
    return [str(n) for n in notifications if n.severity == "error"]


def _with_own_weights(qtbot, widget, tiny_checkpoint, path):
    """Choose a copy of the tiny weights at ``path`` as the widget's model, read."""
    shutil.copy(tiny_checkpoint, path)
    settings = widget.settings
    settings.model_picker.select_model(str(path))
    qtbot.waitUntil(lambda: not settings.runner.is_running(), timeout=WAIT_MS)
    assert settings.architecture() is not None


def test_a_weights_file_moved_after_it_was_read_is_refused_at_start(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tiny_checkpoint, tmp_path, notifications
):
    """The file's architecture, read once, stood for the file: moved or deleted before Start,
    the run began and failed in the worker ("training failed: ... Check the path"). Start is
    refused now, naming the file and the fix under the model; the last run stays shown."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    weights = tmp_path / "mine.pth"
    _with_own_weights(qtbot, widget, tiny_checkpoint, weights)
    folder = _run_once(qtbot, widget, tmp_path / "runs")
    plotted = list(widget.plot.step_losses)
    assert folder is not None and plotted
    weights.rename(tmp_path / "moved.pth")

    assert widget.start() is None
    assert not widget.is_running and widget.run_folder == folder
    assert widget.plot.step_losses == plotted
    shown = widget.settings.settings_error.text()
    assert repr(str(weights)) in shown and "does not exist" in shown and "Browse…" in shown
    assert any(repr(str(weights)) in e for e in _errors(notifications))
    assert widget.start_error.text()

    (tmp_path / "moved.pth").rename(weights)  # put back: Start is accepted again
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert widget.result is not None and not widget.settings.settings_error.text()


def test_continue_names_the_settings_it_keeps_when_they_could_not_start_a_run(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tiny_checkpoint, tmp_path, notifications
):
    """Continue… compared the run's settings with the config Start would build, and said
    nothing when Start would refuse it: objects per batch beyond the preset, or another
    model file since moved, went unmentioned though the run kept its own."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    folder = _run_once(qtbot, widget, tmp_path / "runs")
    settings = widget.settings
    settings.epochs_spin.setValue(2)
    settings.objects_spin.setValue(10000)  # more than the preset fits: Start refuses it
    assert "'objects per batch' 10000 per step" in _start_refusal(widget)
    notifications.clear()
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    assert widget.result is not None and widget.result.epochs_done == 2
    kept = [w for w in _warnings(notifications) if "continues with its own" in w]
    assert len(kept) == 1 and "objects per batch (2; 10000 set here)" in kept[0]

    other = tmp_path / "other.pth"
    _with_own_weights(qtbot, widget, tiny_checkpoint, other)
    settings.objects_spin.setValue(2)
    settings.epochs_spin.setValue(3)
    other.unlink()  # the model chosen here is gone: Start refuses it
    notifications.clear()
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    kept = [w for w in _warnings(notifications) if "continues with its own" in w]
    assert len(kept) == 1 and f"model ({tiny_checkpoint}; {other} set here)" in kept[0]
    assert "objects per batch" not in kept[0]


def _start_refusal(widget) -> str:
    """Press Start, which must refuse; the message under the model."""
    assert widget.start() is None
    return widget.settings.settings_error.text()


def test_continue_with_no_model_chosen_here_still_names_what_the_run_keeps(finetune_on_cells):
    """Settings that make no config at all (the file entry chosen, no path typed): the
    warning still lists what the continued run keeps, and why nothing was compared."""
    from napari_samtune._qt.model_picker import FILE_ENTRY
    from napari_samtune._qt.train_continue import kept_settings_warning
    from napari_samtune.core.presets import TrainConfig

    _, widget = finetune_on_cells(1)
    widget.settings.model_picker.select_model(FILE_ENTRY)
    widget.settings.model_picker.path_edit.setText("")
    message = kept_settings_warning(widget.settings, TrainConfig(model="vit_b"))
    assert message.startswith("the run continues with its own model, preset, objects per")
    assert "could not be compared" in message and "no checkpoint file chosen" in message


def test_a_layer_pair_in_the_folders_with_other_labels_is_refused_before_the_run(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, tmp_path, notifications, monkeypatch
):
    """Found by the core once the worker had loaded (or downloaded) the model: the layer
    pairs are now compared with the folder check's images before the run, and the
    conflict is named under the pair list; no run begins."""
    import numpy as np

    import napari_samtune._qt.train_widget as train_widget
    from tests._qt.test_train_widget_duplicates import _start_with_folder_copy

    def no_run(*args, **kwargs):
        raise AssertionError("the run's worker began")

    monkeypatch.setattr(train_widget, "iter_training_job", no_run)
    viewer, widget = finetune_on_cells(n=2)
    labels = viewer.layers["cells0 labels"].data
    other = np.where(labels == labels.max(), 0, labels)  # one object less
    _start_with_folder_copy(widget, viewer, add_pair, use_tiny_model, tmp_path, other)
    error = widget.train_data.list_error
    qtbot.waitUntil(lambda: bool(error.text()), timeout=WAIT_MS)
    assert error.text().startswith(
        "training data: 'again.tif / again.tif' and 'cells0 / cells0 labels' are the same "
        "image with different labels"
    )
    assert widget.start_error.text() and widget.start_button.isEnabled()
    assert not widget.is_running and widget.run_folder is None
    assert any("same image with different labels" in e for e in _errors(notifications))


def test_two_layer_pairs_of_one_image_with_other_labels_are_refused_at_start(
    finetune_on_cells, add_pair, use_tiny_model, monkeypatch, notifications, qtbot
):
    """A layer duplicated and annotated apart: Start began the run, which failed once the
    worker had loaded (or downloaded: offline, only the download error was said) the model,
    as "training failed"; refused at Start now, in red under the pair list."""
    import numpy as np

    import napari_samtune._qt.train_widget as train_widget

    def no_run(*args, **kwargs):
        raise AssertionError("the run's worker began")

    monkeypatch.setattr(train_widget, "iter_training_job", no_run)
    viewer, widget = finetune_on_cells(n=2)
    labels = viewer.layers["cells0 labels"].data
    viewer.add_image(viewer.layers["cells0"].data.copy(), name="copy")
    viewer.add_labels(np.where(labels == labels.max(), 0, labels), name="copy labels")
    for image in ("cells0", "cells1", "copy"):
        assert add_pair(widget.train_data, image, f"{image} labels")
    use_tiny_model(widget, epochs=1)
    assert widget.start() is None
    assert widget.train_data.list_error.text().startswith(
        "training data: 'copy / copy labels' and 'cells0 / cells0 labels' are the same image "
        "with different labels"
    )
    assert widget.start_error.text() and not widget.is_running
    assert any("same image with different labels" in e for e in _errors(notifications))

    viewer.layers["copy labels"].data = labels.copy()  # the same objects: the run leaves it out
    monkeypatch.undo()
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert widget.started.duplicates == (("copy / copy labels", "cells0 / cells0 labels"),)


def test_a_layer_pair_repeated_in_the_folders_is_noted_under_them_before_the_run(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, tmp_path
):
    """The folder copy of a layer pair is left out by the run; said under the folders
    before training starts, beside what the folder check notes."""
    from tests._qt.test_train_widget_duplicates import _start_with_folder_copy

    viewer, widget = finetune_on_cells(n=2)
    labels = viewer.layers["cells0 labels"].data + 7  # other ids, the same objects
    labels[viewer.layers["cells0 labels"].data == 0] = 0
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS):
        _start_with_folder_copy(widget, viewer, add_pair, use_tiny_model, tmp_path, labels)
    note = widget.train_data.folder_note.text()
    assert "left out 1 pair(s) that repeat another pair" in note
    assert "'again.tif / again.tif' (same as 'cells0 / cells0 labels')" in note
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        pass
    assert widget.started.duplicates == (("again.tif / again.tif", "cells0 / cells0 labels"),)


def test_stop_while_the_layer_pairs_are_compared_cancels_the_start(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, tmp_path, monkeypatch, notifications
):
    """Stop cancels a Start waiting on the comparing as on the folder check; a later
    Start compares again and trains."""
    import threading

    import napari_samtune._qt.train_request as train_request
    from tests._qt.test_train_widget_duplicates import _start_with_folder_copy

    gate, compare = threading.Event(), train_request._compare_all

    def held(jobs):
        gate.wait(WAIT_MS / 1000)
        return compare(jobs)

    monkeypatch.setattr(train_request, "_compare_all", held)
    viewer, widget = finetune_on_cells(n=2)
    labels = viewer.layers["cells0 labels"].data
    _start_with_folder_copy(widget, viewer, add_pair, use_tiny_model, tmp_path, labels)
    qtbot.waitUntil(lambda: widget._comparing is not None, timeout=WAIT_MS)
    assert "comparing the layer pairs with the folders" in widget.status_label.text()
    assert "Stop cancels" in widget.status_label.text() and widget.stop_button.isEnabled()
    assert widget.start() is None  # a second Start: refused, not as "training is running"
    assert "is comparing the layer pairs with the folders" in notifications[-1]
    widget.stop()
    assert widget.status_label.text() == "start cancelled; training did not begin"
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    gate.set()
    qtbot.wait(200)  # the cancelled comparing ends: it starts nothing
    assert not widget.is_running and widget.run_folder is None
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is None  # compares again, then trains
    assert widget.result is not None


def test_the_digests_find_what_the_core_calls_the_same_objects():
    """The digests stand for the core's exact comparison (same_objects): ids renumbered
    match, an object less or two merged do not; a layer pair with other pixels is no
    repeat."""
    import numpy as np

    from napari_samtune._qt.train_repeats import compare_with_folders, image_digest
    from napari_samtune.core.data import ImageLabelPair, prepare_pair
    from napari_samtune.core.duplicate_pairs import same_objects
    from napari_samtune.core.synthetic import make_image

    image, labels = make_image((96, 96), seed=3)
    ids = np.unique(labels)[1:]
    swapped = labels.copy()
    swapped[labels == ids[0]], swapped[labels == ids[-1]] = ids[-1], ids[0]
    fewer = np.where(labels == ids[-1], 0, labels)
    merged = np.where(labels == ids[-1], ids[0], labels)
    folder = {
        name: image_digest(prepare_pair(ImageLabelPair(image, data, name)))
        for name, data in (("swapped", swapped), ("fewer", fewer), ("merged", merged))
    }
    layer = prepare_pair(ImageLabelPair(image, labels, "layer"))
    for name, data in (("swapped", swapped), ("fewer", fewer), ("merged", merged)):
        same = same_objects(layer.labels, prepare_pair(ImageLabelPair(image, data)).labels)
        assert (image_digest(layer).objects == folder[name].objects) == same == (name == "swapped")
    pair = ImageLabelPair(image, labels, "layer")
    found = compare_with_folders([pair], [folder["swapped"]])
    assert found.problem == "" and "'swapped' (same as 'layer')" in found.note
    assert (
        "'fewer' and 'layer' are the same image"
        in compare_with_folders([pair], [folder["swapped"], folder["fewer"]]).problem
    )
    other = ImageLabelPair(255 - image, labels, "other")
    assert compare_with_folders([other], [folder["fewer"]]) == compare_with_folders([], [])
