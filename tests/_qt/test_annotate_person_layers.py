"""A person's own layers that happen to have the names of the annotation widget's layers
("<image> points", ...): the widget leaves them as they are and uses its own beside them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

WAIT_MS = 30_000


def _annotate(make_napari_viewer, qtbot, tiny_sam, drain_jobs, folder, image, add_mine):
    """A viewer with ``image`` as "nuclei", the layers ``add_mine(viewer)`` adds (the
    person's), then the widget (saving to ``folder``), which picks "nuclei"."""
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    mine = add_mine(viewer)
    widget = AnnotateWidget(viewer)
    widget.ui.folder_edit.setText(str(folder))
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    return viewer, widget, mine


def _pick(widget, drain_jobs, name: str) -> None:
    widget.ui.image_combo.setCurrentText(name)
    drain_jobs(widget)


def test_a_person_s_points_layer_so_named_is_left_alone_and_annotation_works(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, notifications
):
    """A Points layer of the person's named "nuclei points" (added by hand, or a CSV) was
    taken for the prompts: setting the polarity failed ("Feature defaults contain some
    extra columns not in feature values") and the image could not be annotated."""

    def add_mine(viewer):
        features = {"score": [0.5, 0.9]}
        return viewer.add_points(
            [[10.0, 20.0], [30.0, 40.0]], name="nuclei points", features=features
        )

    viewer, widget, mine = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, nuclei_image[0], add_mine
    )
    data, features = mine.data.copy(), mine.features.copy()
    assert widget.session is not None
    points = widget.session.layers.points
    assert points is not mine and points.name == "nuclei points [1]"
    assert any("'nuclei points [1]'" in notice for notice in notifications)
    points.add([128, 128])
    assert widget.session.layers.preview.data.any()
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert widget.session.records[0]["points"] == [[128.0, 128.0]]  # not the person's
    assert mine.name == "nuclei points" and mine in viewer.layers
    np.testing.assert_array_equal(mine.data, data)
    pd.testing.assert_frame_equal(mine.features, features)

    viewer.add_image(nuclei_image[0][::-1].copy(), name="second")
    _pick(widget, drain_jobs, "second")
    told = len(notifications)
    _pick(widget, drain_jobs, "nuclei")  # picked again: the widget's own layers come back
    assert widget.session.layers.points is points
    assert not any("exists already" in notice for notice in notifications[told:])
    assert sum(layer.name.startswith("nuclei points") for layer in viewer.layers) == 2

    viewer.layers["nuclei"].name = "dapi"  # the widget's layers follow; the person's stays
    assert points.name == "dapi points" and mine.name == "nuclei points"
    np.testing.assert_array_equal(mine.data, data)


def test_a_person_s_shapes_layer_so_named_gives_no_boxes_and_is_left_alone(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, monkeypatch
):
    """A Shapes layer of the person's named "nuclei boxes" was taken for the box prompts:
    its shapes prompted SAM, and a commit deleted them."""

    def add_mine(viewer):
        return viewer.add_shapes(
            [np.array([[5.0, 5.0], [5.0, 60.0], [50.0, 60.0], [50.0, 5.0]])],
            shape_type="polygon",
            name="nuclei boxes",
        )

    viewer, widget, mine = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, nuclei_image[0], add_mine
    )
    data = [vertices.copy() for vertices in mine.data]
    boxes = widget.session.layers.boxes
    assert boxes is not mine and boxes.name == "nuclei boxes [1]"
    calls = []
    predict = widget.segmenter.predict
    monkeypatch.setattr(widget.segmenter, "predict", lambda **kw: calls.append(kw) or predict(**kw))
    boxes.add_rectangles(np.array([[40.0, 100.0], [90.0, 180.0]]))
    np.testing.assert_allclose(calls[-1]["box_xyxy"], [100, 40, 180, 90])  # the only box
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert len(widget.session.records[0]["boxes"]) == 1
    assert len(mine.data) == len(data)
    for vertices, before in zip(mine.data, data, strict=True):
        np.testing.assert_array_equal(vertices, before)

    viewer.add_image(nuclei_image[0][::-1].copy(), name="second")
    _pick(widget, drain_jobs, "second")
    _pick(widget, drain_jobs, "nuclei")
    assert widget.session.layers.boxes is boxes


def test_a_person_s_labels_so_named_are_used_as_annotations_but_not_as_the_preview(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path
):
    """A Labels layer "<image> annotations" of the image's shape is how annotations made
    elsewhere are continued: it is used. One named "<image> current object" is the
    person's, not a preview to empty."""
    shape = nuclei_image[0].shape

    def add_mine(viewer):
        painted = np.zeros(shape, np.uint32)
        painted[:8, :8] = 7
        viewer.add_labels(painted, name="nuclei annotations")
        return viewer.add_labels(painted.copy(), name="nuclei current object")

    viewer, widget, mine = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, nuclei_image[0], add_mine
    )
    from napari_samtune._qt.layer_pairs import is_preview_layer

    layers = widget.session.layers
    assert layers.annotations is viewer.layers["nuclei annotations"]
    assert layers.preview is not mine and layers.preview.name == "nuclei current object [1]"
    assert is_preview_layer(layers.preview)  # never offered to Finetune as annotations
    layers.points.add([128, 128])
    assert widget.commit() == [8]
    assert (mine.data[:8, :8] == 7).all() and mine.data.sum() == 7 * 64


def _commit_as_a_then_rename_to_b(viewer, widget, drain_jobs, *open_prompts):
    """Image "nuclei" renamed "a", one object committed at (128, 128) and ``open_prompts``
    left uncommitted, then renamed "b", where the person's layers hold the "b ..." names:
    its layers keep the "a ..." ones. Returns the session and its objects."""
    viewer.layers["nuclei"].name = "a"
    first = widget.session
    first.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    for prompt in open_prompts:
        first.layers.points.add(prompt)
    objects = first.layers.annotations.data.copy()
    assert objects.any()
    viewer.layers["a"].name = "b"
    assert first.layers.annotations.name == "a annotations"
    return first, objects


def test_an_image_given_the_name_of_one_renamed_gets_new_layers_not_the_first_one_s(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, notifications
):
    """Image "a" renamed "b" where layers "b points" and "b annotations" were the person's:
    its layers kept their names ("a points", "a annotations"), and image "c" renamed "a"
    and picked took them as its own (a's prompts, and its objects to add to and save)."""

    def add_mine(viewer):
        viewer.add_points([[5.0, 5.0]], name="b points")
        return viewer.add_shapes([[[0, 0], [4, 4]]], name="b annotations")

    image = nuclei_image[0]
    viewer, widget, _ = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, image, add_mine
    )
    first, objects = _commit_as_a_then_rename_to_b(viewer, widget, drain_jobs, [60, 60])
    assert first.layers.points.name == "a points"  # "b points" is the person's

    viewer.add_image(image[::-1].copy(), name="c")
    viewer.layers["c"].name = "a"
    _pick(widget, drain_jobs, "a")
    layers = widget.session.layers
    assert widget.session is not first
    assert layers.points is not first.layers.points and len(layers.points.data) == 0
    assert layers.annotations is not first.layers.annotations
    assert not layers.annotations.data.any()
    np.testing.assert_array_equal(first.layers.annotations.data, objects)
    assert any("'a points [1]'" in notice for notice in notifications)


@pytest.mark.parametrize("kind", ["shapes", "labels"])
def test_an_image_renamed_where_its_layers_could_not_follow_finds_them_when_picked_again(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, kind
):
    """Image "a" renamed "b" where "b points" and "b annotations" were the person's: its
    layers kept their names ("a points", "a annotations"), and "b" picked again got new
    empty layers, its objects and prompts left behind under the old names. Its layers are
    marked with the image: they are found whatever their names (before a person's Labels
    "b annotations" too, which it would otherwise continue)."""
    image = nuclei_image[0]

    def add_mine(viewer):
        viewer.add_points([[5.0, 5.0]], name="b points")
        if kind == "labels":
            return viewer.add_labels(np.zeros(image.shape[:2], np.uint32), name="b annotations")
        return viewer.add_shapes([[[0, 0], [4, 4]]], name="b annotations")

    viewer, widget, mine = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, image, add_mine
    )
    first, objects = _commit_as_a_then_rename_to_b(viewer, widget, drain_jobs)
    viewer.add_image(image[::-1].copy(), name="c")
    _pick(widget, drain_jobs, "c")
    names = {layer.name for layer in viewer.layers}
    _pick(widget, drain_jobs, "b")
    layers = widget.session.layers
    assert layers.annotations.name == "a annotations"
    np.testing.assert_array_equal(layers.annotations.data, objects)
    assert layers.points.name == "a points"
    assert {layer.name for layer in viewer.layers} - names <= {"a current object", "a boxes"}
    assert not any(layer.name.startswith("b ") and "[" in layer.name for layer in viewer.layers)
    assert not mine.data.any() if kind == "labels" else len(mine.data) == 1


@pytest.mark.parametrize("kind", ["points", "small labels"])
def test_an_annotations_layer_that_does_not_fit_is_left_alone_and_annotation_works(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, notifications, kind
):
    """A layer of the person's named "nuclei annotations" that is no Labels layer of the
    image's shape (Points; Labels of another shape) stopped annotation ("exists but does
    not fit ... rename or delete it"); the widget now annotates into its own beside it."""
    image = nuclei_image[0]

    def add_mine(viewer):
        if kind == "points":
            return viewer.add_points([[3.0, 4.0]], name="nuclei annotations")
        return viewer.add_labels(np.ones((8, 8), np.uint32), name="nuclei annotations")

    viewer, widget, mine = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, image, add_mine
    )
    before = mine.data.copy()
    annotations = widget.session.layers.annotations
    assert annotations is not mine and annotations.name == "nuclei annotations [1]"
    assert annotations.data.shape == image.shape[:2]
    assert any("'nuclei annotations [1]'" in notice for notice in notifications)
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    assert annotations.data.any()
    np.testing.assert_array_equal(mine.data, before)
    assert mine.name == "nuclei annotations" and mine in viewer.layers


def _reopen_panel_on(viewer, widget, qtbot, tiny_sam, drain_jobs, folder, image):
    """The panel closed (the layers stay) and opened again on a new image "other", so that
    no session of the first image is kept. Returns the new widget."""
    from napari_samtune._qt.annotate import AnnotateWidget

    widget.shut_down()
    viewer.add_image(image[::-1].copy(), name="other")
    viewer.layers.move(viewer.layers.index("other"), 0)
    reopened = AnnotateWidget(viewer)
    reopened.ui.folder_edit.setText(str(folder))
    with qtbot.waitSignal(reopened.embedding_ready, timeout=WAIT_MS):
        reopened.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(reopened)
    assert reopened.session.image_layer.name == "other"
    return reopened


@pytest.mark.parametrize("kept", [True, False], ids=["chosen", "panel-reopened"])
def test_layers_that_kept_an_old_name_take_the_image_s_next_name(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, kept
):
    """Image "a" renamed "b" where "b points" and "b annotations" were the person's: its
    layers kept the names "a points" and "a annotations". Renamed again, "c", they kept
    them still: they were looked up by the name "b". They are the widget's (marked with
    the image), so they take "c points" and "c annotations"; the person's stay as they are."""
    image = nuclei_image[0]

    def add_mine(viewer):
        viewer.add_points([[5.0, 5.0]], name="b points")
        return viewer.add_shapes([[[0, 0], [4, 4]]], name="b annotations")

    viewer, widget, mine = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, image, add_mine
    )
    first, objects = _commit_as_a_then_rename_to_b(viewer, widget, drain_jobs, [60, 60])
    assert first.layers.points.name == "a points"
    if not kept:
        widget = _reopen_panel_on(viewer, widget, qtbot, tiny_sam, drain_jobs, tmp_path, image)
    viewer.layers["b"].name = "c"
    layers = first.layers
    assert layers.points.name == "c points" and len(layers.points.data) == 1
    assert layers.annotations.name == "c annotations"
    np.testing.assert_array_equal(layers.annotations.data, objects)
    assert (layers.boxes.name, layers.preview.name) == ("c boxes", "c current object")
    assert viewer.layers["b points"] is not layers.points
    assert len(viewer.layers["b points"].data) == 1
    assert mine.name == "b annotations" and len(mine.data) == 1
    assert not any(layer.name.startswith("a ") for layer in viewer.layers)


def test_the_note_on_taken_layer_names_names_the_layers_that_keep_theirs(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path, notifications
):
    """Image "a" renamed "b" and then "c", where "b points" and "c points" are the person's:
    the note said "those of 'b' keep their names", though they were named "a points", the
    name the person has to look for."""

    def add_mine(viewer):
        viewer.add_points([[5.0, 5.0]], name="b points")
        viewer.add_points([[6.0, 6.0]], name="c points")
        return viewer.add_shapes([[[0, 0], [4, 4]]], name="b annotations")

    viewer, widget, _ = _annotate(
        make_napari_viewer, qtbot, tiny_sam, drain_jobs, tmp_path, nuclei_image[0], add_mine
    )
    first, _ = _commit_as_a_then_rename_to_b(viewer, widget, drain_jobs)
    assert (
        "layer(s) 'b points', 'b annotations' exist already, so the layers of image 'b' keep "
        "the names 'a points', 'a annotations'" in notifications
    )
    viewer.layers["b"].name = "c"
    assert first.layers.points.name == "a points"
    assert first.layers.annotations.name == "c annotations"
    assert (
        "layer(s) 'c points' exist already, so the layers of image 'c' keep the names "
        "'a points'" in notifications
    )
