"""Where an image encoder's time goes on a device: the stock and fast modules, each precision.

bench_embedding.py measured vit_t's fast path slower than stock ``set_image`` on an H200
(0.02-0.03 s against 0.01-0.02 s) while vit_b's was 1.4-2.7x faster. This splits the
difference (the eager variants run with ``SAMTUNE_CUDA_GRAPHS=0``): the encoder alone on a
(1, 3, 1024, 1024) input already on the device, for

* ``stock fp32`` / ``stock bf16``: the segment_anything / mobile_sam modules, without and
  with bf16 autocast;
* ``fast fp32`` / ``fast bf16``: the project's fast modules (``use_fast_paths`` +
  ``encode``), bf16 being what the Segmenter runs on bf16 hardware;
* ``fast bf16 NCHW``: the same without the channels-last input;
* on CUDA, the fast path replayed from a captured CUDA graph as ``encode`` does there
  (:mod:`napari_samtune.core.cuda_graphs`), in bf16 and fp32, and stock fp32 captured here
  (where its forward allows): the same work without the host's per-kernel launch cost;

and, per variant, how many kernels one call launches (torch.profiler, CUDA only) and the
largest difference of its embedding from ``stock fp32``'s. Variants alternate over
``--rounds`` rounds of ``--calls`` timed calls; the table shows each one's best median.

Run: ``python benchmarks/encoder_variants.py [--device cuda] [--models vit_t vit_b]``
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from bench_device import call_seconds, describe, resolve, synchronize

from napari_samtune.core.accelerate import autocast, use_fast_paths
from napari_samtune.core.architectures import build_sam
from napari_samtune.core.cuda_graphs import ENV_SWITCH, capture_graph
from napari_samtune.core.fast_encoder import encode


def variants(name: str, device: torch.device) -> dict:
    """Variant name -> a no-argument function returning the embedding (float32)."""
    torch.manual_seed(0)
    stock = build_sam(name).to(device).eval()
    torch.manual_seed(0)
    fast = use_fast_paths(build_sam(name).to(device).eval())
    torch.manual_seed(0)
    fast_fp32 = use_fast_paths(build_sam(name).to(device).eval())  # graphs: one per model
    size = stock.image_encoder.img_size
    pixels = torch.randn(1, 3, size, size, device=device)
    bf16 = torch.bfloat16

    def run(model, dtype, channels_last=True, graphs="0"):
        def call():
            os.environ[ENV_SWITCH] = graphs  # "0": eager, as measured before graphs (and as
            # training runs)
            with torch.inference_mode(), autocast(device, dtype):
                if model is stock:
                    return stock.image_encoder(pixels).float()
                if not channels_last:
                    return model.image_encoder(pixels).float()
                return encode(model, pixels, cuda_graph=True).float()

        return call

    found = {
        "stock fp32": run(stock, None),
        "stock bf16": run(stock, bf16),
        "fast fp32": run(fast, None),
        "fast bf16": run(fast, bf16),
        "fast bf16 NCHW": run(fast, bf16, channels_last=False),
    }
    if device.type == "cuda":
        found["fast bf16, graph (the Segmenter's)"] = run(fast, bf16, graphs="1")
        found["fast fp32, graph"] = run(fast_fp32, None, graphs="1")
        try:
            found["stock fp32, graph"] = captured(found["stock fp32"], device)
        except RuntimeError as error:  # SAM's ViT copies from the host in its forward
            print(f"{name}: stock fp32 cannot be captured in a CUDA graph: {error}".split("\n")[0])
    return found


def captured(fn, device: torch.device):
    """``fn`` captured into a CUDA graph as the Segmenter's are (``capture_graph``); returns
    a replay."""
    output, graph = capture_graph(fn, None, device)

    def replay():
        graph.replay()
        return output

    return replay


def kernels_per_call(fn, device: torch.device) -> int | None:
    """The number of GPU kernels one call of ``fn`` launches (None off CUDA)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def median_seconds(fn, calls: int, device: torch.device) -> float:
    return statistics.median(call_seconds(fn, calls, device))


def measure(name: str, device: torch.device, rounds: int, calls: int) -> None:
    found = variants(name, device)
    reference = found["stock fp32"]().clone()
    for fn in found.values():  # warm-up
        fn()
    synchronize(device)
    best = {key: float("inf") for key in found}
    for _ in range(rounds):
        for key, fn in found.items():
            best[key] = min(best[key], median_seconds(fn, calls, device))
    print(f"\n{name}: encoder only, 1024 x 1024 input on the device, best median of "
          f"{rounds} rounds x {calls} calls")  # fmt: skip
    print("| variant | ms | vs stock fp32 | kernels per call | max abs diff vs stock fp32 |")
    print("|---|---:|---:|---:|---:|")
    for key, fn in found.items():
        diff = (fn() - reference).abs().max().item()
        kernels = kernels_per_call(fn, device) if "graph" not in key else None
        print(f"| {key} | {1000 * best[key]:.2f} | {best['stock fp32'] / best[key]:.2f}x | "
              f"{'' if kernels is None else kernels} | {diff:.3g} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, help="timed calls per round (CPU 2, CUDA 20)")
    args = parser.parse_args()
    device = resolve(args.device)
    calls = args.calls or (20 if device.type == "cuda" else 2)
    print(f"machine: {describe(device)}")
    for name in args.models:
        measure(name, device, args.rounds, calls)


if __name__ == "__main__":
    main()
