"""An image moved (scaled, shifted) while another image is annotated: its layers left in the
viewer, where its annotations are still corrected with the brush, follow it."""

from __future__ import annotations

import numpy as np
import tifffile

WAIT_MS = 30_000


def test_the_layers_of_an_image_not_chosen_follow_it_when_it_is_moved(
    cells_with_one_saved_object, qtbot, drain_jobs, tmp_path
):
    """cells0's annotations layer stayed where cells0 had been: a stroke over cells0's
    pixel (10, 10), where it is shown now, was painted at pixel (70, 70), outside the
    64 x 64 image."""
    viewer, widget = cells_with_one_saved_object(tmp_path)
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    image, annotations = viewer.layers["cells0"], viewer.layers["cells0 annotations"]
    image.scale, image.translate = (2, 2), (50, 50)
    np.testing.assert_allclose(annotations.data_to_world([10, 10]), [70, 70])
    np.testing.assert_allclose(viewer.layers["cells0 points"].data_to_world([3, 4]), [56, 58])

    under_the_brush = np.round(annotations.world_to_data(image.data_to_world([10, 10])))
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        annotations.paint(tuple(under_the_brush.astype(int)), 9)  # as napari's brush does
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    np.testing.assert_allclose(np.argwhere(saved == 9).mean(axis=0), [10, 10], atol=1)  # a disc

    widget.ui.image_combo.setCurrentText("cells0")  # chosen again: it follows as before
    drain_jobs(widget)
    image.translate = (0, 0)
    np.testing.assert_allclose(annotations.data_to_world([10, 10]), [20, 20])
    widget.ui.image_combo.setCurrentText("cells1")
    drain_jobs(widget)
    viewer.layers.remove(annotations)  # no longer watched: it follows no more, and no error
    image.scale = (1, 1)
    assert widget.session.image_layer.name == "cells1"
