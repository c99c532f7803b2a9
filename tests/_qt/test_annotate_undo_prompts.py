"""U brings prompts back: right after Shift+C the cleared ones (a slip of the key lost every
point and box of the image), and with an undone commit the prompts it used (a wrong object
had to be clicked again from the start)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.key_bindings import KeymapHandler

from napari_samtune._qt.prompt_layers import POINT_COLORS


def _keys(provider, viewer) -> KeymapHandler:
    keys = KeymapHandler()
    keys.keymap_providers = [provider, viewer]  # what napari asks when the layer is active
    return keys


def _positive_then_negative(widget, negative_rc) -> None:
    """A positive point at (128, 128), then a negative one at ``negative_rc``."""
    widget.session.layers.points.add([128, 128])
    widget.toggle_polarity()
    widget.session.layers.points.add(negative_rc)


def test_undo_after_a_clear_brings_its_prompts_back_with_their_polarity(viewer_widget):
    viewer, widget = viewer_widget
    layers = widget.session.layers
    _positive_then_negative(widget, [40, 200])
    layers.boxes.add_rectangles(np.array([[100.0, 100.0], [160.0, 170.0]]))
    points, boxes = layers.points.data.copy(), [b.copy() for b in layers.boxes.data]
    preview = layers.preview.data.copy()
    assert preview.any()
    keys = _keys(layers.points, viewer)
    keys.press_key("Shift-C")
    assert not len(layers.points.data) and not len(layers.boxes.data)
    assert not layers.preview.data.any()
    keys.press_key("U")
    np.testing.assert_array_equal(layers.points.data, points)
    assert list(layers.points.features["label"]) == ["positive", "negative"]
    red = np.array([int(POINT_COLORS["negative"][i : i + 2], 16) / 255 for i in (1, 3, 5)])
    np.testing.assert_allclose(layers.points.face_color[1][:3], red, atol=0.01)
    assert len(layers.boxes.data) == 1
    np.testing.assert_array_equal(layers.boxes.data[0], boxes[0])
    assert list(layers.boxes.shape_type) == ["rectangle"]
    np.testing.assert_array_equal(layers.preview.data, preview)  # recomputed from them
    assert "brought back the 3 prompts" in widget.ui.status_label.text()
    assert not widget.undo()  # once; no commit to undo either
    assert len(layers.points.data) == 2 and len(layers.boxes.data) == 1


def test_undoing_a_commit_brings_its_prompts_and_preview_back(viewer_widget):
    _, widget = viewer_widget
    layers = widget.session.layers
    _positive_then_negative(widget, [20, 20])
    preview = layers.preview.data.copy()
    assert widget.commit() == [1]
    assert not len(layers.points.data) and not layers.preview.data.any()
    assert widget.session.undo_stack.peek().prompts.previews == {}  # U recomputes the plane
    assert widget.undo()
    assert not widget.session.annotations.any()
    np.testing.assert_array_equal(layers.points.data, [[128, 128], [20, 20]])
    assert list(layers.points.features["label"]) == ["positive", "negative"]
    np.testing.assert_array_equal(layers.preview.data, preview)
    assert "its 2 prompts are back" in widget.ui.status_label.text()
    assert widget.commit() == [1]  # the same object again
    np.testing.assert_array_equal(widget.session.annotations == 1, preview > 0)


def test_undo_steps_back_through_commits_with_their_prompts(viewer_widget):
    _, widget = viewer_widget
    layers = widget.session.layers
    layers.points.add([128, 128])
    widget.commit()
    layers.boxes.add_rectangles(np.array([[20.0, 20.0], [80.0, 80.0]]))
    widget.commit()
    assert widget.undo()  # the box's object: its box back
    assert widget.session.annotations.max() == 1 and len(layers.boxes.data) == 1
    assert widget.undo()  # the point's object: its point instead of the box
    assert not widget.session.annotations.any()
    np.testing.assert_array_equal(layers.points.data, [[128, 128]])
    assert not len(layers.boxes.data)


def test_prompts_of_the_persons_own_stay_when_a_commit_is_undone(viewer_widget, notifications):
    """...and U says that the commit's prompts were not put back: the object was gone, its
    prompts did not come back, and nothing said why (after a propagation, a 3D object)."""
    _, widget = viewer_widget
    layers = widget.session.layers
    layers.points.add([128, 128])
    widget.commit()
    assert widget.session.annotations.max() == 1
    layers.points.add([40, 40])
    widget.clear()
    layers.points.add([200, 60])  # a new start after the clear: U is about commits again
    assert widget.undo()
    assert widget.session.annotations.max() == 0
    np.testing.assert_array_equal(layers.points.data, [[200, 60]])  # not replaced
    assert notifications[-1] == (
        "undid the last commit; its prompts were not put back, as the prompts on the layers "
        "now (another object's) stay: commit (C) or clear (Shift+C) them"
    )


def test_cleared_prompts_do_not_come_back_on_another_image(cells_viewer, tiny_sam, drain_jobs):
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = cells_viewer(2)
    widget = AnnotateWidget(viewer)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    widget.session.layers.points.add([10, 10])
    widget.clear()
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    assert not widget.undo()
    assert not len(widget.session.layers.points.data)


def test_after_a_clear_a_loaded_file_is_what_undo_takes_back(
    viewer_widget, tmp_path, nuclei_image, drain_jobs
):
    """U right after Shift+C brought the cleared prompts back even after a file was loaded
    (whose note says U takes it back): the loaded objects stayed, and a second U was needed."""
    import tifffile

    _, widget = viewer_widget
    layers = widget.session.layers
    widget.ui.folder_edit.setText(str(tmp_path))
    layers.points.add([128, 128])
    widget.clear()
    segmented = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(segmented, nuclei_image[1])
    assert widget.start_loading_annotations(segmented) is not None
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, nuclei_image[1])
    assert widget.undo()
    assert not widget.session.annotations.any()  # the load is undone
    assert not len(layers.points.data)  # and the clear stays
    assert not widget.undo()  # its prompts do not come back later either
    assert not len(layers.points.data)


@pytest.mark.parametrize("batched", [False, True], ids=["one object", "batched"])
def test_undo_of_a_commit_on_several_planes_brings_back_every_plane_s_preview(
    stack_widget, drain_jobs, batched
):
    """Prompted on planes 0 and 2, committed from plane 2, then U: plane 0's points came
    back but not its preview, and C again wrote the object without plane 0 (in batched
    mode, one object fewer) and cleared plane 0's prompts, without a word."""
    from napari_samtune._qt.annotate_ui import BATCHED_MODE

    viewer, widget = stack_widget
    if batched:
        widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    layers = widget.session.layers
    layers.points.add([0, 48, 48])
    drain_jobs(widget)
    viewer.dims.set_current_step(0, 2)
    drain_jobs(widget)
    layers.points.add([2, 48, 48])
    drain_jobs(widget)
    shown = [int(layers.preview.data[plane].astype(bool).sum()) for plane in range(3)]
    assert shown[0] and shown[2]  # the tiny model's masks of both planes
    first = widget.commit()
    drain_jobs(widget)
    written = (widget.session.annotations > 0).copy()
    kept = widget.session.undo_stack.peek().prompts.previews  # each plane's objects' box
    for plane, crop in kept.items():
        rows, cols = np.nonzero(written[plane])
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert crop.pixels.size == box  # (the tiny model's masks span their planes)
    assert widget.undo()
    drain_jobs(widget)
    assert [int(layers.preview.data[plane].astype(bool).sum()) for plane in range(3)] == shown
    again = widget.commit()
    drain_jobs(widget)
    assert len(again) == len(first)
    np.testing.assert_array_equal(widget.session.annotations > 0, written)


def test_a_kept_preview_is_the_box_around_its_objects():
    from napari_samtune._qt.kept_prompts import Crop, whole_plane

    plane = np.zeros((4096, 4096), np.uint32)
    plane[100:140, 2000:2030], plane[120:180, 2010:2020] = 3, 4
    crop = Crop.of(plane)
    assert crop.pixels.shape == (80, 30) and not np.shares_memory(crop.pixels, plane)
    np.testing.assert_array_equal(whole_plane(crop, plane.shape), plane)
    np.testing.assert_array_equal(whole_plane(Crop.of(0 * plane[:8, :8]), (8, 8)), 0)


def test_a_second_undo_leaves_no_preview_of_the_first_undone_commit_on_another_plane(
    stack_widget, drain_jobs
):
    """Object 1 committed on plane 0, object 2 on plane 2; U, then U again from plane 0: its
    point came back, but plane 2 still showed object 2's preview (out of view, never
    redone), and C merged it into object 1 on planes 0 and 2."""
    viewer, widget = stack_widget
    layers = widget.session.layers
    layers.points.add([0, 30, 30])
    drain_jobs(widget)
    first = widget.commit()
    drain_jobs(widget)
    viewer.dims.set_current_step(0, 2)
    drain_jobs(widget)
    layers.points.add([2, 60, 60])
    drain_jobs(widget)
    widget.commit()
    drain_jobs(widget)
    assert widget.undo()  # object 2: its point and plane 2's preview come back
    drain_jobs(widget)
    assert 2 in layers.preview_planes()
    viewer.dims.set_current_step(0, 0)
    drain_jobs(widget)
    assert widget.undo()  # object 1
    drain_jobs(widget)
    np.testing.assert_array_equal(layers.points.data, [[0, 30, 30]])
    assert layers.preview_planes() == [0]
    assert widget.commit() == first
    drain_jobs(widget)
    assert not widget.session.annotations[2].any()
