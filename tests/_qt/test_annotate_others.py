"""Images other than the one a job writes into, or than the one chosen: annotated while a
propagation or automatic segmentation runs elsewhere, renamed or removed while another
image is chosen. Nothing the person did there is refused for no reason, or lost unsaid."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import tifffile

from napari_samtune._qt import annotate_jobs
from napari_samtune.core.synthetic import make_image

WAIT_MS = 30_000


def _propagation_held(monkeypatch) -> threading.Event:
    """Propagation 'reaches' plane 1 (a square), then waits until the event is set."""
    gate = threading.Event()

    def gated(
        segmenter, axes, data, start_plane, start_mask, config, keep_out, image_name="", stop=None
    ):
        labels = np.zeros(axes.spatial_shape[-2:], np.uint32)
        labels[30:50, 30:50] = 1
        yield annotate_jobs.PlaneResult(1, labels)
        assert gate.wait(WAIT_MS / 1000)
        yield annotate_jobs.PropagationEnd((1,))

    monkeypatch.setattr(annotate_jobs, "iter_propagate_object", gated)
    return gate


def test_another_image_is_annotated_while_a_stack_propagates(
    stack_widget, qtbot, drain_jobs, monkeypatch, notifications
):
    """While propagation ran through a stack, commit (C) and clear (Shift+C) were refused
    on every image, though only the stack's preview is the propagation's."""
    gate = _propagation_held(monkeypatch)
    viewer, widget = stack_widget
    viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
    stack = widget.session
    stack.layers.preview.data[0, 40:50, 40:50] = 1
    try:
        assert widget.propagate() is not None
        qtbot.waitUntil(lambda: stack.layers.preview.data[1].any(), timeout=WAIT_MS)
        widget.ui.image_combo.setCurrentText("other")
        other = widget.session
        other.layers.preview.data[10:20, 10:20] = 1
        assert widget.commit() == [1]
        other.layers.points.add([70, 70])
        widget.clear()
        assert len(other.layers.points.data) == 0
        other.layers.points.add([48, 48])  # previewed once the Segmenter is free
        assert "the preview waits for the job running on 'stack'" in notifications[-1]
        widget.ui.image_combo.setCurrentText("stack")
        assert widget.session is stack
        assert widget.commit() == []  # the stack's preview is still the propagation's
        assert "wait for the propagation to finish, then commit" in notifications[-1]
        widget.clear()
        assert stack.layers.preview.data[1].any()
        widget.ui.image_combo.setCurrentText("other")
    finally:
        gate.set()
    drain_jobs(widget)
    assert widget.session.layers.points is other.layers.points
    assert other.layers.preview.data.any()
    assert widget.commit() == [2]
    widget.ui.image_combo.setCurrentText("stack")
    drain_jobs(widget)
    assert widget.commit() == [1] and widget.session.records[-1]["planes"] == [0, 1]


def test_another_image_is_undone_while_a_stack_is_segmented_automatically(
    stack_widget, hold_planes, qtbot, drain_jobs, notifications
):
    """Undo (U) was refused on every image while automatic segmentation ran on one."""
    gate = hold_planes()
    viewer, widget = stack_widget
    viewer.add_image(make_image((96, 96), seed=9)[0], name="other")
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)
    widget.ui.points_per_side_spin.setValue(4)
    stack = widget.session
    try:
        assert widget.segment_automatically() is not None
        qtbot.waitUntil(lambda: stack.annotations[0].any(), timeout=WAIT_MS)
        widget.ui.image_combo.setCurrentText("other")
        other = widget.session
        other.layers.preview.data[10:20, 10:20] = 1
        assert widget.commit() == [1]
        assert widget.undo()
        assert not other.annotations.any()
        widget.ui.image_combo.setCurrentText("stack")
        assert not widget.undo()  # the run's objects are not all written yet
        assert "wait for the automatic segmentation to finish" in notifications[-1]
    finally:
        gate.open()
    drain_jobs(widget)
    assert stack.annotations.any()


def _rename_cells0_to_dapi(viewer, annotations, tmp_path, notifications) -> None:
    """Rename image cells0 to "dapi": its layers and its saved annotations follow."""
    viewer.layers["cells0"].name = "dapi"
    assert annotations.name == "dapi annotations"
    assert {"dapi points", "dapi boxes", "dapi current object"} <= {ly.name for ly in viewer.layers}
    assert not {"cells0 points", "cells0 annotations"} & {ly.name for ly in viewer.layers}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dapi.labels.tif", "dapi.prompts.json"]
    assert any("now saved as" in n and "dapi.labels.tif" in n for n in notifications)


def test_an_image_renamed_while_another_is_chosen_keeps_its_annotations(
    cells_with_one_saved_object, drain_jobs, tmp_path, notifications
):
    """Renamed while another image was chosen, then chosen again: it got a new, empty
    annotations layer under its new name (its annotations stayed in the layer under the
    old name), and its saved annotations were not found."""
    viewer, widget = cells_with_one_saved_object(tmp_path)
    annotations = widget.session.layers.annotations
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    _rename_cells0_to_dapi(viewer, annotations, tmp_path, notifications)
    widget.ui.image_combo.setCurrentText("dapi")
    drain_jobs(widget)
    assert widget.session.layers.annotations is annotations
    assert (annotations.data == 1).any() and len(widget.session.records) == 1
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "dapi.labels.tif")
    assert set(np.unique(saved)) == {0, 1, 2}


def test_an_image_annotated_before_the_panel_was_reopened_keeps_its_annotations_when_renamed(
    cells0_saved_then_panel_reopened, drain_jobs, tmp_path, notifications
):
    """An image annotated earlier (its layers still there, its annotations saved) but whose
    session was no longer kept, renamed while another was chosen: its layers and files
    stayed under the old name, so chosen again it started empty."""
    viewer, reopened, first = cells0_saved_then_panel_reopened(tmp_path)
    annotations = first.layers.annotations
    _rename_cells0_to_dapi(viewer, annotations, tmp_path, notifications)
    reopened.ui.image_combo.setCurrentText("dapi")
    drain_jobs(reopened)
    assert reopened.session.layers.annotations is annotations
    assert (annotations.data == 1).any() and len(reopened.session.records) == 1


def test_an_annotations_layer_left_by_a_removed_image_saves_strokes_without_holding_it(
    cells_with_one_saved_object, qtbot, drain_jobs, tmp_path
):
    """After its image was removed, the annotations layer left in the viewer was still
    watched for brush strokes, and that watch held the removed image and its pixels."""
    viewer, widget = cells_with_one_saved_object(tmp_path)
    annotations = widget.session.layers.annotations
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    image = weakref.ref(viewer.layers["cells0"])
    pixels = weakref.ref(viewer.layers["cells0"].data)
    viewer.layers.remove("cells0")
    qtbot.wait(10)
    gc.collect()
    assert image() is None and pixels() is None
    annotations.paint((40, 40), 9)  # a correction on the layer left behind
    qtbot.wait(10)
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    assert (saved == 9).any() and (saved == 1).any()


def _cells_edited_without_autosave(cells_with_one_saved_object, drain_jobs, tmp_path):
    """cells0 with object 1 saved, then object 2 committed with autosave unticked, and
    cells1 chosen."""
    viewer, widget = cells_with_one_saved_object(tmp_path)
    widget.ui.autosave_check.setChecked(False)
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    return viewer, widget


def test_removing_an_image_edited_without_autosave_says_where_its_edits_are(
    cells_with_one_saved_object, qtbot, drain_jobs, tmp_path, notifications
):
    """An image edited with autosave unticked, removed: its kept session held the image
    on, and nothing said that its edits were saved nowhere."""
    viewer, widget = _cells_edited_without_autosave(
        cells_with_one_saved_object, drain_jobs, tmp_path
    )
    assert widget._not_autosaved
    viewer.layers.remove("cells0")
    qtbot.wait(10)  # said once the layers removed with it are gone
    assert widget._not_autosaved == []
    said = [n for n in notifications if "'cells0'" in n and "not saved" in n]
    assert len(said) == 1 and said[0].severity == "warning"
    assert "'cells0 annotations'" in said[0] and "Save now" in said[0]
    widget.ui.autosave_check.setChecked(True)  # nothing left to save: no error either
    drain_jobs(widget)


@pytest.mark.parametrize("current", [True, False])
def test_removing_the_annotations_of_an_image_edited_without_autosave_says_they_are_lost(
    cells_with_one_saved_object, qtbot, drain_jobs, tmp_path, notifications, current
):
    """Its unsaved commits went with the layer unsaid: picked again, the image showed its
    last save, and a later autosave wrote that over the file."""
    viewer, widget = _cells_edited_without_autosave(
        cells_with_one_saved_object, drain_jobs, tmp_path
    )
    if current:  # the image annotated now, else one chosen before (cells1 is chosen)
        widget.ui.image_combo.setCurrentText("cells0")
        drain_jobs(widget)
    viewer.layers.remove("cells0 annotations")
    qtbot.wait(10)
    assert widget._not_autosaved == []
    said = [n for n in notifications if "'cells0 annotations' was removed with edits" in n]
    assert len(said) == 1 and said[0].severity == "warning", [str(n) for n in notifications]
    assert "those edits are lost; picked again, it shows its last save, " in said[0]
    assert str(tmp_path / "cells0.labels.tif") in said[0]


def test_removing_an_image_and_its_annotations_edited_without_autosave_says_they_are_lost(
    cells_with_one_saved_object, qtbot, drain_jobs, tmp_path, notifications
):
    viewer, widget = _cells_edited_without_autosave(
        cells_with_one_saved_object, drain_jobs, tmp_path
    )
    viewer.layers.selection = {viewer.layers["cells0"], viewer.layers["cells0 annotations"]}
    viewer.layers.remove_selected()
    qtbot.wait(10)
    assert widget._not_autosaved == []
    said = [n for n in notifications if "'cells0'" in n and "not saved" in n]
    assert len(said) == 1 and said[0].severity == "warning"
    assert "lost" in said[0] and str(tmp_path / "cells0.labels.tif") in said[0]


def test_a_panel_opened_again_saves_where_the_layers_it_goes_on_with_were_saved(
    cells_with_one_saved_object, tiny_sam, drain_jobs, tmp_path, monkeypatch, notifications
):
    """Opened again, the panel started in $SAMTUNE_ANNOTATIONS_DIR's folder (or the one
    last chosen in another window) and saved the annotations it went on with there, unsaid:
    the folder they were saved in kept the older copy."""
    from napari_samtune._qt.annotate import AnnotateWidget

    saved_in, elsewhere = tmp_path / "chosen", tmp_path / "elsewhere"
    viewer, widget = cells_with_one_saved_object(saved_in)
    widget.shut_down()
    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(elsewhere))
    reopened = AnnotateWidget(viewer)
    assert reopened.annotation_folder() == saved_in
    assert any(
        f"the annotations of 'cells0' were saved in {saved_in}, so this panel saves there "
        f"(not in {elsewhere})" in note
        for note in notifications
    )
    reopened.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(reopened)
    reopened.session.layers.preview.data[30:40, 30:40] = 1
    assert reopened.commit() == [2]
    drain_jobs(reopened)
    assert set(np.unique(tifffile.imread(saved_in / "cells0.labels.tif"))) == {0, 1, 2}
    assert not elsewhere.exists()


def test_a_panel_opened_again_on_an_image_never_saved_keeps_its_starting_folder(
    cells_with_one_saved_object, drain_jobs, tmp_path, monkeypatch, notifications
):
    """Another image's folder is not this image's: the panel took the folder most
    annotations layers of the viewer were saved in, and split an image's saves in two."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer, widget = cells_with_one_saved_object(tmp_path / "chosen")  # cells0 saved there
    widget.shut_down()
    viewer.layers.move(viewer.layers.index("cells1"), 0)  # the panel opens on cells1
    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(tmp_path / "elsewhere"))
    reopened = AnnotateWidget(viewer)
    assert reopened.annotation_folder() == tmp_path / "elsewhere"
    assert not any("so this panel saves there" in note for note in notifications)
    drain_jobs(reopened)
