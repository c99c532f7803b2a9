"""Saved annotations following an image renamed while no session of it is kept (annotated
before the panel was reopened): nothing in the annotation folder is overwritten or lost."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_samtune.core.annotation_files import save_annotations


def test_an_unkept_image_renamed_to_the_name_of_its_earlier_annotations_moves_those_aside(
    cells0_saved_then_panel_reopened, drain_jobs, tmp_path, notifications
):
    """cells0, its session not kept, renamed "dapi", whose files hold earlier annotations
    of the same image: its files stayed under "cells0" (with a message), and picked or
    reopened as "dapi" the image brought back the earlier annotations, not those of its
    layer. As for a kept session, the earlier ones now move aside to
    ``dapi-<fingerprint>``, not overwritten, and cells0's take "dapi"."""
    viewer, widget, first = cells0_saved_then_panel_reopened(tmp_path)
    fingerprint = first.fingerprint
    saved = tifffile.imread(tmp_path / "cells0.labels.tif")
    earlier = np.zeros_like(saved)
    earlier[:4, :4] = 5
    record = {"image_fingerprint": fingerprint, "objects": [{"id": 5}]}
    save_annotations(tmp_path, "dapi", earlier, record)

    viewer.layers["cells0"].name = "dapi"
    drain_jobs(widget)
    aside = tmp_path / f"dapi-{fingerprint}.labels.tif"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["dapi.labels.tif", "dapi.prompts.json", aside.name, f"dapi-{fingerprint}.prompts.json"]
    )
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "dapi.labels.tif"), saved)
    np.testing.assert_array_equal(tifffile.imread(aside), earlier)
    assert any(str(aside) in notice and "Load annotations" in notice for notice in notifications)
    widget.ui.image_combo.setCurrentText("dapi")
    drain_jobs(widget)
    np.testing.assert_array_equal(widget.session.annotations, saved)
    assert len(widget.session.records) == 1


def test_a_layer_of_the_widget_s_the_person_renamed_keeps_its_name_when_the_image_is_renamed(
    viewer_widget,
):
    """The widget's layers follow the image's name by their marks, whatever earlier name
    of the image they have; one the person gave a name of their own ("seeds") keeps it."""
    viewer, widget = viewer_widget
    layers = widget.session.layers
    layers.points.name = "seeds"
    viewer.layers["nuclei"].name = "dapi"
    assert layers.points.name == "seeds"
    assert (layers.annotations.name, layers.boxes.name) == ("dapi annotations", "dapi boxes")
