"""Bugs a microscopist new to the Annotate panel ran into while trying every kind of image
and view, each with the test that found it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_ui import SCOPE_PLANE, SCOPE_STACK
from tests._qt.test_annotate_layout import _click, _dock


def _stack_viewer(make_napari_viewer, plane: int = 1):
    viewer = make_napari_viewer()
    pixels = np.random.default_rng(2).integers(0, 255, (5, 64, 64), dtype=np.uint8)
    viewer.add_image(pixels, name="st")
    viewer.dims.set_current_step(0, plane)
    return viewer


def test_a_stack_in_the_3d_view_says_to_switch_to_2d_to_prompt(
    make_napari_viewer, drain_jobs, tiny_sam, notifications
):
    """In the 3D view a click lands at a depth of the volume (here plane 3), not on the
    plane the slider shows (1): nothing was previewed and nothing said. The panel now says
    to switch to 2D, and the click is segmented on its plane once the view is 2D."""
    viewer = _stack_viewer(make_napari_viewer)
    widget = _dock(viewer, drain_jobs, tiny_sam)
    viewer.dims.ndisplay = 3
    _click(widget.session.layers.points, (3.0, 32.0, 20.0), [0, 1, 2])
    drain_jobs(widget)
    assert len(widget.session.layers.points.data) == 1
    assert any("switch the viewer to 2D" in n for n in notifications)
    assert widget.commit() == []  # it said "view plane 3 until it does", plane 3 in view
    assert notifications[-1].startswith(
        "not committed yet: the preview does not show your latest prompts, and the 3D view "
        "makes none; switch the viewer to 2D"
    )
    viewer.dims.ndisplay = 2
    viewer.dims.set_current_step(0, 3)  # the click's plane
    drain_jobs(widget)
    assert widget.session.layers.preview_planes() == [3]
    viewer.layers.clear()
    drain_jobs(widget)


def test_automatic_plane_in_view_is_refused_when_no_plane_is_in_view(
    make_napari_viewer, drain_jobs, tiny_sam, notifications
):
    """'plane in view' with the stack seen as a volume or transposed segmented the
    slider's old plane, one not shown, without a word; it is now refused, saying how to
    show a plane or to segment all planes."""
    viewer = _stack_viewer(make_napari_viewer)
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.auto_scope_combo.setCurrentText(SCOPE_PLANE)
    for show in ("3D", "transposed"):
        if show == "3D":
            viewer.dims.ndisplay = 3
        else:
            viewer.dims.ndisplay, viewer.dims.order = 2, (1, 0, 2)
        notifications.clear()
        assert widget.segment_automatically() is None
        assert any(SCOPE_STACK in n and "plane by plane" in n for n in notifications)
    viewer.dims.order = (0, 1, 2)
    assert widget.segment_automatically() is not None  # planes show again
    drain_jobs(widget)
    viewer.layers.clear()
    drain_jobs(widget)


def test_negative_points_alone_say_why_nothing_is_segmented(viewer_widget, notifications):
    """After a commit with a negative point, new points stay negative: the next object's
    click made a red point and no preview, without a word. Now the panel says negative
    points only mark background and how to make positive ones, again each time it
    happens after a preview."""
    _viewer, widget = viewer_widget
    points = widget.session.layers.points
    points.add([[30, 30]])
    widget.toggle_polarity()
    points.add([[34, 36]])
    assert widget.commit()
    for _ in range(2):
        points.add([[70, 70]])  # meant as the next object: negative, as T left it
        assert not widget.session.layers.preview.data.any()
        assert sum("only mark background" in n and "press T" in n for n in notifications) == 1
        widget.toggle_polarity()
        points.add([[72, 72]])
        assert widget.session.layers.preview.data.any()
        widget.clear()
        widget.toggle_polarity()
        notifications.clear()


def _most_interior_of_whole_plane(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(np.argmax(distance), mask.shape), dtype=np.float64)


def test_propagation_prompts_cost_the_object_not_the_plane(monkeypatch):
    """Each plane propagation reached had its prompts (the most interior pixel) found by a
    distance transform of the whole plane, on the GUI thread: 0.4 s per plane of 2048 x
    2048, 2 s of 4096 x 4096, the viewer frozen meanwhile. It now transforms the object's
    bounding box only, finding the same pixel (objects at the edges, several parts, ties)."""
    from scipy import ndimage

    from napari_samtune._qt import propagate

    shapes_seen = []
    real = ndimage.distance_transform_edt

    def recording(image, *args, **kwargs):
        shapes_seen.append(np.shape(image))
        return real(image, *args, **kwargs)

    monkeypatch.setattr(propagate.ndimage, "distance_transform_edt", recording)
    plane = np.zeros((2048, 2048), dtype=bool)
    plane[500:560, 700:780] = True
    point_rc, box_rc = propagate.prompts_from_mask(plane, box_margin=0.0)
    assert max(max(shape) for shape in shapes_seen) <= 82  # the box and its padding
    np.testing.assert_array_equal(point_rc, _most_interior_of_whole_plane(plane))
    np.testing.assert_array_equal(box_rc, [500, 700, 559, 779])
    rng = np.random.default_rng(7)
    for _ in range(30):
        mask = np.zeros((40, 50), dtype=bool)
        for _ in range(rng.integers(1, 4)):  # parts, some on the image's edges
            r, c = rng.integers(-5, 40), rng.integers(-5, 50)
            mask[max(r, 0) : r + rng.integers(1, 15), max(c, 0) : c + rng.integers(1, 15)] = True
        if mask.any():
            point_rc, _ = propagate.prompts_from_mask(mask)
            np.testing.assert_array_equal(point_rc, _most_interior_of_whole_plane(mask))


def test_autosaves_copy_the_annotations_into_the_last_ones_memory(
    viewer_widget, monkeypatch, qtbot, tmp_path
):
    """Each commit and brush stroke autosaved a new copy of the annotations, made on the GUI
    thread: for a 60 x 2048 x 2048 stack over a second (getting a gigabyte of memory) at
    every one, the viewer frozen. The copy now goes into the array the last save wrote; a
    save still writing keeps its own, and the file holds the labels of its commit."""
    import threading

    import tifffile

    from napari_samtune._qt import annotate_saves

    _viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    written, release = [], threading.Event()
    real = annotate_saves.save_annotations

    def held(folder, name, labels, *args):
        release.wait(30)
        written.append((labels, labels.copy()))
        return real(folder, name, labels, *args)

    monkeypatch.setattr(annotate_saves, "save_annotations", held)
    layers = widget.session.layers
    states = []
    for where in (np.s_[5:15, 5:15], np.s_[40:50, 40:50], np.s_[80:90, 5:15]):
        layers.preview.data[where] = 1
        assert widget.commit()
        states.append(widget.session.annotations.copy())
    release.set()  # the first save held while the others came: they wait for it
    qtbot.waitUntil(lambda: len(written) == 2 and not widget.runner.is_running(), timeout=30_000)
    (first, first_saved), (second, second_saved) = written
    np.testing.assert_array_equal(first_saved, states[0])  # untouched by the later commits
    np.testing.assert_array_equal(second_saved, states[2])
    assert second is first  # no new gigabyte per save
    saved = tifffile.imread(tmp_path / "nuclei.labels.tif")
    np.testing.assert_array_equal(saved, states[2])


def test_an_image_renamed_while_the_panel_was_closed_takes_its_layers_and_files_along(
    make_napari_viewer, drain_jobs, tiny_sam, tmp_path, notifications, monkeypatch
):
    """Renamed while the panel was closed, an image annotated before was, on reopening,
    annotated with layers still named after its old name, and saved under its new name
    while the old file stayed: two files of one image in the folder, the stale one pairing
    with the image file of the old name in training. Its layers and saved annotations now
    follow the new name, as they do with the panel open."""
    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(3).integers(0, 255, (64, 64), np.uint8), name="cell")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.session.layers.preview.data[10:20, 10:20] = 1
    assert widget.commit() == [1]
    drain_jobs(widget)
    viewer.window.remove_dock_widget(widget)  # the panel's close button
    viewer.layers["cell"].name = "cell_a"
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    assert widget.session.image_layer.name == "cell_a"
    names = {layer.name for layer in viewer.layers}
    assert {"cell_a annotations", "cell_a points"} <= names and "cell points" not in names
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cell_a.labels.tif",
        "cell_a.prompts.json",
    ]
    assert any("cell_a.labels.tif" in n for n in notifications)
    widget.session.layers.preview.data[30:40, 30:40] = 1
    assert widget.commit() == [2]  # the objects so far kept, the next id after them
    drain_jobs(widget)
    viewer.layers.clear()
    drain_jobs(widget)


@pytest.mark.parametrize("renamed", ["to another image's", "one of them"])
def test_layers_a_person_renamed_are_not_taken_for_an_image_renamed(
    make_napari_viewer, drain_jobs, tiny_sam, tmp_path, monkeypatch, renamed
):
    """Renamed by hand after another image ('other points'), the panel's layers were taken,
    on reopening, for an image renamed from 'other': the person's own 'other annotations'
    was renamed 'cells annotations', unsaid. One helper layer renamed ('my points') was
    named back."""
    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    pixels = np.random.default_rng(3).integers(0, 255, (64, 64), np.uint8)
    viewer.add_image(pixels, name="other")
    viewer.add_labels(np.zeros((64, 64), np.uint32), name="other annotations")  # the person's
    viewer.add_image(pixels[::-1].copy(), name="cells")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.image_combo.setCurrentText("cells")
    drain_jobs(widget)
    if renamed == "one of them":
        viewer.layers["cells points"].name = "my points"
    else:
        viewer.layers["cells annotations"].name = "other annotations (cells)"
        viewer.layers["cells points"].name = "other points"
    viewer.window.remove_dock_widget(widget)
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.image_combo.setCurrentText("cells")
    drain_jobs(widget)
    names = {layer.name for layer in viewer.layers}
    assert "other annotations" in names  # the person's, as named
    assert ("my points" if renamed == "one of them" else "other points") in names
    viewer.layers.clear()
    drain_jobs(widget)


class _PlaneWrites(np.ndarray):
    """A labels stack that notes which of its planes are written (a whole write: all)."""

    written: list

    def __setitem__(self, key, value) -> None:
        base = self if self.base is None or not isinstance(self.base, _PlaneWrites) else self.base
        offset = self.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        plane = offset // base[0].nbytes if self.ndim == base.ndim - 1 else "all"
        base.written.append(plane)
        super().__setitem__(key, value)


def test_a_commit_writes_zeros_only_over_the_preview_planes_that_show_something(stack_widget):
    """A commit cleared the preview by writing zeros over the whole stack: memory for
    planes never used (napari's new labels are zeros the system provides when first
    written), over a second and a gigabyte at the first commit of a 60 x 2048 x 2048 stack,
    60 ms at each after. It now writes over the planes that show something only."""
    viewer, widget = stack_widget
    layers = widget.session.layers
    tracked = np.zeros(layers.preview.data.shape, np.uint32).view(_PlaneWrites)
    tracked.written = []
    layers.preview.data = tracked
    assert layers.preview.data is tracked
    layers.preview_plane(1)[10:20, 10:20] = 1
    tracked.written.clear()
    assert widget.commit()
    assert tracked.written == [1] and not tracked.any()
    assert widget.session.annotations[1, 15, 15] > 0


def test_the_brush_paints_a_new_object_after_commits_and_loads(
    make_napari_viewer, drain_jobs, tiny_sam, tmp_path
):
    """napari's brush label stayed at 1 through commits, so an object painted next became
    part of object 1, without a word; it now takes the id after the highest written (from
    a commit or a loaded file), unless one beyond those was chosen."""
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    widget = _dock(viewer, drain_jobs, tiny_sam)
    session, layer = widget.session, widget.session.layers.annotations
    objects = np.zeros((64, 64), np.uint32)
    objects[5:10, 5:10], objects[20:30, 20:30] = 1, 2
    assert session.add_labels({None: objects}, False, "automatic", "tiny") == [1, 2]
    assert layer.selected_label == 3
    paths = session.save(tmp_path)
    layer.selected_label = 10  # chosen by the person, beyond every object: kept
    objects[:] = 0
    objects[40:50, 40:50] = 1
    assert session.add_labels({None: objects}, False, "automatic", "tiny") == [3]
    assert layer.selected_label == 10
    layer.selected_label = 1
    assert session.load(paths[0]) == 2
    assert layer.selected_label == 3
    viewer.layers.clear()
    drain_jobs(widget)
