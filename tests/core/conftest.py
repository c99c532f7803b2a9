"""Fixtures shared by the core tests."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tifffile

from napari_samtune.core.synthetic import make_dataset


@pytest.fixture(scope="module")
def data():
    """(training pairs, validation pairs): three and one small generated images."""
    return make_dataset(3, shape=(96, 112), seed=0), make_dataset(1, shape=(96, 96), seed=50)


@pytest.fixture
def short_tiny_config():
    """``make(**changes)``: a TrainConfig of the tiny random model for a run of seconds (one
    epoch of 2 samples, 1 object each, no corrective clicks, fp32), with ``changes``."""
    from napari_samtune.core.presets import TrainConfig

    def make(**changes) -> TrainConfig:
        settings = dict(
            model="random:tiny",
            epochs=1,
            n_objects_per_batch=1,
            min_samples_per_epoch=2,
            n_iterative_prompts=0,
            mixed_precision="no",
        )
        return TrainConfig(**{**settings, **changes})

    return make


@pytest.fixture
def frozen_tiny_config():
    """``make(**changes)``: a short frozen-encoder TrainConfig of the tiny random model (fp32,
    1 corrective click, 4 samples per epoch, no early stopping), with ``changes``."""
    from napari_samtune.core.presets import TrainConfig

    def make(**changes) -> TrainConfig:
        settings = dict(
            model="random:tiny",
            epochs=1,
            freeze=("image_encoder",),
            n_objects_per_batch=2,
            min_samples_per_epoch=4,
            n_iterative_prompts=1,
            mixed_precision="no",
            early_stopping=None,
        )
        return TrainConfig(**{**settings, **changes})

    return make


@pytest.fixture
def tiff_folders(tmp_path):
    """Three synthetic images in images/cell_<i>.tif, their labels in labels/cell_<i>_labels.tif."""
    for i, (image, labels) in enumerate(make_dataset(3, shape=(64, 80), seed=1)):
        for folder, name, array in (("images", "", image), ("labels", "_labels", labels)):
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"cell_{i}{name}.tif", array)
    return tmp_path / "images", tmp_path / "labels"


class _Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1; ``short`` paths promise more bytes than
    they send, ``cut_once[path]`` bytes of the next answer for ``path`` are sent before the
    connection drops; with ``accepts_ranges`` a ``Range: bytes=N-`` gets a 206 (416 when N is
    past the end), else every answer is a 200 with the whole file; ``stalls[path]`` bytes of
    an answer are sent, then nothing until the test ends (a server that stopped sending);
    ``silent`` paths get no answer at all until the test ends (a server that took the
    connection, then hung), ``delays[path]`` seconds pass before a path's answer."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.cut_once: dict[str, int] = {}
        self.stalls: dict[str, int] = {}
        self.silent: set[str] = set()
        self.delays: dict[str, float] = {}  # seconds before the answer to a path
        self.released = threading.Event()  # set as the test ends: stalled answers drop
        self.accepts_ranges = False
        self.requests: list[str] = []
        self.range_headers: list[str | None] = []  # the Range header of each request
        self.answers: list[tuple[int, int]] = []  # (status, body bytes sent) of each file sent
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                server.range_headers.append(self.headers.get("Range"))
                if self.path in server.silent:
                    server.released.wait(120)
                    return
                server.released.wait(server.delays.get(self.path, 0))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = server.range_start(self.headers.get("Range"))
                if start is not None and start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    server.answers.append((416, 0))
                    return
                status = 200 if start is None else 206
                self.send_response(status)
                if start is not None:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                rest = body[start or 0 :]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                sent = rest[: len(rest) // 2] if self.path in server.short else rest
                sent = sent[: server.cut_once.pop(self.path, len(sent))]
                server.answers.append((status, len(sent)))  # before the client can go on
                if self.path in server.stalls:
                    self.wfile.write(sent[: server.stalls[self.path]])
                    self.wfile.flush()
                    server.released.wait(120)
                    return
                self.wfile.write(sent)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def range_start(self, header: str | None) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        return int(match[1]) if match and self.accepts_ranges else None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    """A local HTTP server for download tests (see ``_Server``)."""
    s = _Server()
    s.thread.start()
    yield s
    s.released.set()
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(params=[True, False], ids=["bf16-kernels", "no-bf16-kernels"])
def bf16_kernels(request, monkeypatch):
    """With oneDNN's bf16 kernels, where this CPU has them (AVX-512 or AVX-NE-CONVERT), and
    without, as on an AVX2 CPU: there bf16 autocast keeps the stock modules."""
    from napari_samtune.core import onednn

    if request.param and not onednn.has_bf16_kernels():
        pytest.skip("this CPU runs no oneDNN bf16 kernels (they need AVX-512 or AVX-NE-CONVERT)")
    monkeypatch.setattr(onednn, "has_bf16_kernels", lambda: request.param)
    return request.param
