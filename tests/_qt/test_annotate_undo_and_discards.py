"""napari's own undo and redo (Ctrl+Z, Ctrl+Shift+Z) on the annotations layer are autosaved
like strokes, and an automatic run's planes dropped as a layer of its image was removed say
which layer."""

from __future__ import annotations

import tifffile
from app_model.types import KeyCode, KeyMod
from napari.utils.key_bindings import KeymapHandler

WAIT_MS = 30_000
UNDO, REDO = KeyMod.CtrlCmd | KeyCode.KeyZ, KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ


def _press(provider, viewer, key) -> None:
    keys = KeymapHandler()
    keys.keymap_providers = [provider, viewer]  # what napari asks when the layer is active
    keys.press_key(key)
    keys.release_key(key)


def _saved(path) -> int:
    """The pixels of id 7 in the labels file at ``path``."""
    return int((tifffile.imread(path) == 7).sum())


def _segment_all_planes_until_the_first(widget, qtbot) -> None:
    """Start automatic segmentation of every plane; return once plane 0 is annotated."""
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)
    widget.ui.points_per_side_spin.setValue(4)
    widget.ui.auto_scope_combo.setCurrentText("all planes")
    assert widget.segment_automatically() is not None
    annotations = widget.session.layers.annotations
    qtbot.waitUntil(lambda: annotations.data[0].any(), timeout=WAIT_MS)


def test_napari_undo_and_redo_of_a_brush_stroke_are_autosaved(
    viewer_widget, qtbot, drain_jobs, tmp_path
):
    """A brush stroke was autosaved, but napari's Ctrl+Z on the annotations layer (it sends
    no paint event) was not: the file kept the stroke undone, and it came back when the
    image was annotated again."""
    viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    layer = widget.session.layers.annotations
    layer.brush_size = 5
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS) as saved:
        layer.paint((50, 50), 7)
    drain_jobs(widget)
    path = saved.args[0]
    painted = _saved(path)
    assert painted > 0
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        _press(layer, viewer, UNDO)
    drain_jobs(widget)
    assert not (layer.data == 7).any() and _saved(path) == 0
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        _press(layer, viewer, REDO)
    drain_jobs(widget)
    assert (layer.data == 7).sum() == painted and _saved(path) == painted


def test_napari_undo_on_the_annotations_of_an_image_not_chosen_is_autosaved(
    cells_with_one_saved_object, qtbot, drain_jobs, tmp_path
):
    """Its brush strokes are autosaved while another image is chosen: so is their undo."""
    viewer, widget = cells_with_one_saved_object(tmp_path)
    layer = widget.session.layers.annotations
    layer.brush_size = 5
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS) as saved:
        layer.paint((50, 50), 7)
    drain_jobs(widget)
    assert _saved(saved.args[0]) > 0
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        _press(layer, viewer, UNDO)
    drain_jobs(widget)
    assert _saved(saved.args[0]) == 0 and (tifffile.imread(saved.args[0]) == 1).any()


def test_napari_undo_still_works_once_the_panel_is_closed(viewer_widget, drain_jobs):
    """The widget's Ctrl+Z on the annotations layer still undoes the stroke after the panel
    closed (nothing is saved then: the panel no longer autosaves)."""
    viewer, widget = viewer_widget
    layer = widget.session.layers.annotations
    layer.paint((50, 50), 7)
    drain_jobs(widget)
    widget.shut_down()
    _press(layer, viewer, UNDO)
    assert not (layer.data == 7).any()
    assert not widget.runner.is_running()


def test_a_run_s_results_dropped_as_a_layer_of_its_image_went_say_so(
    stack_widget, hold_planes, qtbot, drain_jobs, notifications
):
    """Automatic segmentation of a stack ran while the person deleted the image's
    annotations layer: the planes found after it were discarded "as another image was chosen
    while it ran", though none was. (A prompt layer deleted, they are kept:
    test_automatic_planes_found_after_a_prompt_layer_went_are_kept.)"""
    gate = hold_planes()
    viewer, widget = stack_widget
    try:
        _segment_all_planes_until_the_first(widget, qtbot)
        viewer.layers.remove("stack annotations")
    finally:
        gate.open()
    drain_jobs(widget)
    dropped = [n for n in notifications if "results discarded" in n]
    assert dropped, notifications
    assert "another image was chosen" not in dropped[0]
    assert "layer 'stack annotations' was removed while it ran" in dropped[0]


def test_removing_the_image_of_a_running_automatic_run_stops_it_without_errors(
    stack_widget, hold_planes, qtbot, drain_jobs, notifications, monkeypatch
):
    """The image of an automatic run over all planes was removed while it ran: every plane it
    found later raised an AttributeError (the session kept only the image's name), one per
    plane, and the run went on over the whole stack. Now its results are dropped with one
    note and it stops."""
    from napari_samtune._qt import annotate_jobs

    found, real = [], annotate_jobs.iter_segment_automatically

    def counted(*args, **kwargs):
        for item in real(*args, **kwargs):
            found.extend([item.plane] if isinstance(item, annotate_jobs.PlaneResult) else [])
            yield item

    monkeypatch.setattr(annotate_jobs, "iter_segment_automatically", counted)
    gate = hold_planes()
    viewer, widget = stack_widget
    annotations = widget.session.layers.annotations
    try:
        _segment_all_planes_until_the_first(widget, qtbot)
        viewer.layers.remove("stack")
        gate.release()  # the second plane reaches the widget
        qtbot.waitUntil(lambda: len(found) == 2, timeout=WAIT_MS)
    finally:
        gate.open()
    drain_jobs(widget)
    assert found == [0, 1]  # the third plane was not segmented
    dropped = [n for n in notifications if "results discarded" in n]
    assert len(dropped) == 1, notifications
    assert "layer 'stack' was removed while it ran (plane 1 of 'stack')" in dropped[0]
    assert not annotations.data[1:].any()


def test_a_discard_note_names_the_image_once():
    """It said "layer 'img3' was removed while it ran ('img3')"."""
    from napari_samtune._qt.annotate_embedding import dropped_note

    removed = "layer 'img3' was removed while it ran"
    assert dropped_note("automatic segmentation", "img3", [], removed) == (
        f"automatic segmentation: results discarded, {removed}"
    )
    other = dropped_note("embedding", "img3", [], "another image was chosen while it ran")
    assert other == "embedding: results discarded, another image was chosen while it ran ('img3')"
