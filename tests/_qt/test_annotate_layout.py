"""The annotation widget when the image's layout or placement changes under it: axes read
another way, scale / translate / rotation set after it attached, the view transposed."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.layer_placement import plane_view_affine, spatial_affine

WAIT_MS = 30_000


def _dock(viewer, drain_jobs, tiny_sam) -> AnnotateWidget:
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    return widget


def _commit_square(widget, qtbot, drain_jobs, where) -> None:
    widget.session.layers.preview.data[where] = 1
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        widget.commit()
    drain_jobs(widget)


def test_reading_the_axes_another_way_never_saves_over_the_annotations(
    make_napari_viewer, qtbot, drain_jobs, tiny_sam, tmp_path, notifications
):
    """A (3, H, W) image annotated as a stack, then as channels: two files, none lost."""
    viewer = make_napari_viewer()
    pixels = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    viewer.add_image(pixels, name="mc")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_square(widget, qtbot, drain_jobs, (widget.current_plane, slice(10, 20), slice(10, 20)))
    stack_file = tmp_path / "mc.labels.tif"
    assert tifffile.imread(stack_file).shape == (3, 64, 64)

    widget.ui.channels_first_check.setChecked(True)
    drain_jobs(widget)
    assert widget.session.annotations.shape == (64, 64)
    _commit_square(widget, qtbot, drain_jobs, (slice(30, 40), slice(30, 40)))
    assert tifffile.imread(stack_file).shape == (3, 64, 64)  # kept
    (other,) = set(tmp_path.glob("*.labels.tif")) - {stack_file}
    assert other.name.startswith("mc-") and tifffile.imread(other).shape == (64, 64)
    warnings = [str(n.message) for n in notifications if n.severity == "warning"]
    assert any("this image's annotations with its axes read another way" in m for m in warnings)
    assert any(f"saved as {other.name!r}" in m for m in warnings)  # the file, as on disk
    errors = [str(n.message) for n in notifications if n.severity == "error"]
    assert not any("could not restore" in m for m in errors)

    widget.ui.channels_first_check.setChecked(False)  # back: the stack's come back
    drain_jobs(widget)
    assert widget.session.annotations.shape == (3, 64, 64)
    np.testing.assert_array_equal(widget.session.annotations, tifffile.imread(stack_file))
    assert widget.session.annotations.any()
    assert not any("pick the image again" in str(n.message) for n in notifications)
    viewer.layers.clear()
    drain_jobs(widget)


def test_the_layers_of_the_old_layout_go_in_one_redraw(
    make_napari_viewer, qtbot, drain_jobs, tiny_sam, tmp_path, monkeypatch
):
    """napari redraws its canvas, with a full garbage collection, after each layer removed
    on its own: four of them when the layout changed, a pause each time."""
    import gc

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 64, 64), np.uint8), name="mc")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_square(widget, qtbot, drain_jobs, (widget.current_plane, slice(10, 20), slice(10, 20)))
    old_layers = list(widget.session.layers.layers)
    collections, collect = [], gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or collect(*a))
    widget.ui.channels_first_check.setChecked(True)
    assert not any(layer in viewer.layers for layer in old_layers)
    assert len(collections) == 1
    drain_jobs(widget)
    viewer.layers.clear()
    drain_jobs(widget)


def _click(layer, world, dims_displayed) -> None:
    """What napari does on a canvas click at ``world`` (world coordinates)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    for kind, callbacks in (
        ("mouse_press", mouse_press_callbacks),
        ("mouse_release", mouse_release_callbacks),
    ):
        event = read_only_mouse_event(type=kind, position=world, dims_displayed=dims_displayed)
        callbacks(layer, event)


def _assert_on_the_image(widget, image, pixel) -> None:
    """Every helper layer puts ``pixel`` where the image shows it."""
    world = np.asarray(image.data_to_world(pixel))
    for layer in widget.session.layers.layers:
        np.testing.assert_allclose(layer.world_to_data(world), pixel, atol=1e-6, err_msg=layer.name)


def test_layers_follow_the_image_when_it_is_scaled_moved_or_rotated_later(
    make_napari_viewer, drain_jobs, tiny_sam
):
    """E.g. the pixel size set once known; a click lands on the pixel under it."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((64, 64), np.uint8), name="im")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    image.scale, image.translate = (0.5, 0.5), (10, 20)
    _assert_on_the_image(widget, image, (40, 20))
    image.rotate = 30
    _assert_on_the_image(widget, image, (40, 20))
    points = widget.session.layers.points
    _click(points, tuple(image.data_to_world((40, 20))), [0, 1])
    np.testing.assert_allclose(points.data[-1], (40, 20), atol=1e-6)


def test_a_stack_scaled_rotated_and_reopened_keeps_its_layers_on_it(
    make_napari_viewer, drain_jobs, tiny_sam
):
    viewer = make_napari_viewer()
    data = np.zeros((4, 64, 64), np.uint8)
    viewer.add_image(data, name="st")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    viewer.layers.remove("st")  # its layers stay, placed as it was
    image = viewer.add_image(data, name="st", scale=(4, 0.5, 0.5), rotate=20)
    drain_jobs(widget)
    assert widget.session.image_layer is image
    _assert_on_the_image(widget, image, (2, 40, 20))
    viewer.layers.clear()
    drain_jobs(widget)


def test_new_pixels_of_the_image_are_what_sam_sees(
    make_napari_viewer, qtbot, drain_jobs, tiny_sam, tmp_path, notifications
):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    image = viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="im")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_square(widget, qtbot, drain_jobs, (slice(10, 20), slice(10, 20)))
    embedded = widget.segmenter._image_hash
    image.data = rng.integers(0, 255, (64, 64), dtype=np.uint8)  # same shape: e.g. denoised
    drain_jobs(widget)
    assert widget.segmenter._image_hash != embedded
    assert widget.session.annotations[15, 15] == 1  # kept
    assert any("has new pixels" in str(n.message) for n in notifications)

    image.data = rng.integers(0, 255, (32, 48), dtype=np.uint8)  # another shape
    drain_jobs(widget)
    assert widget.session.annotations.shape == (32, 48) and not widget.session.annotations.any()
    assert tifffile.imread(tmp_path / "im.labels.tif")[15, 15] == 1  # the old ones, saved
    viewer.layers.clear()
    drain_jobs(widget)


def test_annotations_of_replaced_pixels_are_saved_as_those_pixels(
    make_napari_viewer, qtbot, drain_jobs, tiny_sam, tmp_path, notifications
):
    """After ``layer.data = new pixels`` (same shape), saves kept the old pixels' fingerprint:
    opened again, the new pixels restored nothing (another image's, saved beside), and the
    old ones restored the annotations made on the new."""
    import json

    from napari_samtune._qt.layer_names import OWN_IMAGE_KEY
    from napari_samtune.core.label_files import image_fingerprint

    viewer = make_napari_viewer()
    rng = np.random.default_rng(3)
    image = viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="im")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.folder_edit.setText(str(tmp_path))
    image.data = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    drain_jobs(widget)
    _commit_square(widget, qtbot, drain_jobs, (slice(10, 20), slice(10, 20)))
    new = image_fingerprint(image.data)
    assert json.loads((tmp_path / "im.prompts.json").read_text())["image_fingerprint"] == new
    marks = [layer.metadata[OWN_IMAGE_KEY]["fingerprint"] for layer in widget.session.layers.layers]
    assert marks == [new] * 4

    said = len(notifications)
    image.data = np.zeros((2, 2, 64, 64), np.uint8)  # pixels it cannot annotate: refused
    drain_jobs(widget)
    assert widget.session is None
    assert not any("has new pixels" in str(n.message) for n in notifications[said:])
    viewer.layers.clear()
    drain_jobs(widget)


def test_a_transposed_stack_view_says_why_clicks_do_nothing(
    make_napari_viewer, drain_jobs, tiny_sam, notifications
):
    viewer = make_napari_viewer()
    pixels = np.random.default_rng(2).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    viewer.add_image(pixels, name="st")
    viewer.dims.set_current_step(0, 2)
    widget = _dock(viewer, drain_jobs, tiny_sam)
    viewer.dims.order = (1, 0, 2)  # rows x planes shown: no plane to segment on
    _click(widget.session.layers.points, (2.0, 32.0, 20.0), [0, 2])
    drain_jobs(widget)
    assert not widget.session.layers.preview.data.any()
    assert any("plane by plane" in str(n.message) for n in notifications)
    viewer.dims.order = (0, 1, 2)
    drain_jobs(widget)
    assert widget.session.layers.preview.data.any()  # the click counts once planes show
    viewer.layers.clear()
    drain_jobs(widget)


def test_prompt_layers_stay_on_top_of_a_sample_opened_later(
    make_napari_viewer, drain_jobs, tiny_sam
):
    viewer = make_napari_viewer()
    widget = _dock(viewer, drain_jobs, tiny_sam)
    viewer.open_sample("napari-samtune", "nuclei")  # an image, then its labels
    drain_jobs(widget)
    layers = widget.session.layers
    names = [layer.name for layer in viewer.layers]
    assert names[-3:] == [layers.preview.name, layers.boxes.name, layers.points.name]
    viewer.layers.clear()
    drain_jobs(widget)


def test_an_image_picked_again_sets_nothing_on_its_layers_where_they_are(
    make_napari_viewer, drain_jobs, tiny_sam
):
    """Each placement or colormap set redraws a layer (a 4096 x 4096 image's labels: 30-50 ms
    each): picked again, an image whose layers sit where it is sets none of them, and one
    moved meanwhile moves them."""
    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((64, 64), np.uint8), name="a", scale=(2, 3))
    viewer.add_image(np.zeros((64, 64), np.uint8), name="b")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.image_combo.setCurrentText("a")
    drain_jobs(widget)
    layers = widget.session.layers.layers
    widget.ui.image_combo.setCurrentText("b")
    drain_jobs(widget)
    changes = []
    for layer in layers:
        for name in ("scale", "translate", "rotate", "shear", "affine"):
            getattr(layer.events, name).connect(
                lambda e, n=name, lay=layer: changes.append((lay, n))
            )
    layers[2].events.colormap.connect(lambda e: changes.append((layers[2], "colormap")))
    widget.ui.image_combo.setCurrentText("a")
    drain_jobs(widget)
    assert widget.session.layers.layers == layers
    assert changes == []
    widget.ui.image_combo.setCurrentText("b")
    first.translate = (5, 7)
    widget.ui.image_combo.setCurrentText("a")
    drain_jobs(widget)
    assert {name for _, name in changes} == {"translate"}  # only scaled and moved: as it is
    _assert_on_the_image(widget, first, (40, 20))


def test_the_layers_take_the_units_of_the_image(make_napari_viewer, drain_jobs, tiny_sam):
    """An image in micrometres: layers in pixels beside it made napari warn that the layers'
    units are inconsistent and draw none of them."""
    viewer = make_napari_viewer()
    image = viewer.add_image(
        np.zeros((64, 64), np.uint8), name="im", scale=(0.5, 0.5), units=("um", "um")
    )
    widget = _dock(viewer, drain_jobs, tiny_sam)
    assert {tuple(layer.units) for layer in widget.session.layers.layers} == {tuple(image.units)}
    image.units = ("nm", "nm")
    assert {tuple(layer.units) for layer in widget.session.layers.layers} == {tuple(image.units)}
    _assert_on_the_image(widget, image, (40, 20))


def _show_plane(viewer, image, plane: int) -> None:
    """Move the slider to where napari's 2D view shows ``plane`` of ``image``."""
    for step in range(int(viewer.dims.nsteps[0])):
        viewer.dims.set_current_step(0, step)
        if round(float(image._data_slice.point[0])) == plane:  # what napari slices
            return
    raise AssertionError(f"no slider step shows plane {plane}")


def test_a_click_or_stroke_on_a_sheared_stack_lands_on_the_plane_and_pixel_shown(
    make_napari_viewer, drain_jobs, tiny_sam, notifications
):
    """A light-sheet stack deskewed by a shear across planes and rows: napari shows its
    planes unsheared at the slider's plane, but clicks and brush strokes land through a
    layer's whole transform. The panel named the plane through it too (plane 0, or off the
    stack: clicks did nothing), napari put clicks off the plane shown, and strokes on the
    annotations on another plane or none."""
    viewer = make_napari_viewer()
    pixels = np.random.default_rng(4).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    image = viewer.add_image(
        pixels, name="sk", shear=(0.5, 0.0, 0.0), translate=(2.0, 5.0, 7.0), scale=(2, 1, 1)
    )
    widget = _dock(viewer, drain_jobs, tiny_sam)
    assert any("sheared or rotated across its planes" in str(n.message) for n in notifications)
    _show_plane(viewer, image, 3)
    assert widget.current_plane == 3
    world = np.asarray(image.data_to_world((3, 40, 20)))  # its rows and columns as shown
    world[0] = viewer.dims.point[0]
    points = widget.session.layers.points
    _click(points, tuple(world), [1, 2])
    assert round(points.data[-1][0]) == 3  # (the slider's step may sit between planes)
    np.testing.assert_allclose(points.data[-1][1:], (40, 20), atol=1e-6)
    drain_jobs(widget)
    preview = widget.session.layers.preview.data
    assert preview[3].any() and not np.delete(preview, 3, axis=0).any()
    assert not any("past the planes" in str(n.message) for n in notifications)

    annotations = widget.session.layers.annotations
    annotations.mode, annotations.selected_label, annotations.brush_size = "paint", 7, 1
    _click(annotations, tuple(world), [1, 2])
    assert annotations.data[3, 40, 20] == 7 and (annotations.data == 7).sum() == 1

    image.shear = (0.0, 0.0, 0.0)  # deskewed no more: the layers follow
    _assert_on_the_image(widget, image, (3, 40, 20))
    viewer.layers.clear()
    drain_jobs(widget)


def test_a_stack_seen_edge_on_keeps_its_placement(make_napari_viewer, drain_jobs, tiny_sam):
    """Rotated 90 degrees out of its planes (napari's cos is 6e-17, not 0), the layers were
    placed with planes 4.5e15 apart: napari's slider overflowed while they were added."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((5, 48, 48), np.uint8), name="edge", rotate=(0, 90, 0))
    widget = _dock(viewer, drain_jobs, tiny_sam)
    assert not widget.session.layers.sheared
    _assert_on_the_image(widget, image, (2, 30, 10))
    viewer.layers.clear()
    drain_jobs(widget)


def test_an_image_moved_while_another_was_annotated_keeps_its_layers_on_it(
    make_napari_viewer, drain_jobs, tiny_sam, notifications
):
    """Its edits unsaved (autosave off), the image's session is kept and resumed when it is
    picked again: its layers stayed where the image was, so clicks and strokes landed on
    another plane. The sheared-stack note is said once per image."""
    viewer = make_napari_viewer()
    pixels = np.random.default_rng(5).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    image = viewer.add_image(pixels, name="sk", translate=(2.0, 5.0, 7.0))
    viewer.add_image(pixels[0], name="flat")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.image_combo.setCurrentText("sk")
    drain_jobs(widget)
    widget.ui.autosave_check.setChecked(False)
    widget.session.layers.preview.data[1, 10:20, 10:20] = 1
    widget.commit()
    drain_jobs(widget)
    session = widget.session
    widget.ui.image_combo.setCurrentText("flat")
    image.scale, image.shear = (2, 1, 1), (0.5, 0.0, 0.0)
    widget.ui.image_combo.setCurrentText("sk")
    drain_jobs(widget)
    assert widget.session is session  # resumed
    wanted = plane_view_affine(spatial_affine(image, 3))
    for layer in session.layers.layers:
        np.testing.assert_allclose(layer.affine.affine_matrix, wanted, err_msg=layer.name)
    _show_plane(viewer, image, 3)
    assert widget.current_plane == 3
    widget.ui.image_combo.setCurrentText("flat")
    widget.ui.image_combo.setCurrentText("sk")
    drain_jobs(widget)
    said = [n for n in notifications if "sheared or rotated across its planes" in str(n.message)]
    assert len(said) == 1
    widget.ui.autosave_check.setChecked(True)
    viewer.layers.clear()
    drain_jobs(widget)


def test_channels_on_the_first_axis_is_chosen_per_image(make_napari_viewer, drain_jobs, tiny_sam):
    """Ticked for a (C, H, W) image, it stayed on for the z-stack chosen next, read as
    channels without a word (a click on plane 3 segmented channel 1, the object written
    across the stack), and refused 2D and RGB images until unticked by hand."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), name="chw")
    viewer.add_image(rng.integers(0, 255, (5, 64, 64), dtype=np.uint8), name="zstack")
    viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="flat")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    check = widget.ui.channels_first_check
    widget.ui.image_combo.setCurrentText("chw")
    drain_jobs(widget)
    check.setChecked(True)
    drain_jobs(widget)
    assert widget.session.annotations.shape == (64, 64)  # channels
    widget.ui.image_combo.setCurrentText("zstack")
    drain_jobs(widget)
    assert not check.isChecked() and widget.session.annotations.shape == (5, 64, 64)
    widget.ui.image_combo.setCurrentText("flat")
    drain_jobs(widget)
    assert widget.session is not None and widget.session.annotations.shape == (64, 64)
    widget.ui.image_combo.setCurrentText("chw")  # its own choice comes back
    drain_jobs(widget)
    assert check.isChecked() and widget.session.annotations.shape == (64, 64)
    assert widget.ui.channel_combo.isEnabled()


def test_a_stack_moved_by_half_a_plane_is_annotated_on_the_plane_it_shows(
    make_napari_viewer, drain_jobs, tiny_sam
):
    """A second channel offset by half a plane (0.35 at 0.7 per plane): each slider stop
    falls half-way between its planes. The panel's layers, placed by a matrix measured
    from the image, showed the plane after the image's, and clicks were segmented there."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((6, 64, 64), np.uint8), name="ch1", scale=(0.7, 1, 1))
    data = np.stack([np.full((64, 64), 10 * plane, np.uint8) for plane in range(6)])
    data[:, 20:30, 20:30] = 255  # (no plane blank)
    image = viewer.add_image(data, name="ch2", scale=(0.7, 1, 1), translate=(0.35, 0, 0))
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.image_combo.setCurrentText("ch2")
    drain_jobs(widget)
    annotations = widget.session.layers.annotations
    annotations.data[...] = np.arange(1, 7, dtype=np.uint32)[:, None, None]  # plane z: z + 1
    for step in range(int(viewer.dims.nsteps[0])):
        viewer.dims.set_current_step(0, step)
        plane = round(float(image._data_slice.point[0]))  # the plane napari shows
        if not 0 <= plane < 6:
            continue
        assert widget.current_plane == plane, step
        assert round(float(annotations._data_slice.point[0])) == plane, step


def test_a_multiscale_image_is_refused_with_how_to_open_one_level(
    make_napari_viewer, drain_jobs, tiny_sam
):
    """ "open one resolution level" did not say how; the Finetune panel trains on them."""
    import pytest

    viewer = make_napari_viewer()
    image = np.zeros((64, 64), np.uint8)
    layer = viewer.add_image([image, image[::2, ::2]], name="pyramid", multiscale=True)
    widget = _dock(viewer, drain_jobs, tiny_sam)
    # (napari's console knows `viewer`, not `layer`)
    with pytest.raises(ValueError, match=r"add_image\(viewer\.layers\['pyramid'\]\.data\[0\]\)"):
        widget.set_image_layer(layer)
