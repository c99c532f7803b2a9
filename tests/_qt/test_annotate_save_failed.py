"""Saves that could lose annotations: an autosave that failed (a full disk, a read-only
folder) counts as unsaved, so closing napari asks, and the next successful save tries it
again; a labels file another program changed meanwhile is saved beside, not over."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune._qt import annotate_saves

WAIT_MS = 30_000


@pytest.fixture
def failing_saves(monkeypatch):
    """``failing_saves(True)``: the widget's background saves fail as on a full disk."""
    real = annotate_saves.save_annotations

    def set_failing(failing: bool) -> None:
        def save(*args, **kwargs):
            if failing:
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr(annotate_saves, "save_annotations", save)

    return set_failing


@pytest.fixture
def committed_once(cells_with_one_saved_object, tmp_path):
    """A docked widget on "cells0" (of two images) saving to ``tmp_path``, object 1 saved."""
    viewer, widget = cells_with_one_saved_object(tmp_path)
    viewer.window.add_dock_widget(widget)  # its window's close is what asks
    return viewer, widget


def _commit_object_2(widget, drain_jobs) -> None:
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]
    drain_jobs(widget)


def test_closing_napari_after_a_failed_autosave_asks_to_save(
    committed_once, failing_saves, drain_jobs, monkeypatch, close_blocker, tmp_path, notifications
):
    """The window closed at once: the commit whose save had failed was on no disk."""
    from qtpy.QtWidgets import QMessageBox

    viewer, widget = committed_once
    window = viewer.window._qt_window
    closes = close_blocker(window)  # the widget's filter, installed again by the save, first
    failing_saves(True)
    _commit_object_2(widget, drain_jobs)
    assert any("No space left on device" in n for n in notifications)
    assert 2 not in tifffile.imread(tmp_path / "cells0.labels.tif")
    asked = []
    save = QMessageBox.StandardButton.Save
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(args[2]) or save)
    window.close(quit_app=False, confirm_need=False)  # napari's menu, a person's close
    assert len(asked) == 1 and "'cells0'" in asked[0] and "last save failed" in asked[0]
    assert closes.count == 1
    assert 2 in tifffile.imread(tmp_path / "cells0.labels.tif")  # saved (the disk has room)


def test_a_failed_autosave_is_tried_again_after_the_next_save_succeeds(
    committed_once, failing_saves, drain_jobs, tmp_path
):
    """Its image left for another, whose saves worked once the disk had room: the first
    image's last commit stayed unsaved, unsaid."""
    _, widget = committed_once
    failing_saves(True)
    _commit_object_2(widget, drain_jobs)
    failing_saves(False)  # room again
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    widget.session.layers.preview.data[5:15, 5:15] = 1
    assert widget.commit() == [1]
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    assert set(np.unique(saved)) == {0, 1, 2}
    assert not widget._not_autosaved


def test_a_labels_file_changed_by_another_program_is_not_overwritten(
    committed_once, drain_jobs, tmp_path, notifications
):
    """A second napari (or Fiji, a script) wrote the image's labels file meanwhile: the next
    commit's save replaced it, and that program's objects were gone, unsaid."""
    import os

    from napari_samtune.core.annotation_files import load_annotations

    _, widget = committed_once
    path = tmp_path / "cells0.labels.tif"
    theirs = tifffile.imread(path)
    theirs[40:50, 5:15] = 9  # another program's object
    tifffile.imwrite(path, theirs)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later write
    _commit_object_2(widget, drain_jobs)
    np.testing.assert_array_equal(tifffile.imread(path), theirs)  # theirs, as they left it
    note = [n for n in notifications if "changed by another program" in n][-1]
    beside = next(p for p in tmp_path.glob("cells0-*.labels.tif"))
    assert beside.name in note
    ours, record = load_annotations(beside)
    assert set(np.unique(ours)) == {0, 1, 2} and len(record["objects"]) == 2
    widget.session.layers.preview.data[60:62, 60:62] = 1
    assert widget.commit() == [3]
    drain_jobs(widget)
    assert 3 in tifffile.imread(beside)  # the saves go on beside it, said once
    assert len([n for n in notifications if "changed by another program" in n]) == 1


def test_ctrl_z_after_a_commit_does_not_put_an_older_stroke_back_over_it(
    committed_once, drain_jobs, tmp_path, notifications
):
    """Commits write the annotations outside napari's undo history: Ctrl+Z after a commit
    undid the eraser stroke before it, writing object 1 back over object 2 (and saved that)."""
    from napari.utils.key_bindings import coerce_keybinding

    from napari_samtune._qt.history_keys import HISTORY_KEYS

    _, widget = committed_once
    layer = widget.session.layers.annotations
    layer.brush_size = 5
    layer.paint((15, 15), 0)  # an eraser stroke inside object 1
    drain_jobs(widget)
    hole = (layer.data[10:20, 10:20] == 0).copy()
    assert hole.any()
    widget.session.layers.preview.data[12:18, 12:18] = 1  # object 2 across the hole
    assert widget.commit() == [2]
    drain_jobs(widget)
    two = layer.data == 2
    undo_key = next(key for key, name in HISTORY_KEYS.items() if name == "undo")
    layer.keymap[coerce_keybinding(undo_key)](layer)  # Ctrl+Z on the annotations layer
    drain_jobs(widget)
    assert any("Ctrl+Z: no brush stroke of" in n and "U undoes" in n for n in notifications)
    np.testing.assert_array_equal(layer.data == 2, two)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells0.labels.tif") == 2, two)
    assert widget.undo()  # U still takes the commit back
    assert not (layer.data == 2).any()


@pytest.mark.parametrize("same", [False, True])
def test_an_annotations_layer_kept_from_another_copy_is_saved_beside_the_newer_file(
    cells_viewer, tiny_sam, drain_jobs, tmp_path, notifications, monkeypatch, same
):
    """Labels saved with napari's File > Save, opened again later as '<image> annotations':
    the panel went on with them, and its next save replaced the newer autosave's objects."""
    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune.core.annotation_files import load_annotations, save_annotations

    viewer = cells_viewer(1)
    newer = np.zeros((64, 64), np.uint32)
    for i in range(5):
        newer[2 + 12 * i : 10 + 12 * i, 2:10] = i + 1
    records = [{"ids": [i + 1], "source": "interactive"} for i in range(5)]
    save_annotations(tmp_path, "cells0", newer, {"objects": records})
    older = newer if same else np.where(newer <= 3, newer, 0)
    viewer.add_labels(older.copy(), name="cells0 annotations")
    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(tmp_path))  # the next napari session's
    widget = AnnotateWidget(viewer)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    told = [n for n in notifications if "holds other annotations than" in n]
    assert len(told) == (0 if same else 1)
    assert len(widget.session.records) == (5 if same else 0)
    widget.session.layers.preview.data[50:60, 40:50] = 1
    assert widget.commit() == [6 if same else 4]
    drain_jobs(widget)
    saved, _ = load_annotations(tmp_path / "cells0.labels.tif")
    if same:  # the layer held the file's objects: it goes on saving there
        assert set(np.unique(saved)) == set(range(7))
        return
    np.testing.assert_array_equal(saved, newer)  # the newer file, as it was
    beside = next(tmp_path.glob("cells0-*.labels.tif"))
    assert set(np.unique(load_annotations(beside)[0])) == {0, 1, 2, 3, 4}


def test_a_labels_file_written_since_the_image_was_found_unsaved_is_not_overwritten(
    cells_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, notifications, monkeypatch
):
    """Nothing was saved when the image was first annotated; then a second napari (or
    ``samtune segment``) wrote its labels file: the first commit replaced it unsaid, as a
    file this session had never seen counted as its own."""
    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune.core.annotation_files import load_annotations, save_annotations

    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(tmp_path))
    viewer = cells_viewer(2)
    widget = AnnotateWidget(viewer)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    assert not (tmp_path / "cells0.labels.tif").exists()
    theirs = np.zeros((64, 64), np.uint32)
    theirs[40:50, 5:15] = 1  # the other napari's object
    save_annotations(tmp_path, "cells0", theirs, {"objects": []})
    widget.session.layers.preview.data[10:20, 10:20] = 1
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        assert widget.commit() == [1]
    drain_jobs(widget)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells0.labels.tif"), theirs)
    beside = next(tmp_path.glob("cells0-*.labels.tif"))
    assert any("changed by another program" in n and beside.name in n for n in notifications)
    ours, _ = load_annotations(beside)
    assert ours[15, 15] == 1 and ours[45, 10] == 0


def test_a_save_failing_again_the_same_way_is_said_once(
    committed_once, failing_saves, drain_jobs, notifications
):
    """A folder that cannot be written popped up the same error at every commit and brush
    stroke; once a save works, a later failure is said again."""
    _, widget = committed_once
    failing_saves(True)
    _commit_object_2(widget, drain_jobs)
    widget.session.layers.preview.data[45:55, 45:55] = 1
    assert widget.commit() == [3]
    drain_jobs(widget)
    said = [n for n in notifications if "No space left on device" in n]
    assert len(said) == 1
    assert widget.ui.status_label.text().endswith("No space left on device (again)")
    failing_saves(False)
    widget.session.layers.preview.data[2:8, 2:8] = 1
    assert widget.commit() == [4]
    drain_jobs(widget)
    failing_saves(True)
    widget.session.layers.preview.data[58:62, 58:62] = 1
    assert widget.commit() == [5]
    drain_jobs(widget)
    assert len([n for n in notifications if "No space left on device" in n]) == 2


def test_a_failed_save_now_with_autosave_ticked_keeps_the_edits_unsaved(
    committed_once, failing_saves, drain_jobs, monkeypatch, close_blocker, notifications
):
    """Save now forgot the failed autosave before it saved, and remembered its own failure
    only with autosave unticked: napari then closed unasked, the commit on no disk. Its
    error, the autosave's said before, was not said either."""
    from qtpy.QtWidgets import QMessageBox

    viewer, widget = committed_once
    assert widget.ui.autosave_check.isChecked()
    closes = close_blocker(viewer.window._qt_window)
    failing_saves(True)
    _commit_object_2(widget, drain_jobs)
    widget.start_save_now()
    drain_jobs(widget)
    assert len([n for n in notifications if "No space left on device" in n]) == 2
    asked = []
    cancel = QMessageBox.StandardButton.Cancel
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(args[2]) or cancel)
    viewer.window._qt_window.close(quit_app=False, confirm_need=False)
    assert len(asked) == 1 and "'cells0'" in asked[0]
    assert closes.count == 0  # cancelled: napari stays open with the edits


@pytest.fixture
def failing_when_waited_for(monkeypatch):
    """``failing_when_waited_for(widget)``: the widget's background saves run until the
    widget waits for them (napari closing, another image chosen), then fail as on a full
    disk: the failure comes while it waits, whatever the timing."""
    import threading

    gate = threading.Event()

    def save(*args, **kwargs):
        assert gate.wait(WAIT_MS / 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(annotate_saves, "save_annotations", save)

    def hold(widget) -> None:
        real_wait = widget.runner.wait

        def wait(name: str) -> bool:
            gate.set()
            return real_wait(name)

        monkeypatch.setattr(widget.runner, "wait", wait)

    yield hold
    gate.set()


def test_a_save_failing_while_napari_closes_is_asked_about(
    committed_once, failing_when_waited_for, monkeypatch, close_blocker, tmp_path, notifications
):
    """The save waited for at the close failed there: the window closed unasked and the
    commit was on no disk, unsaid (the failed save's callbacks were dropped)."""
    from qtpy.QtWidgets import QMessageBox

    viewer, widget = committed_once
    failing_when_waited_for(widget)
    window = viewer.window._qt_window
    closes = close_blocker(window)
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]  # its save starts, and fails once the close waits for it
    asked, cancel = [], QMessageBox.StandardButton.Cancel
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(args[2]) or cancel)
    window.close(quit_app=False, confirm_need=False)  # napari's menu, a person's close
    said = "saving annotations failed: [Errno 28] No space left on device"
    assert any(said in n for n in notifications), notifications
    assert len(asked) == 1 and "'cells0'" in asked[0]
    assert closes.count == 0  # Cancel: the close stopped there, napari stays open
    assert widget.session in widget._not_autosaved
    assert 2 not in tifffile.imread(tmp_path / "cells0.labels.tif")


def test_a_save_failing_as_its_image_is_left_is_kept_unsaved_and_saved_later(
    committed_once, failing_saves, failing_when_waited_for, drain_jobs, notifications, tmp_path
):  # (failing_saves first: what it restores is the real save)
    """Another image chosen while the save ran: it failed unsaid, the image's commit was
    not among the unsaved (nothing asked at closing), and no later save tried it again."""
    _, widget = committed_once
    failing_when_waited_for(widget)
    session = widget.session
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]
    widget.ui.image_combo.setCurrentText("cells1")  # waits for the save, which fails
    drain_jobs(widget)
    assert any("saving annotations failed" in n and "No space left" in n for n in notifications)
    assert session in widget._not_autosaved
    failing_saves(False)  # room again: the next save saves it too
    widget.session.layers.preview.data[5:15, 5:15] = 1
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert 2 in tifffile.imread(tmp_path / "cells0.labels.tif")
    assert session not in widget._not_autosaved


def test_a_save_failing_before_its_layers_are_put_away_is_not_left_unsaved(
    committed_once, failing_when_waited_for, drain_jobs, notifications
):
    """New pixels of another shape: the annotations so far are saved and put away; the
    background save that failed in the wait before left the session counted unsaved (closing
    asked of it, a later save wrote the old layout again)."""
    viewer, widget = committed_once
    failing_when_waited_for(widget)
    session = widget.session
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]
    viewer.layers["cells0"].data = np.zeros((80, 80), dtype=np.float32)  # another shape
    drain_jobs(widget)
    assert any("saved and put away" in n for n in notifications), notifications
    assert session not in widget._not_autosaved


def test_a_session_put_away_when_both_saves_fail_is_not_left_unsaved(
    committed_once, failing_when_waited_for, drain_jobs, notifications, monkeypatch
):
    """Its layer stays as a layer of its own, renamed, and says so; the session counted
    unsaved by the failed background save made closing ask of it, and a later save wrote
    the old layout again."""
    from napari_samtune._qt.annotate_session import AnnotationSession

    viewer, widget = committed_once
    failing_when_waited_for(widget)
    session = widget.session

    def full_disk(self, folder, *args, **kwargs):
        raise OSError(28, "No space left on device")

    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]
    monkeypatch.setattr(AnnotationSession, "save", full_disk)
    viewer.layers["cells0"].data = np.zeros((80, 80), dtype=np.float32)  # another shape
    drain_jobs(widget)
    assert any("the annotations stay as layer" in n for n in notifications), notifications
    assert session not in widget._not_autosaved


def _written_by_another_napari_first(monkeypatch, path, theirs, release=None):
    """The widget's background saves find ``path`` written by another napari (``theirs``)
    between choosing it and writing: that save, once ``release`` is set, lands first."""
    from napari_samtune.core.annotation_files import write_annotations

    real, landed = annotate_saves.save_annotations, []

    def save(*args, **kwargs):
        if release is not None:
            release.wait(30)
        if not landed:
            landed.append(write_annotations(path, "cells0", theirs, {"objects": []}))
        return real(*args, **kwargs)

    monkeypatch.setattr(annotate_saves, "save_annotations", save)
    return landed


@pytest.mark.parametrize("waited", [False, True], ids=["in the background", "as napari closes"])
def test_a_labels_file_another_napari_saved_as_this_save_began_is_kept(
    committed_once, drain_jobs, tmp_path, notifications, monkeypatch, waited
):
    """Two napari windows saving one image name: the other's save landed after this one
    chose the file (unchanged then) and before it wrote, and was replaced unsaid. The save
    is now made again beside it, also while napari closes and waits for it."""
    import threading

    from napari_samtune.core.annotation_files import load_annotations

    _, widget = committed_once
    path = tmp_path / "cells0.labels.tif"
    theirs = np.zeros((64, 64), np.uint32)
    theirs[40:50, 5:15] = 7
    release = threading.Event() if waited else None
    landed = _written_by_another_napari_first(monkeypatch, path, theirs, release)
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]
    if waited:
        release.set()
        widget.flush_autosave()  # what napari's close runs
    drain_jobs(widget)
    assert landed
    np.testing.assert_array_equal(tifffile.imread(path), theirs)  # theirs, as they left it
    beside = next(tmp_path.glob("cells0-*.labels.tif"))
    ours, record = load_annotations(beside)
    assert set(np.unique(ours)) == {0, 1, 2} and len(record["objects"]) == 2
    assert any("changed by another program" in n and beside.name in n for n in notifications)
    assert not any("failed" in n for n in notifications)
    assert not widget._not_autosaved


def test_another_image_chosen_in_the_turn_a_save_began_does_not_hang(
    committed_once, qtbot, tmp_path
):
    """A commit and another image chosen in one turn of the event loop (a script, napari's
    console): the image switch waited for the commit's save, which superqt hands to a
    thread only at the loop's next turn, for ever. The save is now made there and then."""
    from qtpy.QtCore import QTimer

    _, widget = committed_once
    done = []

    def in_one_turn() -> None:
        widget.session.layers.preview.data[30:40, 30:40] = 1
        assert widget.commit() == [2]
        widget.ui.image_combo.setCurrentText("cells1")
        done.append(widget.session.image_layer.name)

    QTimer.singleShot(0, in_one_turn)
    qtbot.waitUntil(lambda: bool(done), timeout=WAIT_MS)
    assert done == ["cells1"]
    assert set(np.unique(tifffile.imread(tmp_path / "cells0.labels.tif"))) == {0, 1, 2}
    assert not widget._not_autosaved
