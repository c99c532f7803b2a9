"""The annotation widget when the image's layout or placement changes under it: axes read
another way, scale / translate / rotation set after it attached, the view transposed."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_samtune._qt.annotate import AnnotateWidget

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
