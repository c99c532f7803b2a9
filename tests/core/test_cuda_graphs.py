"""The CUDA-graph cache's logic, on the CPU (the real capture runs in
benchmarks/cuda_checks.py): which calls replay, when a graph is captured again, and the
eager fallback where capture is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samtune.core import cuda_graphs
from napari_samtune.core.architectures import build_sam
from napari_samtune.core.fast_encoder import encode


class FakeGraph:
    """Stands in for a captured graph: replay recomputes the recorded call into its output."""

    def __init__(self, call, output):
        self.call, self.output, self.replays = call, output, 0

    def replay(self):
        self.replays += 1
        self.output.copy_(self.call())


@pytest.fixture
def recorded(monkeypatch):
    """Replace the CUDA capture by FakeGraph; returns the list of graphs 'captured'."""
    graphs = []

    def record(call, autocast_dtype, device):
        output = call()
        graphs.append(FakeGraph(call, output))
        return output, graphs[-1]

    monkeypatch.setattr(cuda_graphs, "capture_graph", record)
    yield graphs
    cuda_graphs.forget_graphs()


def test_repeated_calls_replay_one_graph_and_return_fresh_tensors(recorded):
    encoder = torch.nn.Conv2d(3, 4, 3)
    first, second = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out_first = cuda_graphs.graphed_encoder_call(encoder, first)
        out_second = cuda_graphs.graphed_encoder_call(encoder, second)
        torch.testing.assert_close(out_first, encoder(first))  # not overwritten by the replay
        torch.testing.assert_close(out_second, encoder(second))
    assert len(recorded) == 1 and recorded[0].replays == 2


def test_a_new_shape_or_moved_weights_capture_again_in_place_updates_do_not(recorded):
    encoder = torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        cuda_graphs.graphed_encoder_call(encoder, torch.randn(1, 3, 8, 8))
        encoder.weight.add_(1.0)  # in place: the same graph reads the new values
        cuda_graphs.graphed_encoder_call(encoder, torch.randn(1, 3, 8, 8))
        assert len(recorded) == 1
        cuda_graphs.graphed_encoder_call(encoder, torch.randn(1, 3, 16, 16))
        assert len(recorded) == 2
        encoder.weight = torch.nn.Parameter(encoder.weight.clone())  # elsewhere in memory
        x = torch.randn(1, 3, 16, 16)
        torch.testing.assert_close(cuda_graphs.graphed_encoder_call(encoder, x), encoder(x))
    assert len(recorded) == 3
    assert len(cuda_graphs._captured) == 1  # one graph per encoder: the old one is freed


def test_a_refused_capture_warns_once_and_runs_eager(monkeypatch):
    attempts = []

    def refuse(call, autocast_dtype, device):
        attempts.append(1)
        raise RuntimeError("Cannot copy between CPU and CUDA tensors during capture\nmore")

    monkeypatch.setattr(cuda_graphs, "capture_graph", refuse)
    encoder = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    try:
        with torch.no_grad():
            with pytest.warns(RuntimeWarning, match="without a CUDA graph.*Cannot copy"):
                out = cuda_graphs.graphed_encoder_call(encoder, x)
            torch.testing.assert_close(out, encoder(x))
            torch.testing.assert_close(cuda_graphs.graphed_encoder_call(encoder, x), encoder(x))
    finally:
        cuda_graphs.forget_graphs()
    assert len(attempts) == 1  # the refusal is remembered


def test_graphs_are_for_cuda_inference_only(monkeypatch):
    encoder = torch.nn.Conv2d(3, 4, 3).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert not cuda_graphs.graphs_wanted(encoder, x)  # a CPU tensor
    # The other conditions, with the device check answered yes:
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with torch.no_grad():
        assert cuda_graphs.graphs_wanted(encoder, x)
        monkeypatch.setenv(cuda_graphs.ENV_SWITCH, "0")
        assert not cuda_graphs.graphs_wanted(encoder, x)
        monkeypatch.delenv(cuda_graphs.ENV_SWITCH)
        assert not cuda_graphs.graphs_wanted(encoder.train(), x)
    assert not cuda_graphs.graphs_wanted(encoder.eval(), x)  # with gradients: training


def test_encode_on_the_cpu_never_captures(recorded):
    sam = build_sam("tiny").eval()
    pixels = torch.randn(1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size)
    with torch.inference_mode():
        graphed = encode(sam, pixels, cuda_graph=True)
        torch.testing.assert_close(graphed, sam.image_encoder(pixels))
    assert recorded == []


def test_only_the_embedding_path_asks_for_a_graph(monkeypatch):
    """Embedding an image asks for one; training (whose memory was measured without the
    graph's pool) does not."""
    from napari_samtune.core import embeddings, fast_encoder

    asked = []
    monkeypatch.setattr(fast_encoder, "graphs_wanted", lambda e, p: asked.append(1) or False)
    sam = build_sam("tiny").eval()
    size = sam.image_encoder.img_size
    with torch.no_grad():
        encode(sam, torch.randn(1, 3, size, size))
    assert asked == []
    tile = embeddings.TileGrid.for_image((size, size), size, None).tiles[0]
    embeddings.embed_view(sam, np.zeros((size, size, 3), np.uint8), tile)
    assert asked == [1]
