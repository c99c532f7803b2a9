"""The widget's keys with another image selected than the one annotated; a commit that leaves
out a plane of its object."""

from __future__ import annotations

import numpy as np
from napari.utils.key_bindings import KeymapHandler


def _press(key: str, layer, viewer) -> None:
    keys = KeymapHandler()
    keys.keymap_providers = [layer, viewer]  # what napari asks while the layer is selected
    keys.press_key(key)
    keys.release_key(key)


def _committed_on(viewer, image: str, tiny_sam, drain_jobs):
    """An Annotate panel on ``viewer`` that committed object 1 on ``image`` (a point)."""
    from napari_samtune._qt.annotate import AnnotateWidget

    widget = AnnotateWidget(viewer)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    widget.ui.image_combo.setCurrentText(image)
    drain_jobs(widget)
    widget.session.layers.points.add([32, 32])
    drain_jobs(widget)
    assert widget.commit() == [1]
    drain_jobs(widget)
    return widget


def test_u_with_another_image_selected_undoes_nothing_and_says_why(
    cells_viewer, tiny_sam, drain_jobs, notifications
):
    """cells0 annotated before, cells1 now: U with cells0's image layer selected undid
    cells1's last commit, without a word (no redo), where cells0's other layers refuse."""

    viewer = cells_viewer(2)
    widget = _committed_on(viewer, "cells1", tiny_sam, drain_jobs)
    committed = widget.session.annotations.copy()
    viewer.layers.selection.active = viewer.layers["cells0"]
    for key in ("U", "Shift-C", "T"):
        _press(key, viewer.layers["cells0"], viewer)
    np.testing.assert_array_equal(widget.session.annotations, committed)
    assert notifications[-1] == (
        "image 'cells0' is selected, not the image annotated now ('cells1'): pick 'cells0' "
        "under Image to annotate it, or select a layer of 'cells1'"
    )
    own = viewer.add_labels(np.zeros((64, 64), np.uint32), name="mine")  # a layer of no image
    viewer.layers.selection.active = own
    _press("U", own, viewer)
    assert not widget.session.annotations.any()  # acts on the image annotated now


def test_a_commit_that_leaves_out_a_plane_of_its_object_says_which(
    stack_widget, drain_jobs, notifications
):
    """A propagated object lying wholly on an existing object on one plane: the commit wrote
    the others and left that plane out, the 3D object split by a gap, without a word."""
    viewer, widget = stack_widget
    preview = widget.session.layers.preview
    preview.data[1, 10:30, 10:30] = 1
    assert widget.commit() == [1]
    drain_jobs(widget)
    preview.data[:, 12:28, 12:28] = 1  # planes 0-2; plane 1 inside object 1
    preview.refresh()
    assert widget.commit() == [2]
    drain_jobs(widget)
    annotations = widget.session.annotations
    assert [bool((annotations[z] == 2).any()) for z in range(3)] == [True, False, True]
    assert (
        "plane 1 of the object left out: it lay wholly on existing objects there (overwrite "
        "is off); to add it there, tick overwrite, view the plane and prompt it again"
    ) in notifications


def test_batched_overlaps_go_to_the_box_with_negative_points_too(sensitive_widget):
    """Without negative points a box's object kept the pixels a point's object shared with
    it; with one (in an empty corner) the larger logit won, and the point's object took
    half the box's cell."""
    from napari_samtune.core.synthetic import make_image

    _, widget = sensitive_widget(make_image((160, 160), seed=2)[0], "cells")
    box, point, corner = np.array([[60.0, 60, 140, 140]]), np.array([[100.0, 100]]), [[5.0, 5]]
    predict = widget.segmenter.predict_with_negatives
    labels = widget._predict_each(box, point, np.array(corner))
    by_box = predict(box, np.zeros((0, 2)), np.array(corner)) > 0
    by_point = predict(np.zeros((0, 4)), point, np.array(corner)) > 0
    assert (by_box & by_point).any()  # an overlap to decide
    np.testing.assert_array_equal(labels == 1, by_box)
    np.testing.assert_array_equal(labels == 2, by_point & ~by_box)


def test_a_mode_change_on_a_stack_leaves_no_plane_of_the_other_mode_to_commit(
    stack_widget, drain_jobs, notifications
):
    """Only the plane in view was segmented again: C then wrote plane 0's two batched
    objects as they were, recorded as one-object mode's work."""
    from napari_samtune._qt.annotate_ui import BATCHED_MODE, SINGLE_MODE

    viewer, widget = stack_widget
    layers = widget.session.layers
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    layers.points.add([[0, 30, 30], [0, 60, 60]])
    drain_jobs(widget)
    viewer.dims.set_current_step(0, 2)
    drain_jobs(widget)
    layers.points.add([2, 48, 48])
    drain_jobs(widget)
    widget.ui.mode_combo.setCurrentText(SINGLE_MODE)
    drain_jobs(widget)
    assert widget.commit() == []
    assert "the preview of plane 0 does not show your latest prompts" in notifications[-1]
    viewer.dims.set_current_step(0, 0)  # viewed: segmented as one object
    drain_jobs(widget)
    assert len(widget.commit()) == 1


def test_keys_on_an_earlier_image_s_layers_after_the_panel_reopened_act_on_nothing(
    cells_viewer, tiny_sam, drain_jobs, notifications
):
    """cells1 annotated, the panel closed and opened again on cells0: U on "cells1 points"
    (no keys of its own any more) undid cells0's last commit, unsaid; with the old panel's
    keys left on that layer, C did nothing and said nothing."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = cells_viewer(2)
    first = AnnotateWidget(viewer)
    first.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(first)
    for name in ("cells1", "cells0", "cells1"):
        first.ui.image_combo.setCurrentText(name)
        drain_jobs(first)
    first.shut_down()
    widget = _committed_on(viewer, "cells0", tiny_sam, drain_jobs)
    committed = widget.session.annotations.copy()
    other = viewer.layers["cells1 points"]
    viewer.layers.selection.active = other
    for key in ("U", "C"):
        notifications.clear()
        _press(key, other, viewer)
        np.testing.assert_array_equal(widget.session.annotations, committed)
        assert notifications and notifications[-1].startswith(
            "layer 'cells1 points' belongs to image 'cells1', not to the image annotated now"
        )


def test_ctrl_z_on_the_annotations_is_napari_s_again_once_the_panel_closes(
    cells_viewer, tiny_sam, drain_jobs, notifications
):
    """It still said "...; U undoes its last commit", and U no longer did anything."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = cells_viewer(1)
    widget = AnnotateWidget(viewer)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    annotations = widget.session.layers.annotations
    widget.shut_down()
    notifications.clear()
    _press("Control-Z", annotations, viewer)
    assert not any("U undoes" in n for n in notifications)


def test_c_without_prompts_asks_for_them_rather_than_blaming_the_model(
    viewer_widget, drain_jobs, notifications
):
    """It said "the model found no object at these prompts: try ... another model"."""
    _viewer, widget = viewer_widget
    assert widget.commit() == []
    assert notifications[-1] == (
        "nothing to commit: no prompts yet; click an object or draw a box first"
    )
