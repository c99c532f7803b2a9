"""The annotation widget when its panel or the viewer goes while it works."""

from __future__ import annotations

import threading

import numpy as np
import tifffile
from napari.utils.key_bindings import KeymapHandler

from napari_samtune._qt import annotate_jobs

WAIT_MS = 30_000


def test_closing_the_viewer_while_an_embedding_runs_raises_nothing(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, monkeypatch
):
    """pytest-qt fails the test on any exception raised in Qt's event loop."""
    from napari_samtune._qt.annotate import AnnotateWidget

    gate, started = threading.Event(), threading.Event()
    real = annotate_jobs.iter_embed_planes

    def gated(*args, **kwargs):
        started.set()
        assert gate.wait(30)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(annotate_jobs, "iter_embed_planes", gated)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    viewer.add_image(nuclei_image[0][::-1].copy(), name="other")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(tiny_sam, "tiny", "tiny-test")
    assert widget.segmenter_busy() and started.wait(30)
    worker = widget.runner.worker(annotate_jobs.EMBED_TASK)
    viewer.close()
    gate.set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    qtbot.wait(200)  # the worker's queued signals arrive
    assert not widget.runner.is_running()


def test_closing_the_panel_stops_the_widget_and_keeps_its_commits(
    make_napari_viewer, qtbot, tiny_sam, nuclei_image, drain_jobs, tmp_path
):
    """napari's close button on the panel sends the widget no close event; still its keys
    must stop committing, and what it committed is on disk."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-samtune", "Annotate with SAM")
    widget.ui.folder_edit.setText(str(tmp_path))
    with qtbot.waitSignal(widget.embedding_ready, timeout=WAIT_MS):
        widget.set_model(tiny_sam, "tiny", "tiny-test")
    drain_jobs(widget)
    points = widget.session.layers.points
    points.add([128, 128])
    assert widget.commit() == [1]
    dock.destroyOnClose()  # what the panel's close button does
    drain_jobs(widget)
    assert widget.session is None
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "nuclei.labels.tif"), viewer.layers["nuclei annotations"].data
    )
    points.add([40, 200])
    for provider in (viewer, points):
        keys = KeymapHandler()
        keys.keymap_providers = [provider]
        keys.press_key("C")
    assert viewer.layers["nuclei annotations"].data.max() == 1  # nothing more committed
    viewer.add_image(nuclei_image[0], name="later")  # no longer followed
    viewer.layers["later"].name = "renamed"
    assert widget.ui.image_combo.count() == 1


def test_a_damaged_cached_download_moved_aside_is_told_in_napari(
    viewer_widget, tmp_path, tiny_checkpoint, monkeypatch, run_job, notifications
):
    """The download logs the move (napari shows no log records): the widget shows it."""
    import functools
    import hashlib
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from napari_samtune._qt.annotate_jobs import LOAD_TASK
    from napari_samtune.core import registry

    served = tmp_path / "served"
    served.mkdir()
    data = tiny_checkpoint.read_bytes()
    (served / "tiny_pub.pt").write_bytes(data)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny_pub.pt"
        file_hash = "sha256:" + hashlib.sha256(data).hexdigest()
        spec = registry.ModelSpec("tiny_pub", "tiny", "tiny_pub.pt", url, file_hash, "", "test")
        monkeypatch.setattr(registry, "BUILTIN_MODELS", (spec,))
        cached = registry.models_cache_dir() / "tiny_pub.pt"
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(b"half a download")  # damaged: another hash
        _, widget = viewer_widget
        widget.refresh_models()
        widget.select_model("tiny_pub")
        run_job(widget, widget.load_model, LOAD_TASK)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert widget.model_name == "tiny_pub" and cached.read_bytes() == data
    aside = cached.with_name("tiny_pub.pt.wrong-hash")
    assert aside.read_bytes() == b"half a download"
    warnings = [str(n.message) for n in notifications if n.severity == "warning"]
    assert any(f"moved to {aside}" in m and "downloaded from" in m for m in warnings)


def test_layers_removed_together_attach_no_image_on_the_way(viewer_widget, qtbot, nuclei_image):
    """Removing the annotated image chose the next image at once, building its prompt
    layers, which the same batch removal then removed, and so on through the list."""
    viewer, widget = viewer_widget
    for name in ("second", "third"):
        viewer.add_image(nuclei_image[0][::-1].copy(), name=name)
    inserted = []
    viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value.name))
    viewer.layers.selection = {viewer.layers["nuclei"], viewer.layers["second"]}
    viewer.layers.remove_selected()  # what select + Delete in the layer list does
    assert inserted == [] and widget.session is None
    qtbot.waitUntil(lambda: widget.session is not None, timeout=WAIT_MS)
    assert widget.session.image_layer.name == "third"
    assert widget.ui.image_combo.currentText() == "third"
    assert all(name.startswith("third") for name in inserted)


def test_removing_the_image_says_what_happens_next(
    viewer_widget, qtbot, nuclei_image, notifications
):
    """It said 'pick the image again to go on', which a removed image cannot be."""
    viewer, widget = viewer_widget
    viewer.add_image(nuclei_image[0][::-1].copy(), name="second")
    viewer.layers.remove("nuclei")
    qtbot.waitUntil(lambda: widget.session is not None, timeout=WAIT_MS)
    assert widget.session.image_layer.name == "second"
    assert "nuclei annotations" in viewer.layers
    removed = [n for n in notifications if "'nuclei' was removed" in n]
    assert len(removed) == 1 and "pick the image again" not in removed[0]
    assert "goes on with the image chosen under Image" in removed[0]


def test_closing_the_viewer_says_nothing_of_removed_layers(viewer_widget, qtbot, notifications):
    """viewer.close() removes every layer, its top one (the points) first: the widget told
    of 'layer ... points was removed: pick the image again' to a viewer going away."""
    viewer, widget = viewer_widget
    assert widget.session is not None
    viewer.layers.clear()  # what viewer.close() does before the window goes
    qtbot.wait(50)
    assert widget.session is None
    assert not any("was removed" in n for n in notifications)


def test_removing_one_prompt_layer_is_said_once_the_event_loop_turns(
    viewer_widget, qtbot, notifications
):
    viewer, widget = viewer_widget
    points = widget.session.layers.points.name
    viewer.layers.remove(points)
    assert widget.session is None
    qtbot.waitUntil(lambda: any("was removed" in n for n in notifications), timeout=WAIT_MS)
    (said,) = [n for n in notifications if "was removed" in n]
    assert said == f"layer {points!r} was removed: pick the image again to go on"


def test_an_image_removed_and_opened_again_continues_its_annotations_layer(
    viewer_widget, qtbot, nuclei_image, drain_jobs, notifications
):
    """The widget's layers are marked with their image's layer; the image opened again is
    a new layer: its fingerprint finds the annotations layer left in the viewer (not a new
    "nuclei annotations [1]" beside it)."""
    viewer, widget = viewer_widget
    widget.session.layers.points.add([128, 128])
    assert widget.commit() == [1]
    drain_jobs(widget)
    annotations = widget.session.layers.annotations
    viewer.add_image(nuclei_image[0][::-1].copy(), name="second")
    viewer.layers.remove("nuclei")
    qtbot.waitUntil(lambda: widget.session is not None, timeout=WAIT_MS)
    viewer.add_image(nuclei_image[0], name="nuclei")
    widget.ui.image_combo.setCurrentText("nuclei")
    drain_jobs(widget)
    assert widget.session.image_layer.name == "nuclei"
    assert widget.session.layers.annotations is annotations
    assert "nuclei annotations [1]" not in viewer.layers
