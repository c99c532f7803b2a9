"""An image given twice to one Finetune run, as a layer pair and in the training folders:
trained once, and the person told which two pairs were the same; with other labels in the
folder, refused naming both. Before, both copies trained unsaid."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_samtune._qt.train_folders import FolderSource, check_folder_pairs
from napari_samtune.core.synthetic import make_dataset

WAIT_MS = 120_000


def _start_with_folder_copy(widget, viewer, add_pair, use_tiny_model, tmp_path, labels):
    """Train on the layer pairs cells0 and cells1 and a folder holding cells0 with
    ``labels`` (again.tif); Start, which goes on once the folders are checked."""
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    assert add_pair(widget.train_data, "cells0", "cells0 labels")
    assert add_pair(widget.train_data, "cells1", "cells1 labels")
    for kind, data in (("images", viewer.layers["cells0"].data), ("labels", labels)):
        (tmp_path / kind).mkdir()
        tifffile.imwrite(tmp_path / kind / "again.tif", data)
    widget.train_data.image_dir_edit.setText(str(tmp_path / "images"))
    widget.train_data.labels_dir_edit.setText(str(tmp_path / "labels"))
    assert widget.start() is None  # it starts by itself once the folders are checked


def test_a_layer_pair_also_in_the_folders_trains_once_and_both_are_named(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, tmp_path, notifications
):
    viewer, widget = finetune_on_cells(n=2)
    labels = viewer.layers["cells0 labels"].data
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS) as started:
        _start_with_folder_copy(widget, viewer, add_pair, use_tiny_model, tmp_path, labels)
    assert started.args[0].n_train + started.args[0].n_val == 2  # not 3
    assert started.args[0].duplicates == (("again.tif / again.tif", "cells0 / cells0 labels"),)
    warnings = [str(n) for n in notifications if n.severity == "warning"]
    assert any("'again.tif / again.tif' (same as 'cells0 / cells0 labels')" in m for m in warnings)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        pass


def test_a_layer_pair_in_the_folders_with_other_labels_is_refused_naming_both(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, tmp_path, notifications
):
    viewer, widget = finetune_on_cells(n=2)
    labels = viewer.layers["cells0 labels"].data
    other = np.where(labels == labels.max(), 0, labels)  # one object less
    _start_with_folder_copy(widget, viewer, add_pair, use_tiny_model, tmp_path, other)
    # refused before the model is loaded (see test_train_widget_fixes7)
    qtbot.waitUntil(lambda: bool(widget.start_error.text()), timeout=WAIT_MS)
    assert widget.result is None and not widget.is_running
    errors = [str(n) for n in notifications if n.severity == "error"]
    assert any(
        "'again.tif / again.tif' and 'cells0 / cells0 labels' are the same image with "
        "different labels"
        in m
        and "remove the pair whose labels are wrong" in m
        for m in errors
    ), errors
    assert widget.start_button.isEnabled()


def _check_folder_holding_twice(tmp_path, copy_labels):
    """The check of a folder of a.tif, b.tif and c.tif, c being a with ``copy_labels(a's)``."""
    (a, a_labels), (b, b_labels) = make_dataset(2, shape=(64, 64), seed=1)
    c_labels = copy_labels(a_labels)
    for name, image, labels in (("a", a, a_labels), ("b", b, b_labels), ("c", a, c_labels)):
        tifffile.imwrite(tmp_path / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / f"{name}_mask.tif", labels)
    return check_folder_pairs(FolderSource(tmp_path, tmp_path), "training", lambda _: None)


def test_the_folder_check_notes_an_image_the_folder_holds_twice(tmp_path):
    """Said before Start, under the folders, not only once the model is loaded."""
    check = _check_folder_holding_twice(tmp_path, lambda labels: labels)
    assert check.problem == ""
    assert "left out 1 pair(s) that repeat another pair" in check.note
    assert "'c.tif / c_mask.tif' (same as 'a.tif / a_mask.tif')" in check.note


def test_the_folder_check_refuses_an_image_held_twice_with_other_labels(tmp_path):
    """Refused before Start, which would load (or download) the model first."""
    check = _check_folder_holding_twice(
        tmp_path, lambda labels: np.where(labels == labels.max(), 0, labels)
    )
    assert check.problem.startswith(
        "training folders: 'c.tif / c_mask.tif' and 'a.tif / a_mask.tif' are the same image "
        "with different labels"
    )
