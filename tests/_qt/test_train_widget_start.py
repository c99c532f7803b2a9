"""What Start does on the main thread: a run's data is prepared by its worker, once, and a
single image's held-out part is checked there, before the model is loaded."""

from __future__ import annotations

import threading

import numpy as np

from napari_samtune._qt import layer_pairs, train_run
from napari_samtune.core import data as core_data

WAIT_MS = 120_000


def only_image_without_held_out_objects(finetune_on_cells, add_pair, use_tiny_model, out_dir):
    """A Finetune widget for 1 epoch into ``out_dir`` of one image whose objects all lie
    above the rows held out for validation: the worker refuses its Start."""
    viewer, widget = finetune_on_cells(n=1)
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(out_dir))
    top = np.zeros((64, 64), np.uint32)
    top[5:20, 5:20], top[5:20, 30:45] = 1, 2  # none in the rows held out for validation
    viewer.add_labels(top, name="top labels")
    assert add_pair(widget.train_data, "cells0", "top labels")
    return widget


def test_start_leaves_the_held_out_check_of_the_only_image_to_the_worker(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, monkeypatch, tmp_path
):
    """With one training image, Start prepared it on the main thread to check the part held
    out for validation (a 4096 x 4096 image or a stack froze the viewer), and the worker
    prepared it again. (Add pair's own check of a pair is not counted here.)"""
    _, widget = finetune_on_cells(n=1)
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    assert add_pair(widget.train_data, "cells0", "cells0 labels")
    checked_in, prepared_in = [], []

    def recording(record, real):
        def call(*args):
            record.append(threading.current_thread())
            return real(*args)

        return call

    monkeypatch.setattr(train_run, "prepare_pairs", recording(checked_in, train_run.prepare_pairs))
    monkeypatch.setattr(core_data, "prepare_pair", recording(prepared_in, core_data.prepare_pair))
    with qtbot.waitSignal(widget.training_started, timeout=WAIT_MS) as started:
        assert widget.start() is not None
        # Start returned without preparing the image (the worker may have begun already)
        assert threading.main_thread() not in checked_in
    assert started.args[0].n_train == 1 and started.args[0].n_val == 1
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        pass
    assert len(checked_in) == 1 and checked_in[0] is not threading.main_thread()
    assert prepared_in == checked_in  # the training run used the image prepared there


def test_a_held_out_part_without_objects_is_refused_before_the_model_is_fetched(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, monkeypatch, tmp_path, notifications
):
    """The worker's refusal reads as Start's did (in red under Start, and notified), and
    comes before the model's download; a later Start that works takes it back."""
    widget = only_image_without_held_out_objects(
        finetune_on_cells, add_pair, use_tiny_model, tmp_path / "runs"
    )
    fetched = []
    real_fetch = train_run.fetch_model_file
    monkeypatch.setattr(train_run, "fetch_model_file", lambda *a: fetched.append(a[0]))
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert fetched == [] and widget.started is None
    assert "the validation part" in widget.start_error.text()
    assert "tick 'separate validation data'" in widget.start_error.text()
    assert any("the validation part" in n for n in notifications if n.severity == "error")
    assert not widget.result_label.text()
    monkeypatch.setattr(train_run, "fetch_model_file", real_fetch)
    widget.train_data.pair_list.setCurrentRow(0)
    widget.train_data.remove_selected_pair()
    assert add_pair(widget.train_data, "cells0", "cells0 labels")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
        assert not widget.start_error.text()
    assert widget.started is not None and widget.started.n_val == 1


def test_add_pair_and_start_prepare_no_image_on_the_main_thread(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, monkeypatch, tmp_path
):
    """Add pair and Start checked each pair by preparing it (normalised, its objects
    located: 0.3 s for a 4096 x 4096 image, the viewer frozen); now only the worker does,
    and a bad pair is still refused at Add pair in the core's words."""
    viewer, widget = finetune_on_cells(n=2)
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    prepared_in = []
    real = core_data.prepare_pair

    def recording(pair):
        prepared_in.append(threading.current_thread())
        return real(pair)

    monkeypatch.setattr(core_data, "prepare_pair", recording)
    monkeypatch.setattr(layer_pairs, "prepare_pair", recording, raising=False)
    viewer.add_labels(np.zeros((64, 64), np.uint32), name="empty labels")
    viewer.add_labels(np.ones((64, 48), np.uint32), name="narrow labels")
    assert not add_pair(widget.train_data, "cells0", "empty labels")
    assert "labels of 'cells0 / empty labels' contain no objects" in (
        widget.train_data.pair_error.text()
    )
    assert not add_pair(widget.train_data, "cells0", "narrow labels")
    assert "is 64x64 pixels but its labels have shape (64, 48)" in (
        widget.train_data.pair_error.text()
    )
    assert add_pair(widget.train_data, "cells0", "cells0 labels")
    assert add_pair(widget.train_data, "cells1", "cells1 labels")
    assert prepared_in == []
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None, widget.start_error.text()
    assert widget.started is not None and widget.started.n_train + widget.started.n_val == 2
    assert prepared_in and threading.main_thread() not in prepared_in  # the worker's only
