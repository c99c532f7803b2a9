"""The training widget's layer choices: what is offered as labels, and how the choices
follow a person renaming the layers in the viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune._qt.train_widget import TrainWidget
from napari_samtune.core.presets import MachineResources

SMALL_CPU = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)


def test_renaming_the_layers_chosen_keeps_them_chosen(cells_viewer):
    """Renaming a chosen layer (napari's "Labels" to "nuclei") switched the combo box to
    the first other layer, and "Add pair" then added a pair nobody chose."""
    viewer = cells_viewer()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    data = widget.train_data
    data.image_combo.setCurrentText("cells1")
    data.labels_combo.setCurrentText("cells1 labels")
    data.labels_combo.activated.emit(data.labels_combo.currentIndex())  # a person's choice
    viewer.layers["cells1 labels"].name = "nuclei"
    viewer.layers["cells1"].name = "dapi"
    assert (data.image_combo.currentText(), data.labels_combo.currentText()) == ("dapi", "nuclei")
    assert data.add_current_pair()
    assert data.layer_pairs == [(viewer.layers["dapi"], viewer.layers["nuclei"])]
    viewer.layers.remove("dapi")  # a chosen layer removed: another one is offered
    assert data.image_combo.currentText() == "cells0" and not data.layer_pairs


def test_the_annotation_widget_s_preview_layer_is_not_offered_as_labels(viewer_widget):
    """The Annotate widget's "<image> current object" layer is its uncommitted preview, never
    annotations to train on; it was offered as labels (ranked lower). Image layers are
    still offered: a mask opened as an image is told how to convert."""
    viewer, annotate = viewer_widget
    annotate.session.layers.points.add([128, 128])
    preview = annotate.session.layers.preview
    assert preview.name == "nuclei current object" and preview.data.any()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    combo = widget.train_data.labels_combo
    offered = [combo.itemText(i) for i in range(combo.count())]
    assert "nuclei annotations" in offered and "nuclei" in offered  # an Image layer
    assert preview.name not in offered
    viewer.add_labels(preview.data.copy(), name="nuclei labels")
    offered = [combo.itemText(i) for i in range(combo.count())]
    assert "nuclei labels" in offered and preview.name not in offered


def _annotation_layers(viewer, name: str):
    """The layers the annotation widget makes for image ``name`` (as it marks them)."""
    from napari_samtune._qt.image_planes import describe_image
    from napari_samtune._qt.prompt_layers import PromptLayers
    from napari_samtune.core.label_files import image_fingerprint

    image = viewer.layers[name]
    axes = describe_image(image.data.shape)
    return PromptLayers(viewer, image, axes, image_fingerprint(image.data))


def test_the_annotation_widget_s_annotations_named_with_a_number_pair_with_their_image(
    make_napari_viewer,
):
    """Where a person's layer had the name "a annotations", the widget's are
    "a annotations [1]": read by exact name only, they were offered to image "b" (holding
    objects, they outranked b's own) and b's pixels would train on a's outlines."""
    from napari_samtune.core.synthetic import make_image

    viewer = make_napari_viewer()
    viewer.add_image(make_image((64, 64), seed=0)[0], name="a")
    viewer.add_image(make_image((64, 64), seed=1)[0], name="b")
    viewer.add_points([[5.0, 5.0]], name="a annotations")  # the person's
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    a_layers, b_layers = _annotation_layers(viewer, "a"), _annotation_layers(viewer, "b")
    assert a_layers.annotations.name == "a annotations [1]"
    a_layers.annotations.data[10:20, 10:20] = 1  # b's hold none yet
    data = widget.train_data
    data.image_combo.setCurrentText("b")
    assert data.labels_combo.currentText() == b_layers.annotations.name == "b annotations"
    data.image_combo.setCurrentText("a")
    assert data.labels_combo.currentText() == "a annotations [1]"

    viewer.layers["a"].name = "z"  # marked for image "a" (now "z"), whatever the names say
    a_layers.annotations.name = "b annotations [2]"
    data.image_combo.setCurrentText("b")
    assert data.labels_combo.currentText() == "b annotations"


def test_an_image_chosen_as_its_own_labels_is_refused(finetune_on_cells, add_pair):
    """Its intensities were taken as instance ids, and a run trained on them unwarned."""
    _viewer, widget = finetune_on_cells(1)
    source = widget.train_data
    assert not add_pair(source, "cells0", "cells0")
    assert (
        "'cells0' is chosen as both the image and its labels; choose the layer holding its "
        "annotations" in source.pair_error.text()
    )
    assert add_pair(source, "cells0", "cells0 labels")


def test_removing_a_paired_layer_says_which_pairs_went(
    qtbot, finetune_on_cells, add_pair, notifications
):
    viewer, widget = finetune_on_cells(2)
    source = widget.train_data
    assert add_pair(source, "cells0", "cells0 labels") and add_pair(
        source, "cells1", "cells1 labels"
    )
    viewer.layers.remove("cells1 labels")
    assert [(i.name, lab.name) for i, lab in source.layer_pairs] == [("cells0", "cells0 labels")]
    qtbot.waitUntil(lambda: any("was removed" in note for note in notifications))
    assert any(
        "layer 'cells1 labels' was removed, and with it the training pair(s) cells1 / cells1 "
        "labels" in note
        for note in notifications
    )


def test_a_pair_snapshot_copies_only_the_annotated_planes(make_napari_viewer):
    """Start copied the whole stack (and its labels) on the main thread first: 40 x 2048 x
    2048 px with one annotated plane froze the viewer for 15 s, and a lazily read stack was
    read whole."""
    import tracemalloc

    from napari_samtune._qt.layer_pairs import layer_pairs

    viewer = make_napari_viewer()
    stack = np.random.default_rng(0).integers(0, 4000, (40, 256, 256)).astype(np.uint16)
    labels = np.zeros(stack.shape, np.uint32)
    labels[7, 20:60, 20:60] = 1
    image_layer = viewer.add_image(stack, name="stack")
    labels_layer = viewer.add_labels(labels, name="stack labels")
    tracemalloc.start()
    (pair,) = layer_pairs(image_layer, labels_layer, copy=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2e6  # one plane of each (a 128 KB image plane); the stack is 5 MB
    np.testing.assert_array_equal(pair.image, stack[7])
    assert not np.shares_memory(pair.image, stack) and not np.shares_memory(pair.labels, labels)
    stack[7] = 0  # later edits of the layers do not change the snapshot
    assert pair.image.any()


def test_validation_folders_without_channels_of_their_own_take_the_training_ones(
    finetune_on_cells, tmp_path
):
    """Left empty, validation read the files' 3 channels as RGB while channel 1 alone
    trained: the best epoch was chosen on other pixels, unsaid."""
    _, widget = finetune_on_cells(n=1)
    train, val = widget.train_data, widget.val_data
    for source in (train, val):
        source.image_dir_edit.setText(str(tmp_path / "images"))
        source.labels_dir_edit.setText(str(tmp_path / "labels"))
    train.channels_edit.setText("1")
    assert val.folder_source().channels == (1,)
    assert "training" in val.channels_edit.placeholderText()
    val.channels_edit.setText("0")  # its own, where given
    assert val.folder_source().channels == (0,)
    train.channels_edit.setText("")
    val.channels_edit.setText("")
    assert val.folder_source().channels is None


@pytest.mark.parametrize(
    ("image_shape", "labels_shape", "axis"),
    [((6, 2, 32, 32), (6, 32, 32), 1), ((32, 32, 2), (32, 32), 2)],
    ids=["ZCYX stack", "YXC image"],
)
def test_a_channel_axis_beside_the_labels_is_named_as_channels(image_shape, labels_shape, axis):
    """A (Z, C, Y, X) stack with its (Z, Y, X) labels was told to pair with labels of shape
    (6, 6, 32, 32); a 2-channel (Y, X, C) image was called a stack of 32 planes."""
    from napari.layers import Image, Labels

    from napari_samtune._qt.layer_pairs import pair_problem

    image = Image(np.zeros(image_shape, np.uint8), name="confocal")
    labels = Labels(np.ones(labels_shape, np.uint8), name="confocal labels")
    problem = pair_problem((image, labels))
    assert f"2 channels on axis {axis}" in problem and "planes" not in problem
    assert f"take(1, axis={axis})" in problem


def test_the_labels_offered_read_pixels_and_the_fingerprint_only_of_layers_that_tie(
    make_napari_viewer, monkeypatch
):
    """Every layer was ranked whole for every layer inserted, for both sources: whether it
    holds objects (a pass over its pixels) and the image's fingerprint for each marked
    layer (0.36 s per image picked in Annotate beside a 30 x 2048 x 2048 stack)."""
    from napari.layers import Image, Labels

    from napari_samtune._qt import layer_pairs
    from napari_samtune._qt.layer_pairs import is_preview_layer
    from napari_samtune.core.label_files import image_fingerprint

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="a")
    viewer.add_image(np.zeros((32, 32), np.uint8), name="b")
    a_layers, b_layers = _annotation_layers(viewer, "a"), _annotation_layers(viewer, "b")
    b_layers.annotations.data[2:5, 2:5] = 1
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="a labels")  # a sample's, empty
    a_layers.annotations.data[10:20, 10:20] = 1
    fingerprints, pixel_reads = [], []
    monkeypatch.setattr(
        layer_pairs,
        "image_fingerprint",
        lambda data: fingerprints.append(1) or image_fingerprint(data),
    )
    monkeypatch.setattr(layer_pairs, "np", _CountingNumpy(pixel_reads))
    offered = (Image, Labels)  # as the widget offers them: not the previews
    candidates = [
        layer
        for layer in viewer.layers
        if isinstance(layer, offered) and layer.name != "a" and not is_preview_layer(layer)
    ]
    best = layer_pairs.best_labels_for(viewer.layers["a"], candidates, viewer)
    assert best is a_layers.annotations  # of a's shape, its own, a Labels layer with objects
    assert len(fingerprints) <= 1 and set(pixel_reads) == {(64, 64)}


class _CountingNumpy:
    """numpy for one module, recording the shapes ``np.any`` reads."""

    def __init__(self, reads: list) -> None:
        self.reads = reads

    def any(self, array):
        self.reads.append(np.shape(array))
        return np.any(array)

    def __getattr__(self, name):
        return getattr(np, name)


def _edit_folders(source, images, labels) -> None:
    """Type ``images`` and ``labels`` into ``source``'s folder fields, as a person does."""
    source.image_dir_edit.setText(str(images))
    source.labels_dir_edit.setText(str(labels))
    source._on_folders_edited()


def test_validation_folders_of_the_training_images_are_named_as_they_are_typed(
    finetune_on_cells, tmp_path
):
    """Validating on the training images was said only at Start, once the run had read
    them."""
    _, widget = finetune_on_cells(n=1)
    train, val = widget.train_data, widget.val_data
    for name in ("images", "labels", "other"):
        (tmp_path / name).mkdir()
    _edit_folders(train, tmp_path / "images", tmp_path / "labels")
    _edit_folders(val, tmp_path / "other" / ".." / "images", tmp_path / "labels")
    assert "these are the training images" in val.folder_note.text()
    _edit_folders(val, tmp_path / "other", tmp_path / "labels")
    assert "training images" not in val.folder_note.text()
    assert "these are" not in train.folder_note.text()


def test_the_note_on_shared_images_follows_the_training_folders(finetune_on_cells, tmp_path):
    """Set (or changed) after the validation folders, the training folders left the note
    missing (or stale); an unreadable path raised instead of the folder error showing."""
    _, widget = finetune_on_cells(n=1)
    train, val = widget.train_data, widget.val_data
    for name in ("images", "labels", "other"):
        (tmp_path / name).mkdir()
    _edit_folders(val, tmp_path / "images", tmp_path / "labels")
    assert "training images" not in val.folder_note.text()
    _edit_folders(train, tmp_path / "images", tmp_path / "labels")
    assert "these are the training images" in val.folder_note.text()
    _edit_folders(train, tmp_path / "other", tmp_path / "labels")
    assert "training images" not in val.folder_note.text()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    _edit_folders(val, loop, tmp_path / "labels")
    assert val.folder_error.text().startswith("validation folders:")


def test_start_leaves_the_copy_of_the_layers_planes_to_the_worker(
    make_napari_viewer, tmp_path, monkeypatch
):
    """Start copied every annotated plane on the main thread: a 40 x 2048 x 2048 stack
    annotated on every plane froze the viewer for 1.3-7.9 s. The request views the layers;
    the worker trains on copies that what is painted later cannot change."""
    import threading
    import tracemalloc

    from napari_samtune._qt import train_run
    from napari_samtune._qt.train_run import TrainRequest, iter_training_job
    from napari_samtune.core.presets import TrainConfig

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer, machine=SMALL_CPU)
    stack = np.random.default_rng(0).integers(0, 4000, (40, 256, 256)).astype(np.uint16)
    labels = np.zeros(stack.shape, np.uint32)
    labels[:, 20:60, 20:60] = 1  # every plane annotated: all 40 are trained on
    viewer.add_image(stack, name="stack")
    viewer.add_labels(labels, name="stack labels")
    assert widget.train_data.add_current_pair()
    tracemalloc.start()
    pairs, _ = widget.train_data.snapshot()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(pairs) == 40 and peak < 1e6  # copying the planes took 15.8 MB here
    assert all(np.shares_memory(pair.labels, labels) for pair in pairs)

    trained_on = []

    def iter_train(config, train_data, *args, **kwargs):
        labels[3] = 0  # painted over once the run began
        trained_on.extend(train_data)
        yield from ()

    monkeypatch.setattr(train_run, "iter_train", iter_train)
    monkeypatch.setattr(train_run, "fetch_model_file", lambda *args: None)
    config = TrainConfig(model="random:tiny", epochs=1, mixed_precision="no")
    request = TrainRequest(config, tuple(pairs), None, (), None, tmp_path / "run", "m")
    list(iter_training_job(request, threading.Event(), lambda _progress: None, []))
    assert len(trained_on) == 40 and trained_on[3].labels.any()
    assert not any(np.shares_memory(pair.labels, labels) for pair in trained_on)
    assert not any(np.shares_memory(pair.image, stack) for pair in trained_on)
