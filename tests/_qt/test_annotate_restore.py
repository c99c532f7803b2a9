"""Restoring saved annotations when the image is opened again, and loading label files."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_samtune._qt.annotate import AnnotateWidget


def _commit_at(widget, drain_jobs, *points) -> None:
    for point in points:
        widget.session.layers.points.add(point)
        assert widget.commit()
    drain_jobs(widget)


def test_an_autosave_that_cannot_be_restored_is_never_saved_over(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, notifications, drain_jobs
):
    """A damaged record made restoring fail, and the next commit's autosave replaced the
    labels saved before with the one new object."""
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_at(widget, drain_jobs, [128, 128], [40, 200])
    saved = tifffile.imread(tmp_path / "nuclei.labels.tif")
    assert set(np.unique(saved)) == {0, 1, 2}
    with open(tmp_path / "nuclei.prompts.json", "a", encoding="utf-8") as record:
        record.write("damaged")

    def reopen() -> AnnotateWidget:
        viewer = make_napari_viewer()
        viewer.add_image(nuclei_image[0], name="nuclei")
        reopened = AnnotateWidget(viewer)
        reopened.ui.folder_edit.setText(str(tmp_path))
        reopened._use_folder()
        reopened.set_model(widget.segmenter.model, "tiny")
        drain_jobs(reopened)
        return reopened

    later = reopen()
    assert any("could not restore" in n and n.severity == "error" for n in notifications)
    _commit_at(later, drain_jobs, [200, 60])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), saved)
    diverted = list(tmp_path.glob("nuclei-*.labels.tif"))
    assert len(diverted) == 1 and diverted[0].name in notifications[-1]
    np.testing.assert_array_equal(tifffile.imread(diverted[0]), later.session.annotations)
    again = reopen()  # what went beside the damaged file comes back, not overwritten
    np.testing.assert_array_equal(again.session.annotations, later.session.annotations)


def test_labels_without_background_count_every_object(viewer_widget, tmp_path, notifications):
    """A label image with no background pixel (a dense segmentation) was said to hold one
    object fewer than it does."""
    _, widget = viewer_widget
    dense = np.ones((256, 256), dtype=np.uint16)
    dense[:, 128:] = 2
    tifffile.imwrite(tmp_path / "dense.tif", dense)
    assert widget.load_annotations(tmp_path / "dense.tif") == 2
    assert "loaded 2 objects" in notifications[-1]
    np.testing.assert_array_equal(widget.session.annotations, dense)


def test_an_unreadable_autosave_is_called_unreadable_not_another_image_s(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, notifications, drain_jobs
):
    """Garbage where the labels TIFF was: the note said the file held this image's
    annotations "with its axes read another way"."""
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_at(widget, drain_jobs, [128, 128])
    (tmp_path / "nuclei.labels.tif").write_bytes(b"II*\x00garbage")
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    reopened = AnnotateWidget(viewer)
    reopened.ui.folder_edit.setText(str(tmp_path))
    reopened._use_folder()
    drain_jobs(reopened)
    notes = [str(n) for n in notifications if "nuclei.labels.tif" in str(n)]
    assert notes and f"{tmp_path / 'nuclei.labels.tif'} cannot be read (" in notes[-1]
    assert "another way" not in notes[-1] and "another image" not in notes[-1]
    assert (tmp_path / "nuclei.labels.tif").read_bytes() == b"II*\x00garbage"
