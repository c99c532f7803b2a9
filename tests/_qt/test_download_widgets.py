"""Model downloads that the widgets start: progress in bytes and percent, Cancel / Stop, and
closing the panel or the viewer stop them; what arrived is kept and the next load resumes.

A local HTTP server trickles the file (small pieces, a pause between them) so that a test
can act mid-download; it notes when the client drops the connection. The built-in model
list is replaced by one model served from it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_samtune._qt.downloads import download_text, size_text
from napari_samtune.core import fetch, registry
from napari_samtune.core.fetch import partial_path

WAIT_MS = 30_000
PIECE = 4096  # bytes the server sends at a time, and the client reads at a time
SLOW_S = 0.05  # pause between pieces while a test acts mid-download


class _TrickleServer:
    """Serves ``payload`` at /m.pt in pieces with ``delay`` seconds between them, answering
    ``Range: bytes=N-`` with a 206; ``dropped`` is set when the client closes mid-file."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.delay = payload, SLOW_S
        self.ranges: list[str | None] = []
        self.dropped = threading.Event()
        self.answering = threading.Event()  # cleared: a request is taken and not answered
        self.answering.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                header = self.headers.get("Range")
                server.ranges.append(header)
                server.answering.wait(WAIT_MS / 1000)
                match = re.fullmatch(r"bytes=(\d+)-", header or "")
                start = int(match[1]) if match else 0
                self.send_response(206 if match else 200)
                if match:
                    total = len(server.payload)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                self.send_header("Content-Length", str(len(server.payload) - start))
                self.end_headers()
                server.send(self.wfile, start)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def send(self, out, start: int) -> None:
        try:
            for offset in range(start, len(self.payload), PIECE):
                out.write(self.payload[offset : offset + PIECE])
                out.flush()
                time.sleep(self.delay)
        except (BrokenPipeError, ConnectionResetError):
            self.dropped.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/m.pt"


@pytest.fixture
def served_model(monkeypatch, tiny_checkpoint):
    """The tiny model published as built-in model "tiny_pub" on a trickling local server:
    ``(server, path of the cached file)``."""
    payload = tiny_checkpoint.read_bytes()
    server = _TrickleServer(payload)
    file_hash = "sha256:" + hashlib.sha256(payload).hexdigest()
    spec = registry.ModelSpec("tiny_pub", "tiny", "tiny_pub.pt", server.url, file_hash, "", "test")
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (spec,))
    monkeypatch.setattr(fetch, "CHUNK_SIZE", PIECE)  # progress after every piece
    yield server, registry.models_cache_dir() / "tiny_pub.pt"
    server.delay = 0  # a download left running (a failed test) ends at once
    server.answering.set()
    server.httpd.shutdown()
    server.httpd.server_close()


def _downloading(qtbot, label) -> None:
    qtbot.waitUntil(lambda: "downloading tiny_pub" in label.text(), timeout=WAIT_MS)


def _kept_bytes(cached) -> int:
    part = partial_path(cached)
    return part.stat().st_size if part.is_file() else 0


def _annotate_loading(qtbot, viewer_widget, served_model):
    _, widget = viewer_widget
    widget.refresh_models()
    widget.select_model("tiny_pub")
    worker = widget.load_model()
    _downloading(qtbot, widget.ui.status_label)
    return widget, worker


def test_download_text_says_bytes_and_percent():
    assert download_text("vit_h", 1_234_000_000, 2_564_550_879) == (
        "downloading vit_h: 1.2 / 2.6 GB (48%)"
    )
    assert download_text("m", 300_000, 1_500_000) == "downloading m: 0.3 / 1.5 MB (20%)"
    assert download_text("m", 12_345, None) == "downloading m: 12 kB"
    assert size_text(999) == "999 B"


def test_annotate_shows_download_progress_in_bytes_and_percent(
    qtbot, viewer_widget, served_model, drain_jobs
):
    server, cached = served_model
    widget, _ = _annotate_loading(qtbot, viewer_widget, served_model)
    total = len(server.payload)
    text = widget.ui.status_label.text()
    assert re.fullmatch(rf"downloading tiny_pub: [\d.]+ / {size_text(total)} \(\d+%\)", text)
    bar = widget.ui.progress_bar
    assert not bar.isHidden() and bar.maximum() == total // 1000 and bar.value() <= bar.maximum()
    assert widget.ui.cancel_load_button.isEnabled()
    server.delay = 0
    drain_jobs(widget)
    assert widget.model_name == "tiny_pub" and cached.read_bytes() == server.payload
    assert not widget.ui.cancel_load_button.isEnabled()


def test_annotate_cancel_stops_the_download_and_the_next_load_resumes(
    qtbot, viewer_widget, served_model, drain_jobs, notifications
):
    server, cached = served_model
    widget, _ = _annotate_loading(qtbot, viewer_widget, served_model)
    widget.ui.cancel_load_button.click()
    drain_jobs(widget)
    assert server.dropped.wait(10)
    kept = _kept_bytes(cached)
    assert 0 < kept < len(server.payload) and not cached.exists()
    assert widget.model_name == "tiny" and widget.segmenter is not None  # still usable
    assert "tiny_pub: cancelled; Load model resumes" in widget.ui.model_label.text()
    assert [n for n in notifications if n.severity == "error"] == []
    said = [n for n in notifications if "loading model stopped" in n]
    assert len(said) == 1 and f"{kept} bytes received are kept in" in said[0]
    server.delay = 0
    widget.load_model()
    drain_jobs(widget)
    assert server.ranges[-1] == f"bytes={kept}-"
    assert widget.model_name == "tiny_pub" and cached.read_bytes() == server.payload


def test_a_cancel_before_any_byte_arrived_promises_no_resume(
    qtbot, viewer_widget, served_model, drain_jobs
):
    """The label said "Load model resumes the download" after every cancelled load, also
    where nothing had arrived and nothing was kept."""
    server, cached = served_model
    server.answering.clear()
    _, widget = viewer_widget
    widget.refresh_models()
    widget.select_model("tiny_pub")
    widget.load_model()
    qtbot.waitUntil(lambda: len(server.ranges) == 1, timeout=WAIT_MS)
    widget.ui.cancel_load_button.click()
    drain_jobs(widget)
    assert _kept_bytes(cached) == 0 and widget.model_name == "tiny"
    assert widget.ui.model_label.text().endswith("(tiny_pub: cancelled)")


def _stopped_keeping_a_part(qtbot, served_model, ended) -> None:
    """The server saw the download dropped, the job ``ended()``, and what arrived is kept
    for the next download to resume."""
    server, cached = served_model
    assert server.dropped.wait(10)
    qtbot.waitUntil(ended, timeout=WAIT_MS)
    assert 0 < _kept_bytes(cached) < len(server.payload)


def test_closing_the_annotate_panel_stops_the_download(
    qtbot, viewer_widget, served_model, drain_jobs
):
    widget, worker = _annotate_loading(qtbot, viewer_widget, served_model)
    viewer, _ = viewer_widget
    viewer.window.remove_dock_widget(widget)  # what the panel's close button does
    _stopped_keeping_a_part(qtbot, served_model, lambda: not worker.is_running)


def test_closing_the_viewer_stops_the_download(
    qtbot, make_napari_viewer, nuclei_image, served_model
):
    from napari_samtune._qt.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[0], name="nuclei")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.select_model("tiny_pub")
    worker = widget.load_model()
    _downloading(qtbot, widget.ui.status_label)
    viewer.close()  # returns at once: nothing waits for the download
    _stopped_keeping_a_part(qtbot, served_model, lambda: not worker.is_running)


@pytest.fixture
def train_widget(qtbot, cells_viewer, served_model, add_pair):
    """A Finetune widget on two layer pairs with "tiny_pub" chosen, runs as short as can be."""
    from napari_samtune._qt.train_widget import TrainWidget
    from napari_samtune.core.presets import MachineResources

    viewer = cells_viewer(2, 64)
    machine = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=8, gpu_name=None)
    widget = TrainWidget(viewer, machine=machine)
    viewer.window.add_dock_widget(widget, name="Finetune SAM")
    for i in range(2):
        assert add_pair(widget.train_data, f"cells{i}", f"cells{i} labels")
    settings = widget.settings
    settings.model_picker.refresh_models()
    settings.model_picker.select_model("tiny_pub")
    qtbot.waitUntil(lambda: settings.architecture() is not None, timeout=WAIT_MS)
    settings.epochs_spin.setValue(1)
    settings.samples_spin.setValue(2)
    settings.objects_spin.setValue(2)
    settings.freeze_checks["image_encoder"].setChecked(True)
    yield viewer, widget
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)


def test_training_shows_the_download_and_stop_stops_it(
    qtbot, train_widget, served_model, notifications
):
    server, cached = served_model
    viewer, widget = train_widget
    assert widget.start() is not None
    _downloading(qtbot, widget.status_label)
    total = len(server.payload)
    assert f"/ {size_text(total)} (" in widget.status_label.text()
    assert widget.progress_bar.maximum() == total // 1000
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert server.dropped.wait(10)
    kept = _kept_bytes(cached)
    assert 0 < kept < total and widget.start_button.isEnabled()
    assert widget.result_label.text().startswith("stopped before training began")
    assert f"{kept} bytes received are kept" in widget.result_label.text()
    assert [n for n in notifications if n.severity == "error"] == []
    server.delay = 0
    with qtbot.waitSignal(widget.training_finished, timeout=120_000):
        assert widget.start() is not None
    assert server.ranges[-1] == f"bytes={kept}-" and cached.read_bytes() == server.payload
    assert widget.result.epochs_done == 1 and not widget.result.stopped_by_user


def test_closing_the_finetune_panel_stops_the_download(qtbot, train_widget, served_model):
    viewer, widget = train_widget
    assert widget.start() is not None
    _downloading(qtbot, widget.status_label)
    viewer.window.remove_dock_widget(widget)
    _stopped_keeping_a_part(qtbot, served_model, lambda: not widget.is_running)


def test_training_shows_that_a_damaged_cached_model_was_moved_aside(
    qtbot, train_widget, served_model, notifications
):
    """The Annotate widget showed it; Finetune only logged it, which napari does not show."""
    server, cached = served_model
    viewer, widget = train_widget
    server.delay = 0
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"half a download")  # damaged: another hash
    with qtbot.waitSignal(widget.training_started, timeout=120_000):
        assert widget.start() is not None
    aside = cached.with_name("tiny_pub.pt.wrong-hash")
    assert aside.read_bytes() == b"half a download" and cached.read_bytes() == server.payload
    warnings = [str(n.message) for n in notifications if n.severity == "warning"]
    assert sum(f"moved to {aside}" in m and "downloaded from" in m for m in warnings) == 1
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    after = [str(n.message) for n in notifications if n.severity == "warning"]
    assert sum(f"moved to {aside}" in m for m in after) == 1  # once, not again at the end
