"""The annotation widget on a 2D image, in a real viewer, with the tiny random SAM.

The tiny model's masks are arbitrary but deterministic, so these tests check what does
not need a good model: previews appear and follow the prompts, commits add exactly the
preview as new ids, undo restores, files round-trip, errors reach the user.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import tifffile
import torch
from napari.utils.key_bindings import KeymapHandler
from qtpy.QtCore import Qt
from qtpy.QtGui import QCloseEvent
from qtpy.QtWidgets import QApplication

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune._qt.annotate_jobs import AUTO_TASK, LOAD_TASK
from napari_samtune._qt.annotate_ui import BATCHED_MODE
from napari_samtune._qt.prompt_layers import POINT_COLORS
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.automatic import NANO_AUTO_CONFIG, AutoSegmentConfig
from napari_samtune.core.data import load_pairs
from napari_samtune.core.user_models import register_user_model

WAIT_MS = 30_000


def test_widget_attaches_to_the_image_and_embeds_it(viewer_widget):
    viewer, widget = viewer_widget
    names = [layer.name for layer in viewer.layers]
    for suffix in ("points", "boxes", "current object", "annotations"):
        assert f"nuclei {suffix}" in names
    assert widget.embedded_plane is None  # 2D: the whole image is embedded
    assert widget.session.annotations.shape == (256, 256)
    assert widget.session.annotations.dtype == np.uint32


def test_points_update_the_preview(viewer_widget):
    _, widget = viewer_widget
    layers = widget.session.layers
    assert not layers.preview.data.any()
    layers.points.add([120, 80])
    first = layers.preview.data.copy()
    assert first.any()
    widget.toggle_polarity()  # next point negative
    layers.points.add([60, 200])
    assert list(layers.points.features["label"]) == ["positive", "negative"]
    assert not np.array_equal(layers.preview.data, first)
    layers.points.data = layers.points.data[:1]  # delete the negative point
    np.testing.assert_array_equal(layers.preview.data, first)
    layers.points.data = np.zeros((0, 2))
    assert not layers.preview.data.any()


def test_point_colours_follow_polarity(viewer_widget):
    _, widget = viewer_widget
    points = widget.session.layers.points
    points.add([10, 10])
    widget.toggle_polarity()
    points.add([20, 20])
    green, red = (np.array(_hex_rgba(POINT_COLORS[k])) for k in ("positive", "negative"))
    np.testing.assert_allclose(points.face_color[0], green, atol=0.01)
    np.testing.assert_allclose(points.face_color[1], red, atol=0.01)
    assert list(points.features["label"]) == ["positive", "negative"]  # add mode: no flips
    points.mode = "select"
    points.selected_data = {0}
    widget.toggle_polarity()  # positive mode; the selected point is positive already
    widget.toggle_polarity()  # negative mode: the selected point flips
    assert list(points.features["label"]) == ["negative", "negative"]
    np.testing.assert_allclose(points.face_color[0], red, atol=0.01)


def _hex_rgba(color: str) -> tuple[float, ...]:
    return tuple(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)) + (1.0,)


def test_box_goes_to_sam_as_xyxy(viewer_widget, monkeypatch):
    _, widget = viewer_widget
    calls = []
    predict = widget.segmenter.predict

    def spy(**kwargs):
        calls.append(kwargs)
        return predict(**kwargs)

    monkeypatch.setattr(widget.segmenter, "predict", spy)
    layers = widget.session.layers
    layers.boxes.add_rectangles(
        np.array([[40.0, 100.0], [90.0, 180.0]])
    )  # rows 40-90, cols 100-180
    np.testing.assert_allclose(calls[-1]["box_xyxy"], [100, 40, 180, 90])
    assert calls[-1]["points_xy"] is None
    assert layers.preview.data.any()
    layers.points.add([50.0, 150.0])  # row 50, col 150 -> (x, y) = (150, 50)
    np.testing.assert_allclose(calls[-1]["points_xy"], [[150, 50]])


def test_commit_writes_the_preview_as_max_plus_one(viewer_widget):
    _, widget = viewer_widget
    layers = widget.session.layers
    layers.annotations.data[:10, :10] = 7  # an existing object
    layers.points.add([128, 128])
    preview = layers.preview.data > 0
    before = layers.annotations.data.copy()
    assert widget.commit() == [8]
    after = widget.session.annotations
    np.testing.assert_array_equal(after == 8, preview & (before == 0))
    np.testing.assert_array_equal(after[~preview], before[~preview])
    assert len(layers.points.data) == 0 and not layers.preview.data.any()
    assert widget.commit() == []  # nothing left to commit


def test_commit_respects_other_objects_unless_overwrite(viewer_widget, notifications):
    _, widget = viewer_widget
    layers = widget.session.layers
    layers.points.add([128, 128])
    preview = layers.preview.data > 0
    layers.annotations.data[preview] = 3  # the preview lies entirely on object 3
    assert widget.commit() == []
    assert len(layers.points.data) == 1  # nothing happened: prompts stay
    assert notifications[-1] == (
        "nothing to commit: the preview covers only existing objects (tick overwrite to "
        "replace them)"
    )
    widget.ui.overwrite_check.setChecked(True)
    assert widget.commit() == [4]
    np.testing.assert_array_equal(widget.session.annotations == 4, preview)


def test_an_empty_preview_is_not_called_covered_by_other_objects(viewer_widget, notifications):
    """With nothing annotated, "the preview is empty or covers only existing objects (tick
    overwrite)" sent a person to a box that could not help."""
    _, widget = viewer_widget
    layers = widget.session.layers
    layers.points.add([128, 128])
    layers.preview.data = np.zeros_like(layers.preview.data)  # the model found nothing
    assert widget.commit() == []
    said = str(notifications[-1])
    assert said.startswith("nothing to commit: the preview is empty (the model found no object")
    assert "overwrite" not in said


def test_undo_restores_the_labels(viewer_widget):
    _, widget = viewer_widget
    layers = widget.session.layers
    layers.points.add([128, 128])
    widget.commit()
    after_first = widget.session.annotations.copy()
    layers.points.add([40, 40])
    widget.commit()
    assert widget.undo()
    np.testing.assert_array_equal(widget.session.annotations, after_first)
    assert widget.undo()
    assert not widget.session.annotations.any()
    assert not widget.undo()
    assert widget.session.records == []


def test_keys_commit_clear_toggle_and_undo(viewer_widget):
    viewer, widget = viewer_widget
    layers = widget.session.layers
    keys = KeymapHandler()
    keys.keymap_providers = [layers.points, viewer]  # what napari asks when points are active
    layers.points.add([128, 128])
    keys.press_key("C")
    assert widget.session.annotations.max() == 1
    keys.press_key("U")
    assert widget.session.annotations.max() == 0
    layers.points.add([128, 128])
    keys.press_key("Shift-C")
    assert len(layers.points.data) == 0 and not layers.preview.data.any()
    keys.press_key("T")
    assert not widget.ui.positive_check.isChecked()


def test_keys_act_with_the_image_layer_selected_and_leave_it_with_the_panel(viewer_widget):
    """C with the annotated image's layer selected ran napari's auto-contrast of the image
    instead of committing; once the panel closes, the layer's own C is back."""
    viewer, widget = viewer_widget
    image, layers = viewer.layers["nuclei"], widget.session.layers
    image.contrast_limits = narrow = [0.2, 0.3]
    keys = KeymapHandler()
    keys.keymap_providers = [image, viewer]  # what napari asks when the image is active
    layers.points.add([128, 128])
    keys.press_key("C")
    assert widget.session.annotations.max() == 1
    np.testing.assert_allclose(image.contrast_limits, narrow)
    keys.press_key("U")
    assert widget.session.annotations.max() == 0
    annotations = widget.session.annotations
    widget.shut_down()
    keys.press_key("C")  # napari's auto-contrast again; nothing committed
    assert not np.allclose(image.contrast_limits, narrow)
    assert not annotations.any()


def test_batched_mode_makes_one_object_per_box(viewer_widget):
    _, widget = viewer_widget
    widget.ui.mode_combo.setCurrentText(BATCHED_MODE)
    layers = widget.session.layers
    layers.boxes.add_rectangles(np.array([[20.0, 20.0], [80.0, 80.0]]))
    layers.boxes.add_rectangles(np.array([[150.0, 150.0], [230.0, 230.0]]))
    ids = set(np.unique(layers.preview.data)) - {0}
    assert len(ids) == 2
    assert widget.commit() == [1, 2]


def test_automatic_segmentation_fills_the_annotations_and_undoes_at_once(
    viewer_widget, qtbot, run_job
):
    _, widget = viewer_widget
    widget.ui.points_per_side_spin.setValue(8)
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless: keep all
    widget.ui.stability_spin.setValue(0.0)
    run_job(widget, widget.segment_automatically, AUTO_TASK)
    labels = widget.session.annotations
    n_objects = len(np.unique(labels)) - 1
    assert n_objects >= 1
    assert widget.session.records[-1]["source"] == "automatic"
    assert widget.undo()
    assert not widget.session.annotations.any()


def test_automatic_segmentation_tells_what_it_found(viewer_widget, run_job, notifications):
    """The status line goes with the job: a run that kept no object, or whose objects all
    lay on committed ones, changed nothing and said nothing."""
    _, widget = viewer_widget
    widget.ui.points_per_side_spin.setValue(8)
    widget.ui.iou_spin.setValue(0.0)  # a random model's scores are meaningless
    widget.ui.stability_spin.setValue(0.0)
    widget.ui.min_area_spin.setValue(100_000)  # more pixels than the image has
    run_job(widget, widget.segment_automatically, AUTO_TASK)
    assert not widget.session.annotations.any()
    assert any("found no objects: lower 'min predicted IoU'" in n for n in notifications)
    widget.ui.min_area_spin.setValue(0)
    run_job(widget, widget.segment_automatically, AUTO_TASK)
    n_objects = len(np.unique(widget.session.annotations)) - 1
    assert n_objects >= 1
    plural = "" if n_objects == 1 else "s"
    assert f"automatic segmentation added {n_objects} object{plural}" in notifications
    widget.session.annotations[...] = 1  # everything annotated already
    run_job(widget, widget.segment_automatically, AUTO_TASK)
    assert notifications[-1].startswith(f"automatic segmentation added 0 of the {n_objects}")
    assert "tick overwrite" in notifications[-1]


def test_automatic_settings_follow_the_model_unless_changed(make_napari_viewer):
    """A nano-sized model keeps no object with SAM's thresholds: its own defaults show."""
    widget = AnnotateWidget(make_napari_viewer())
    assert widget.auto_config() == AutoSegmentConfig()  # SAM's before any model
    widget.set_model(build_sam(TINY), "tiny")  # a 256 px input, like nano
    assert TINY.img_size == 256 and widget.auto_config() == NANO_AUTO_CONFIG
    assert widget.ui.iou_spin.value() == NANO_AUTO_CONFIG.pred_iou_thresh
    widget.set_model(build_sam(dataclasses.replace(TINY, img_size=512)), "larger")
    assert widget.auto_config() == AutoSegmentConfig()
    widget.ui.iou_spin.setValue(0.5)  # the user's choice survives a change of model
    widget.set_model(build_sam(TINY), "tiny")
    assert widget.auto_config() == dataclasses.replace(AutoSegmentConfig(), pred_iou_thresh=0.5)


def test_commit_autosaves_labels_and_prompts(viewer_widget, qtbot, tmp_path, drain_jobs):
    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path))
    widget.session.layers.points.add([128, 128])
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS) as saved:
        widget.commit()
    drain_jobs(widget)
    assert widget.ui.status_label.text() == "committed object(s) [1]"  # not "autosave…", ""
    np.testing.assert_array_equal(tifffile.imread(saved.args[0]), widget.session.annotations)
    record = json.loads((tmp_path / "nuclei.prompts.json").read_text())
    assert record["objects"][0]["ids"] == [1]
    assert record["objects"][0]["points"] == [[128.0, 128.0]]
    assert record["objects"][0]["point_labels"] == ["positive"]
    # the weights beside the name: a continued run registers other weights under it
    assert record["objects"][0]["weights_id"] == widget.segmenter.model_id


@pytest.mark.parametrize("ending", ["close the viewer", "remove the image layer", "close event"])
def test_commits_still_being_saved_reach_the_disk_when_the_image_goes(
    viewer_widget, monkeypatch, tmp_path, drain_jobs, close_blocker, ending
):
    import napari_samtune._qt.annotate_saves as files

    real_save = files.save_annotations

    def slow_save(*args):
        time.sleep(0.5)  # a large stack takes seconds to compress
        return real_save(*args)

    monkeypatch.setattr(files, "save_annotations", slow_save)
    viewer, widget = viewer_widget
    drain_jobs(widget)
    # a close event as a person's click sends it (napari has not torn anything down yet);
    # kept from closing the window, which the fixture closes
    keep_open = close_blocker(widget.window())
    widget.ui.folder_edit.setText(str(tmp_path))
    for point in ([128, 128], [40, 200]):
        widget.session.layers.points.data = np.array([point], dtype=float)
        widget.update_preview()
        widget.commit()  # the second commit comes while the first is being saved
    assert widget._autosave_again
    final = widget.session.annotations.copy()
    assert len(np.unique(final)) == 3
    if ending == "close the viewer":
        keep_open.release()
        viewer.close()
    elif ending == "remove the image layer":
        viewer.layers.remove("nuclei")
    else:
        QApplication.sendEvent(widget.window(), QCloseEvent())
        assert keep_open.count == 1 and widget.session is not None
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.labels.tif"), final)


def test_annotations_come_back_in_a_new_viewer(
    viewer_widget, make_napari_viewer, qtbot, tmp_path, nuclei_image, notifications, drain_jobs
):
    _, widget = viewer_widget  # autosaves to the default folder
    widget.session.layers.points.add([128, 128])
    widget.commit()
    drain_jobs(widget)
    committed = widget.session.annotations.copy()
    other = make_napari_viewer()
    other.add_image(nuclei_image[0], name="nuclei")
    restored = AnnotateWidget(other)  # attaching to the image restores the autosave
    np.testing.assert_array_equal(restored.session.annotations, committed)
    assert restored.session.records[0]["ids"] == [1]
    infos = [str(n.message) for n in notifications]
    assert any("restored 1 saved objects" in m for m in infos)
    wrong = tmp_path / "wrong.labels.tif"
    tifffile.imwrite(wrong, np.zeros((8, 8), dtype=np.uint32))
    assert restored.load_annotations(wrong) is None  # wrong shape: refused, nothing changes
    np.testing.assert_array_equal(restored.session.annotations, committed)
    assert any("needs (256, 256)" in str(n.message) for n in notifications)


def test_a_folder_chosen_after_the_image_gives_back_its_annotations_not_overwrites_them(
    viewer_widget, make_napari_viewer, qtbot, tmp_path, nuclei_image, notifications, drain_jobs
):
    """The widget takes the first image as it opens, saving to the default folder; the next
    autosave after pointing it at a project folder wrote over the image's annotations there."""
    _, widget = viewer_widget
    project = tmp_path / "project"
    widget.ui.folder_edit.setText(str(project))
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    earlier = tifffile.imread(project / "nuclei.labels.tif")
    other = make_napari_viewer()
    other.add_image(nuclei_image[0], name="nuclei")
    later = AnnotateWidget(other)  # on the default folder: nothing to restore
    assert not later.session.annotations.any()
    later.ui.folder_edit.clear()
    qtbot.keyClicks(later.ui.folder_edit, str(project))  # typed, then Enter
    qtbot.keyClick(later.ui.folder_edit, Qt.Key.Key_Return)
    np.testing.assert_array_equal(later.session.annotations, earlier)
    assert later.session.records[0]["ids"] == [1]
    assert any(f"restored 1 saved objects from {project}" in n for n in notifications)
    later.ui.folder_edit.setText(str(tmp_path / "elsewhere"))
    later.session.layers.annotations.data[:5, :5] = 2  # a brush stroke, saved elsewhere
    later.ui.folder_edit.clear()
    qtbot.keyClicks(later.ui.folder_edit, str(project))
    qtbot.keyClick(later.ui.folder_edit, Qt.Key.Key_Return)
    assert "the next save replaces them" in notifications[-1]


def test_an_image_of_the_same_name_saves_beside_the_other_never_over_it(
    viewer_widget, make_napari_viewer, nuclei_image, notifications, drain_jobs, tmp_path
):
    """Names repeat across experiments (Image_001.tif), and the default folder is shared."""
    _, widget = viewer_widget
    widget.session.layers.points.add([128, 128])
    widget.commit()
    drain_jobs(widget)
    folder = widget.annotation_folder()
    first = tifffile.imread(folder / "nuclei.labels.tif")
    assert first.any()

    def open_namesake(image):
        viewer = make_napari_viewer()
        viewer.add_image(image, name="nuclei")
        return AnnotateWidget(viewer)

    other_image = np.ascontiguousarray(nuclei_image[0][::-1])  # same name and shape
    namesake = open_namesake(other_image)
    assert not namesake.session.annotations.any()  # the other image's objects are not shown
    own_name = f"nuclei-{namesake.session.fingerprint}"
    saved_as = f"saved as {f'{own_name}.labels.tif'!r}"  # the file, as on disk
    assert any(saved_as in str(n.message) for n in notifications)
    namesake.session.annotations[10:20, 10:20] = 7
    namesake._autosave()
    drain_jobs(namesake)
    np.testing.assert_array_equal(tifffile.imread(folder / "nuclei.labels.tif"), first)
    assert (tifffile.imread(folder / f"{own_name}.labels.tif") == 7).sum() == 100
    assert (open_namesake(other_image.copy()).session.annotations == 7).sum() == 100
    np.testing.assert_array_equal(open_namesake(nuclei_image[0]).session.annotations, first)
    for experiment, image in (("exp1", nuclei_image[0]), ("exp2", other_image)):
        (tmp_path / experiment).mkdir()
        tifffile.imwrite(tmp_path / experiment / "nuclei.tif", image)
    (trained,) = load_pairs(tmp_path / "exp2", folder)  # training takes this image's own
    assert (trained.labels == 7).sum() == 100
    np.testing.assert_array_equal(load_pairs(tmp_path / "exp1", folder)[0].labels, first)


def test_labels_from_samtune_segment_load_through_the_dialog(
    viewer_widget, monkeypatch, tmp_path, nuclei_image, drain_jobs
):
    """Batch-segment, then correct in napari: the Load dialog offers any label TIFF, and
    corrections are autosaved as this image's annotations."""
    from qtpy.QtWidgets import QFileDialog

    _, widget = viewer_widget
    widget.ui.folder_edit.setText(str(tmp_path / "annotations"))
    segmented = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(segmented, nuclei_image[1])
    offered = []

    def choose(parent, caption, folder, filters):
        offered.append(filters)
        return str(segmented), filters.split(";;")[-1]

    monkeypatch.setattr(QFileDialog, "getOpenFileName", choose)
    assert widget.ui.load_file_button.isEnabled()
    widget.ui.load_file_button.click()
    drain_jobs(widget)  # the file is read in a worker
    assert offered and "*.tif" in offered[0].split(";;")[-1] and "*.labels.tif" in offered[0]
    loaded = nuclei_image[1]
    np.testing.assert_array_equal(widget.session.annotations, loaded)
    widget.session.layers.points.add([5, 5])
    widget.commit()
    drain_jobs(widget)
    saved = tifffile.imread(tmp_path / "annotations" / "nuclei.labels.tif")
    np.testing.assert_array_equal(saved[loaded > 0], loaded[loaded > 0])  # objects kept
    assert set(np.unique(saved[loaded == 0]).tolist()) <= {0, int(loaded.max()) + 1}


def test_segment_a_folder_correct_in_napari_then_train(
    make_napari_viewer, qtbot, tiny_sam, tiny_checkpoint, nuclei_image, tmp_path, monkeypatch
):
    """The loop through files: `samtune segment imgs/ --auto -o annotations/` names its labels
    as the widget's autosaves; the widget opens them for correcting, saves every brush
    stroke, and training pairs them with their images (names through safe_stem)."""
    from napari_samtune.cli import main

    images, annotations = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    tifffile.imwrite(images / "cell 1.tif", nuclei_image[0])
    auto = ["--auto", "--points-per-side", "4", "--pred-iou-thresh", "-1"]
    options = [*auto, "--stability-score-thresh", "0", "--device", "cpu"]
    command = ["segment", str(images), "--model", str(tiny_checkpoint), *options]
    assert main([*command, "-o", str(annotations)]) == 0
    segmented = tifffile.imread(annotations / "cell_1.labels.tif")
    assert segmented.any()

    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(annotations))
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="cell 1")  # napari names a file's layer so
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    np.testing.assert_array_equal(widget.session.annotations, segmented)  # ready to correct
    layer = widget.session.layers.annotations
    layer.brush_size = 9
    row, col = np.argwhere(segmented == 1)[0]
    with qtbot.waitSignal(widget.annotations_saved, timeout=WAIT_MS):
        layer.paint((row, col), 77)  # a brush stroke paints over object 1
    drain = qtbot.waitUntil
    drain(lambda: not widget.runner.is_running(), timeout=WAIT_MS)
    corrected = tifffile.imread(annotations / "cell_1.labels.tif")
    painted = corrected == 77
    assert 9 <= painted.sum() <= 81 and painted[row, col]
    np.testing.assert_array_equal(corrected[~painted], segmented[~painted])
    (pair,) = load_pairs(images, annotations)
    assert pair.name == "cell 1.tif / cell_1.labels.tif"
    np.testing.assert_array_equal(pair.labels, corrected)
    viewer.layers.clear()
    drain(lambda: not widget.runner.is_running(), timeout=WAIT_MS)


def test_a_corrupt_checkpoint_is_reported_and_the_widget_stays_usable(
    viewer_widget, qtbot, tmp_path, notifications, run_job
):
    _, widget = viewer_widget
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"this is not a checkpoint" * 10)
    widget.select_model(str(broken))
    run_job(widget, widget.load_model, LOAD_TASK)
    errors = [str(n.message) for n in notifications if n.severity == "error"]
    assert any("loading model failed" in m and "broken.pth" in m for m in errors)
    assert widget.model_name == "tiny"  # the previous model is still in use
    widget.session.layers.points.add([128, 128])
    assert widget.session.layers.preview.data.any()


def test_a_checkpoint_file_loads_through_the_file_route(viewer_widget, qtbot, tiny_checkpoint):
    _, widget = viewer_widget
    widget.select_model(str(tiny_checkpoint))
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        worker = widget.load_model()
    assert worker is not None
    assert widget.model_name == "tiny_sam"
    assert widget.segmenter.model_id.startswith("weights-sha256-")
    widget.session.layers.points.add([128, 128])
    assert widget.session.layers.preview.data.any()


def test_refresh_shows_a_newly_registered_model(viewer_widget, tiny_checkpoint):
    _, widget = viewer_widget
    picker = widget.ui.model_picker
    assert "my_tiny" not in picker.model_names()
    register_user_model(tiny_checkpoint, "my_tiny", TINY)
    widget.refresh_models()
    assert "my_tiny" in picker.model_names()
    widget.select_model("my_tiny")
    assert picker.model_source() == "my_tiny"
    with pytest.raises(ValueError, match="not in the list"):
        widget.select_model("no_such_model")


def test_wrong_dimensionality_is_an_error_notification(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 32, 32), dtype=np.uint8), name="4d")
    widget = AnnotateWidget(viewer)
    assert widget.session is None
    errors = [str(n.message) for n in notifications if n.severity == "error"]
    assert any("cannot annotate '4d'" in m and "channels on first axis" in m for m in errors)
    assert any("(Z, C, H, W), open the image with its channels as layers" in m for m in errors)
    widget.ui.channels_first_check.setChecked(True)  # (C, Z, H, W): now it is a stack
    assert widget.session is not None and widget.session.axes.spatial_shape == (3, 32, 32)


def test_without_image_or_model_actions_explain_themselves(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    widget = AnnotateWidget(viewer)
    assert widget.segment_automatically() is None
    assert widget.commit() == []
    messages = " ".join(str(n.message) for n in notifications)
    assert "open an image" in messages
    viewer.add_image(np.zeros((64, 64), dtype=np.uint8), name="blank")
    assert widget.session is not None  # the first image is picked up
    widget.session.layers.points.add([10, 10])
    assert "load a model" in " ".join(str(n.message) for n in notifications)


def test_channel_choice_goes_to_the_segmenter(viewer_widget, qtbot, monkeypatch, rng):
    viewer, widget = viewer_widget
    data = rng.integers(0, 255, size=(4, 64, 64)).astype(np.uint8)
    viewer.add_image(data, name="channels")
    calls = []
    set_image = widget.segmenter.set_image
    monkeypatch.setattr(
        widget.segmenter,
        "set_image",
        lambda image, **kw: calls.append((np.array(image), kw)) or set_image(image, **kw),
    )
    widget.ui.image_combo.setCurrentText("channels")
    viewer.dims.set_current_step(0, 3)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.ui.channels_first_check.setChecked(True)
    assert calls[-1][1]["channels"] == [3]  # the channel shown, not channel 0
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.ui.channel_combo.setCurrentIndex(2)
    image, kwargs = calls[-1]
    np.testing.assert_array_equal(image, data)
    assert kwargs["channel_axis"] == 0 and kwargs["channels"] == [2]
    assert widget.session.annotations.shape == (64, 64)


def test_rgb_images_are_annotated_in_2d(make_napari_viewer, qtbot, tiny_sam, rng, drain_jobs):
    viewer = make_napari_viewer()
    viewer.add_image(rng.integers(0, 255, size=(96, 80, 3)).astype(np.uint8), name="rgb")
    widget = AnnotateWidget(viewer)
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    assert widget.session.annotations.shape == (96, 80)
    widget.session.layers.points.add([40, 40])
    assert widget.session.layers.preview.data.any()
    assert widget.commit() == [1]
    drain_jobs(widget)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)


def test_the_plugin_menu_opens_the_widget_on_a_public_viewer_proxy(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs
):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", "Annotate with SAM")
    assert isinstance(widget, AnnotateWidget)
    assert widget.viewer is not viewer  # napari hands plugins a proxy of the viewer
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    session = widget.session
    widget.set_image_layer(viewer.layers["nuclei"])  # the same layer: the session stays
    assert widget.session is session
    drain_jobs(widget)
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    viewer.layers.remove("nuclei points")  # the user deletes a helper layer
    assert widget.session is None
    drain_jobs(widget)


def test_automatic_objects_lying_on_annotated_ones_are_not_added_as_rims(
    viewer_widget, run_job, notifications, monkeypatch
):
    """Without overwrite, automatic objects were written into the free pixels whatever was
    left of them: a cell annotated a little smaller by hand came back as a new object, its
    rim, and specks under 'min area' stayed; the note said all were added. Now the rule
    that paints automatic objects around better ones applies to the annotations too."""
    from napari_samtune._qt import annotate_jobs

    _, widget = viewer_widget
    shape = widget.session.annotations.shape
    found = np.zeros(shape, np.uint32)
    found[10:30, 10:30] = 1  # a cell annotated smaller by hand: its rim is left
    found[40:60, 10:30] = 2  # a cell no one annotated
    found[40:60, 50:70] = 3  # all but one pixel annotated: a speck is left
    widget.session.annotations[12:28, 12:28] = 9
    widget.session.annotations[40:50, 50:70] = 9
    widget.session.annotations[51:60, 50:70] = 9
    widget.session.annotations[50, 51:70] = 9
    found[70:90, 10:30] = 4  # half annotated: kept, less a speck left free among them
    widget.session.annotations[70:80, 10:30] = 9
    widget.session.annotations[70, 10] = 0

    def run(segmenter, axes, data, planes, config, report, **kwargs):
        yield annotate_jobs.PlaneResult(None, found.copy())

    monkeypatch.setattr(annotate_jobs, "iter_segment_automatically", run)
    widget.ui.min_area_spin.setValue(5)
    run_job(widget, widget.segment_automatically, AUTO_TASK)
    labels = widget.session.annotations
    assert set(np.unique(labels[10:30, 10:30])) == {0, 9}  # no rim object
    assert set(np.unique(labels[40:60, 50:70])) == {0, 9}  # no speck object
    new = [i for i in np.unique(labels) if i not in (0, 9)]
    assert len(new) == 2 and (labels[40:60, 10:30] == new[0]).all()  # object 2 whole
    assert (labels[80:90, 10:30] == new[1]).all() and labels[70, 10] == 0
    assert notifications[-1] == (
        "automatic segmentation added 2 of the 4 objects it found; the others lie on "
        "existing objects (tick overwrite to replace them)"
    )
    record = widget.session.records[-1]
    assert record["source"] == "automatic" and record["settings"]["min_area"] == 5
    assert record["weights_id"] == widget.segmenter.model_id
