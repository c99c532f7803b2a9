"""Restoring saved annotations when the image is opened again, and loading label files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune.core.annotation_files import save_annotations, save_name


def _commit_at(widget, drain_jobs, *points) -> None:
    for point in points:
        widget.session.layers.points.add(point)
        assert widget.commit()
    drain_jobs(widget)


def _reopen(
    make_napari_viewer, image, folder, drain_jobs, model=None, name: str = "nuclei"
) -> AnnotateWidget:
    """The image opened again in a new viewer as ``name``, its widget's folder set to
    ``folder``."""
    viewer = make_napari_viewer()
    viewer.add_image(image, name=name)
    reopened = AnnotateWidget(viewer)
    reopened.ui.folder_edit.setText(str(folder))
    reopened._use_folder()
    if model is not None:
        reopened.set_model(model, "tiny")
    drain_jobs(reopened)
    return reopened


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
        model = widget.segmenter.model
        return _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, model)

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


def test_saves_go_past_every_autosave_that_cannot_be_restored(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, notifications, drain_jobs
):
    """The file saves went to after the autosave could not be read back could not be read
    back either (in a later session): the next autosave replaced it."""
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_at(widget, drain_jobs, [128, 128])

    def damage(stem: str) -> bytes:
        with open(tmp_path / f"{stem}.prompts.json", "a", encoding="utf-8") as record:
            record.write("damaged")
        return (tmp_path / f"{stem}.labels.tif").read_bytes()

    def reopen_and_commit(point) -> AnnotateWidget:
        model = widget.segmenter.model
        reopened = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, model)
        _commit_at(reopened, drain_jobs, point)
        return reopened

    first = damage("nuclei")
    reopen_and_commit([200, 60])
    (diverted,) = tmp_path.glob("nuclei-*.labels.tif")
    stem = diverted.name.removesuffix(".labels.tif")
    second = damage(stem)
    later = reopen_and_commit([40, 200])
    assert (tmp_path / "nuclei.labels.tif").read_bytes() == first
    assert diverted.read_bytes() == second  # not saved over
    again = tmp_path / f"{stem}-2.labels.tif"
    np.testing.assert_array_equal(tifffile.imread(again), later.session.annotations)
    errors = [str(n) for n in notifications if n.severity == "error"]
    assert any(f"could not restore {diverted}" in e and again.name in e for e in errors)
    restored = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs)
    np.testing.assert_array_equal(restored.session.annotations, later.session.annotations)


def test_a_renamed_image_takes_its_layers_and_saved_annotations_along(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, notifications, drain_jobs
):
    """Renamed after a save, the image was saved under its new name and the file under the
    old one stayed, out of date: opened again under that name, the older annotations came
    back. Picked again after a rename, its annotations layer was not found either. Renamed
    to a name another image's annotations have (here a file that cannot be read), its file
    stayed under the old name, where the image under its new name did not look."""
    viewer, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_at(widget, drain_jobs, [128, 128])
    (tmp_path / "other.labels.tif").write_bytes(b"another image's annotations")
    viewer.layers["nuclei"].name = "dapi"
    names = {layer.name for layer in viewer.layers}
    assert {"dapi annotations", "dapi points", "dapi boxes", "dapi current object"} <= names
    moved = f"the annotations of 'dapi' are now saved as {tmp_path / 'dapi.labels.tif'}"
    assert moved in notifications
    _commit_at(widget, drain_jobs, [40, 200])
    saved = tifffile.imread(tmp_path / "dapi.labels.tif")
    assert set(np.unique(saved)) == {0, 1, 2}
    files = ["dapi.labels.tif", "dapi.prompts.json", "other.labels.tif"]
    assert sorted(path.name for path in tmp_path.iterdir()) == files

    viewer.add_image(nuclei_image[0][::-1].copy(), name="second")
    widget.ui.image_combo.setCurrentText("second")
    drain_jobs(widget)
    widget.ui.image_combo.setCurrentText("dapi")  # picked again: its own layers come back
    drain_jobs(widget)
    assert widget.session.layers.annotations is viewer.layers["dapi annotations"]
    np.testing.assert_array_equal(widget.session.annotations, saved)
    assert len(widget.session.records) == 2  # and the records saved with them

    viewer.add_points(name="other points")  # the person's own layer
    viewer.layers["dapi"].name = "other"  # a file has that name: they go beside it
    beside = tmp_path / f"other-{widget.session.fingerprint}.labels.tif"
    assert f"the annotations of 'other' are now saved as {beside}" in notifications[-1]
    assert notifications[-2] == (
        "layer(s) 'other points' exist already, so the layers of image 'other' keep the names "
        "'dapi points'"
    )
    assert widget.session.layers.points.name == "dapi points"
    assert widget.session.layers.annotations.name == "other annotations"
    _commit_at(widget, drain_jobs, [200, 60])
    assert (tmp_path / "other.labels.tif").read_bytes() == b"another image's annotations"
    assert not (tmp_path / "dapi.labels.tif").exists()
    saved = tifffile.imread(beside)
    assert set(np.unique(saved)) == {0, 1, 2, 3}
    widget.ui.image_combo.setCurrentText("second")
    drain_jobs(widget)
    viewer.layers.remove("other points")  # (not one of the image's: picked, it would be used)
    widget.ui.image_combo.setCurrentText("other")  # picked again under its new name
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, saved)
    reopened = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, name="other")
    np.testing.assert_array_equal(reopened.session.annotations, saved)
    assert len(reopened.session.records) == 3
    assert (tmp_path / "other.labels.tif").read_bytes() == b"another image's annotations"


@pytest.mark.parametrize("namesake", [True, False], ids=["namesake", "own-name"])
@pytest.mark.parametrize("chosen", [True, False], ids=["chosen", "another-chosen"])
def test_an_image_renamed_to_a_taken_name_is_found_again_under_it(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, drain_jobs, chosen, namesake
):
    """Saved as ``<old>-<fingerprint>`` (another image's annotations had its name) or as
    ``<old>``, then renamed to a name another image's annotations have: the file stayed
    under the old name, and the image, opened again under its new name, started empty."""
    viewer, widget = viewer_widget
    others = np.zeros(nuclei_image[0].shape, np.uint32)
    others[:4, :4] = 5
    for name in ("nuclei", "dapi") if namesake else ("dapi",):
        save_annotations(tmp_path, name, others, {"image_fingerprint": "another image"})
    taken = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    widget.ui.folder_edit.setText(str(tmp_path))
    widget._use_folder()
    fingerprint = widget.session.fingerprint
    _commit_at(widget, drain_jobs, [128, 128])
    saved_as = f"nuclei-{fingerprint}" if namesake else "nuclei"
    assert (tmp_path / f"{saved_as}.labels.tif").is_file()
    saved = widget.session.annotations.copy()
    if not chosen:
        viewer.add_image(nuclei_image[0][::-1].copy(), name="second")
        widget.ui.image_combo.setCurrentText("second")
        drain_jobs(widget)
    viewer.layers["nuclei"].name = "dapi"
    drain_jobs(widget)
    assert {name: (tmp_path / name).read_bytes() for name in taken} == taken
    files = sorted(taken) + [f"dapi-{fingerprint}.labels.tif", f"dapi-{fingerprint}.prompts.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(files)
    reopened = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, name="dapi")
    np.testing.assert_array_equal(reopened.session.annotations, saved)
    assert len(reopened.session.records) == 1


@pytest.mark.parametrize("old", ["old", "old-abc"], ids=["own-name", "namesake"])
def test_saved_annotations_stay_where_both_names_under_the_new_one_are_taken(tmp_path, old):
    """Where ``<new>`` (another image's) and ``<new>-<fingerprint>`` both hold annotations,
    an image's stay under their old name, the person told so; no file is written over."""
    from napari_samtune._qt.saved_renames import follow_saved_rename

    for name, value in ((old, 1), ("new", 2), ("new-abc", 3)):
        record = {"image_fingerprint": "another" if name == "new" else "abc"}
        save_annotations(tmp_path, name, np.full((4, 4), value, np.uint32), record)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    moved, note = follow_saved_rename(tmp_path, old, "new", fingerprint="abc")
    assert moved == old and "'Load annotations…' opens that file" in note
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.parametrize("new_record", [None, {"image_fingerprint": "another"}, "unreadable"])
def test_annotations_renamed_to_another_image_s_name_go_beside_them(tmp_path, new_record):
    """Saved under the image's own name, then renamed to a name another image's annotations
    have (a record naming other pixels, labels of another shape without a record, or labels
    that cannot be read): the file stayed under the old name, where the renamed image did
    not look for it."""
    from napari_samtune._qt.saved_renames import follow_saved_rename

    shape = (4, 4) if new_record else (5, 5)  # without a record, told apart by the shape
    record = new_record if isinstance(new_record, dict) else {}
    save_annotations(tmp_path, "new", np.full(shape, 2, np.uint32), record)
    if new_record == "unreadable":
        (tmp_path / "new.labels.tif").write_bytes(b"not a TIFF")
        (tmp_path / "new.prompts.json").unlink()
    save_annotations(tmp_path, "old", np.ones((4, 4), np.uint32), {"image_fingerprint": "abc"})
    taken = {name: (tmp_path / name).read_bytes() for name in ("new.labels.tif",)}
    moved, note = follow_saved_rename(tmp_path, "old", "new", fingerprint="abc")
    assert moved == "new-abc" and "now saved as" in note
    assert not (tmp_path / "old.labels.tif").exists()
    assert {name: (tmp_path / name).read_bytes() for name in taken} == taken
    assert save_name(tmp_path, "new", "abc", (4, 4)) == "new-abc"  # where lookup finds them


def test_annotations_stay_where_the_new_name_has_this_image_s(tmp_path):
    """Where ``<new>`` holds this image's own annotations (the image's renamed back, say),
    lookup finds those, not ``<new>-<fingerprint>``: the file stays, the person told."""
    from napari_samtune._qt.saved_renames import follow_saved_rename

    for name in ("old", "new"):
        save_annotations(tmp_path, name, np.ones((4, 4), np.uint32), {"image_fingerprint": "abc"})
    moved, note = follow_saved_rename(tmp_path, "old", "new", fingerprint="abc")
    assert moved == "old" and "'Load annotations…' opens that file" in note
    assert sorted(path.stem for path in tmp_path.iterdir()) == [
        "new.labels",
        "new.prompts",
        "old.labels",
        "old.prompts",
    ]


def test_an_image_renamed_to_a_taken_name_before_its_first_save_is_found_again(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, drain_jobs
):
    """Picked, then renamed (before anything was saved) to a name another image's
    annotations have: its saves must go where the image, under its new name, looks."""
    viewer, widget = viewer_widget
    others = np.zeros(nuclei_image[0].shape, np.uint32)
    others[:4, :4] = 5
    save_annotations(tmp_path, "dapi", others, {"image_fingerprint": "another image"})
    taken = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    widget.ui.folder_edit.setText(str(tmp_path))
    widget._use_folder()
    viewer.layers["nuclei"].name = "dapi"
    drain_jobs(widget)
    _commit_at(widget, drain_jobs, [128, 128])
    fingerprint = widget.session.fingerprint
    assert {name: (tmp_path / name).read_bytes() for name in taken} == taken
    files = sorted(taken) + [f"dapi-{fingerprint}.labels.tif", f"dapi-{fingerprint}.prompts.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(files)
    reopened = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, name="dapi")
    np.testing.assert_array_equal(reopened.session.annotations, widget.session.annotations)
    assert len(reopened.session.records) == 1


def _earlier_annotations(widget, folder, name: str) -> np.ndarray:
    """Annotations of the widget's image saved earlier in ``folder`` as ``name``."""
    earlier = np.zeros(widget.session.axes.spatial_shape, np.uint32)
    earlier[:4, :4] = 5
    record = {"image_fingerprint": widget.session.fingerprint, "objects": [{"id": 5}]}
    save_annotations(folder, name, earlier, record)
    return earlier


def test_an_image_renamed_to_the_name_of_its_own_earlier_annotations_continues_them(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, drain_jobs, notifications
):
    """Picked, nothing annotated, then renamed to "dapi", whose files hold this image's
    earlier annotations: saves went on under the old name, silently, and reopened as
    "dapi" the image came back without them. Now they are restored, as when the image is
    picked under that name, and saved there with what follows."""
    viewer, widget = viewer_widget
    earlier = _earlier_annotations(widget, tmp_path, "dapi")
    widget.ui.folder_edit.setText(str(tmp_path))
    widget._use_folder()
    viewer.layers["nuclei"].name = "dapi"
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, earlier)
    assert any("dapi.labels.tif" in notice and "restored" in notice for notice in notifications)
    _commit_at(widget, drain_jobs, [128, 128])
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "dapi.labels.tif",
        "dapi.prompts.json",
    ]
    reopened = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, name="dapi")
    np.testing.assert_array_equal(reopened.session.annotations, widget.session.annotations)
    assert (reopened.session.annotations[:4, :4] == 5).all()
    assert len(reopened.session.annotations.nonzero()[0]) > 16  # and the new object


def test_unsaved_annotations_renamed_to_the_name_of_earlier_ones_move_those_aside(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, drain_jobs, notifications
):
    """As above, with objects committed but not saved (autosave unticked): they are
    saved under the new name, where the image finds them; the earlier annotations, which
    the session does not hold, are moved beside them, not overwritten, and the person
    is told where."""
    viewer, widget = viewer_widget
    widget.ui.autosave_check.setChecked(False)
    earlier = _earlier_annotations(widget, tmp_path, "dapi")
    widget.ui.folder_edit.setText(str(tmp_path))
    widget._use_folder()
    _commit_at(widget, drain_jobs, [128, 128])
    committed = widget.session.annotations.copy()
    assert not (tmp_path / "nuclei.labels.tif").exists()
    viewer.layers["nuclei"].name = "dapi"
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, committed)
    aside = f"dapi-{widget.session.fingerprint}.labels.tif"
    assert any(aside in notice and "Load annotations" in notice for notice in notifications)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / aside), earlier)
    widget.save_annotations()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "dapi.labels.tif"), committed)
    assert not (tmp_path / "nuclei.labels.tif").exists()
    reopened = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, name="dapi")
    np.testing.assert_array_equal(reopened.session.annotations, committed)


def test_saved_annotations_renamed_to_the_name_of_earlier_ones_move_those_aside(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, drain_jobs, notifications
):
    """As above, with the session's annotations saved already under the old name: they
    stayed there (with a message), and reopened as "dapi" the image brought back the
    earlier annotations, not the newer. Now the earlier move aside, not overwritten, and
    the saved ones take the new name."""
    viewer, widget = viewer_widget
    earlier = _earlier_annotations(widget, tmp_path, "dapi")
    widget.ui.folder_edit.setText(str(tmp_path))
    widget._use_folder()
    _commit_at(widget, drain_jobs, [128, 128])
    committed = widget.session.annotations.copy()
    assert (tmp_path / "nuclei.labels.tif").exists()
    viewer.layers["nuclei"].name = "dapi"
    drain_jobs(widget)
    aside = f"dapi-{widget.session.fingerprint}.labels.tif"
    assert any(aside in notice and "Load annotations" in notice for notice in notifications)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / aside), earlier)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "dapi.labels.tif"), committed)
    assert not (tmp_path / "nuclei.labels.tif").exists()
    _commit_at(widget, drain_jobs, [40, 200])  # later saves go to the new name too
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "dapi.labels.tif"), widget.session.annotations
    )
    reopened = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, name="dapi")
    np.testing.assert_array_equal(reopened.session.annotations, widget.session.annotations)


def test_a_renamed_copy_of_an_image_is_told_where_its_annotations_are(
    cells_with_one_saved_object, make_napari_viewer, tmp_path, notifications, drain_jobs
):
    """Autosave finds an image's annotations by its name: a copy of an annotated image
    under another name (its file renamed or copied) started with nothing, and nothing said
    that its annotations were there under the old name. It is told now; they are not
    loaded unasked, and 'Load annotations…' goes on with them."""
    viewer, _ = cells_with_one_saved_object(tmp_path)
    cells0, cells1 = viewer.layers["cells0"].data, viewer.layers["cells1"].data
    copy = _reopen(make_napari_viewer, cells0.copy(), tmp_path, drain_jobs, name="cells0 copy")
    told = [n for n in notifications if "same image" in n]
    assert len(told) == 1 and f"{tmp_path / 'cells0.labels.tif'} holds" in told[0]
    assert "'cells0 copy'" in told[0] and "'Load annotations…'" in told[0]
    assert not copy.session.annotations.any() and not copy.session.records
    _reopen(make_napari_viewer, cells1.copy(), tmp_path, drain_jobs, name="cells1 copy")
    assert len([n for n in notifications if "same image" in n]) == 1  # other pixels: nothing
    copy.start_loading_annotations(tmp_path / "cells0.labels.tif")
    drain_jobs(copy)
    assert len(copy.session.records) == 1 and copy.session.annotations[10:20, 10:20].all()


def test_a_namesake_of_another_plane_count_is_told_with_both_shapes(
    make_napari_viewer, tmp_path, notifications, drain_jobs
):
    """A layer whose data was replaced by a stack of another plane count found its own
    earlier annotations called "the annotations of another image named ...": now both
    shapes are said, and that they may be this layer's from before."""
    save_annotations(
        tmp_path, "cells", np.ones((2, 32, 32), np.uint32), {"image_fingerprint": "earlier"}
    )
    before = (tmp_path / "cells.labels.tif").read_bytes()
    stack = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    _reopen(make_napari_viewer, stack, tmp_path, drain_jobs, name="cells")
    said = [n for n in notifications if f"{tmp_path / 'cells.labels.tif'} holds" in n]
    assert len(said) == 1, notifications
    assert "(2 planes of 32 x 32 pixels there, 4 planes of 32 x 32 pixels here)" in said[0]
    assert "or this layer's before its data was replaced" in said[0]
    assert (tmp_path / "cells.labels.tif").read_bytes() == before  # kept, not restored over


def test_work_saved_beside_a_damaged_autosave_is_named_once_that_one_reads_again(
    viewer_widget, make_napari_viewer, tmp_path, nuclei_image, notifications, drain_jobs
):
    """Moving the damaged record away, as its error advised, made the own-name labels read
    again: they were restored, and the later work saved beside them was never mentioned."""
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    _commit_at(widget, drain_jobs, [128, 128])
    model = widget.segmenter.model
    _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, model)
    assert not any("same pixels" in n for n in notifications)  # nothing saved beside
    (tmp_path / "nuclei.prompts.json").write_text("damaged", encoding="utf-8")
    later = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, model)
    _commit_at(later, drain_jobs, [40, 200])
    (diverted,) = tmp_path.glob("nuclei-*.labels.tif")
    (tmp_path / "nuclei.prompts.json").unlink()  # moved away, as the error said
    count = len(notifications)
    again = _reopen(make_napari_viewer, nuclei_image[0], tmp_path, drain_jobs, model)
    assert set(np.unique(again.session.annotations)) == {0, 1}  # the older file's
    said = [n for n in notifications[count:] if str(diverted) in n]
    assert len(said) == 1 and "Load annotations" in said[0] and said[0].severity == "warning"


@pytest.mark.parametrize("record", [True, False])
def test_annotations_an_earlier_version_named_otherwise_are_told_of(
    make_napari_viewer, tmp_path, notifications, drain_jobs, record
):
    """Names kept ASCII letters only before 2026-12-06: 'Zelle ä' was saved as
    Zelle.labels.tif, which the panel found no more; without a fingerprint in its record,
    nothing was said, and with one it said "saved under another name"."""
    from napari_samtune.core.label_files import image_fingerprint

    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    labels = np.zeros((64, 64), np.uint32)
    labels[10:20, 10:20] = 1
    saved = {"image_fingerprint": image_fingerprint(image)} if record else {}
    save_annotations(tmp_path, "Zelle", labels, {"objects": [], **saved})
    _reopen(make_napari_viewer, image, tmp_path, drain_jobs, name="Zelle ä")
    told = [n for n in notifications if str(tmp_path / "Zelle.labels.tif") in n]
    assert len(told) == 1 and "'Load annotations…'" in told[0]
    if record:
        assert "holds annotations of this same image" in told[0]
        assert "under the name an earlier napari-samtune gave its file" in told[0]
    else:
        assert "may hold them: an earlier napari-samtune saved an image" in told[0]
        assert "rename it Zelle_ä.labels.tif" in told[0]
