"""Bugs a microscopist found with the layers of real experiments (long export names, a
trailing channel of one, a viewer closed mid-run), each with the test that found it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests._qt.test_annotate_layout import _dock
from tests._qt.test_annotate_restore import _reopen

WAIT_MS = 30_000
LONG = "Experiment_2024-05-01_HeLa_H2B-GFP_" + "Position" * 26 + "_t001"  # 248 characters


def test_an_image_with_a_very_long_name_is_annotated_and_its_commits_saved(
    make_napari_viewer, qtbot, drain_jobs, tiny_sam, nuclei_image, tmp_path
):
    """A file name of 252 characters (Linux allows 255) is a layer name whose autosave name
    is too long: opening the panel raised "File name too long", and every commit raised it
    without being saved. The autosave name is now cut (see label_files.safe_stem)."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name=LONG)
    widget = _dock(viewer, drain_jobs, tiny_sam)
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.session.layers.points.add([128, 128])
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS) as saved:
        assert widget.commit()
    drain_jobs(widget)
    path = Path(saved.args[0])
    assert path.parent == tmp_path and len(path.name) < 255
    np.testing.assert_array_equal(tifffile.imread(path), widget.session.annotations)
    assert widget.session.annotations.max() == 1
    # the image opened again restores them
    other = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, name=LONG)
    np.testing.assert_array_equal(other.session.annotations, tifffile.imread(path))


def test_an_image_with_a_trailing_axis_of_one_is_refused_with_the_fix(
    make_napari_viewer, drain_jobs, tiny_sam, nuclei_image, notifications
):
    """A 2D image saved as (H, W, 1) was refused as having "no 2D planes to segment",
    which a person with a 2D image cannot act on: the axis of length 1 is named, and how to
    open the image without it."""
    from napari_samtune._qt.image_planes import describe_image

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0][..., None], name="hw1")
    widget = _dock(viewer, drain_jobs, tiny_sam)
    assert widget.session is None
    refusal = [n for n in notifications if "no 2D planes to segment" in n]
    assert refusal and "axis 2 has length 1" in refusal[0], notifications
    assert "of shape (256, 256)" in refusal[0] and "squeeze()" in refusal[0]
    with pytest.raises(ValueError, match=r"planes to segment: its planes need at least 2"):
        describe_image((1, 1))  # no axis of one to leave out: what a plane needs
