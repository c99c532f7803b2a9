"""More bugs a person annotating with the widget ran into, each with the test that found it."""

from __future__ import annotations

import numpy as np
import tifffile

WAIT_MS = 30_000


def test_a_folder_chosen_after_failed_autosaves_gets_the_annotations(
    viewer_widget, tmp_path, drain_jobs, notifications
):
    """An autosave that failed (the folder cannot be written) said 'choose another folder',
    but choosing one saved nothing there: the commits stayed on no disk until the next one,
    and closing napari meanwhile lost them."""
    _, widget = viewer_widget
    (tmp_path / "a file").write_text("not a folder")
    widget.ui.folder_edit.setText(str(tmp_path / "a file" / "annotations"))
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert any("autosave failed" in n and n.severity == "error" for n in notifications)
    folder = tmp_path / "writable"
    widget.ui.folder_edit.setText(str(folder))
    widget.ui.folder_edit.setModified(True)  # typed, then Return
    widget.ui.folder_edit.editingFinished.emit()
    drain_jobs(widget)
    saved = folder / "nuclei.labels.tif"
    assert saved.is_file()
    np.testing.assert_array_equal(tifffile.imread(saved), widget.session.annotations)
    assert any(f"saved annotations to {saved}" in n for n in notifications)
