"""Image-embedding speed: stock SamPredictor (fp32) vs the fast path, against the machine's limit.

For each architecture (vit_b, vit_t; random weights, since no pretrained weights can be
downloaded here) this prints, measured in one run on one machine:

* the encoder's FLOPs for a 1024x1024 input (torch's FlopCounterMode),
* the machine's peak: a large bf16 (and fp32) matrix product, in TFLOP/s,
* the limit = FLOPs / bf16 peak, in seconds,
* stock ``segment_anything.SamPredictor.set_image`` time in fp32,
* the fast path time (the Segmenter's encoder path: fused SDPA attention + bf16 autocast),
* ratios: fast / limit (target <= 1.6) and stock / fast (target >= 2.5),
* the lowest box-prompt IoU of fast-path masks vs fp32 masks over 3 boxes (target >= 0.98),
* median prompt -> mask latency of the Segmenter (one point, mask at 1024x1024; target <= 25 ms).

Run: ``.venv/bin/python benchmarks/bench_embedding.py [--models vit_b vit_t] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from segment_anything import SamPredictor
from torch.utils.flop_counter import FlopCounterMode

from napari_samtune.core.architectures import build_sam
from napari_samtune.core.embeddings import TileGrid, embed_tiles
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image


def timed(fn, repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` after one warm-up call, seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_tflops(dtype: torch.dtype, size: int = 4096) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    seconds = timed(lambda: a @ b, repeats=5)
    return 2 * size**3 / seconds / 1e12


def encoder_flops(encoder: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def box_masks(segmenter: Segmenter, boxes: np.ndarray) -> list[np.ndarray]:
    return [segmenter.predict(box_xyxy=b).mask for b in boxes]


def prompt_latency_ms(segmenter: Segmenter, size: int, n: int = 30) -> float:
    """Median time of one single-point prompt -> full-resolution mask, milliseconds."""
    rng = np.random.default_rng(0)
    times = []
    for _ in range(n + 3):
        point = rng.uniform(0, size, size=(1, 2))
        start = time.perf_counter()
        segmenter.predict(points_xy=point, point_labels=np.ones(1))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[3:])


def measure(name: str, image: np.ndarray, boxes: np.ndarray, repeats: int, peak: float) -> tuple:
    torch.manual_seed(0)
    stock_sam = build_sam(name)  # the stock predictor keeps its own, untouched modules
    fast_sam = build_sam(name)
    fast_sam.load_state_dict(stock_sam.state_dict())
    flops = encoder_flops(stock_sam.image_encoder, stock_sam.image_encoder.img_size)
    predictor = SamPredictor(stock_sam)
    stock = timed(lambda: predictor.set_image(image), repeats)
    fast_seg = Segmenter(fast_sam, model_id=name, use_disk_cache=False, precision="auto")
    rgb = to_sam_rgb(image)
    tiles = TileGrid.for_image(rgb.shape[:2], fast_seg.img_size, fast_seg.tiling).tiles
    fast = timed(lambda: embed_tiles(fast_sam, rgb, tiles, None, fast_seg.compute_dtype), repeats)
    fast_seg.set_image(image)
    fp32_seg = Segmenter(fast_sam, model_id=name, use_disk_cache=False, precision="fp32")
    fp32_seg.set_image(image)
    pairs = zip(box_masks(fast_seg, boxes), box_masks(fp32_seg, boxes), strict=True)
    ious = [mask_iou(a, b) for a, b in pairs]
    latency = prompt_latency_ms(fast_seg, image.shape[0])
    limit = flops / (peak * 1e12)
    return (
        name,
        f"{flops / 1e9:.0f}",
        f"{limit:.3f}",
        f"{stock:.2f}",
        f"{fast:.2f}",
        f"{fast / limit:.2f}",
        f"{stock / fast:.2f}",
        f"{min(ious):.3f}",
        f"{latency:.1f}",
    )


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_t"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak_bf16 = matmul_peak_tflops(torch.bfloat16)
    peak_fp32 = matmul_peak_tflops(torch.float32)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"peak matmul: bf16 {peak_bf16:.2f} TFLOP/s, fp32 {peak_fp32:.2f} TFLOP/s")
    image = np.stack([make_image((1024, 1024), seed=5)[0]] * 3, axis=-1)
    boxes = np.array([[100, 120, 300, 330], [500, 480, 620, 700], [700, 100, 900, 260]])
    header = (
        "model",
        "GFLOPs",
        "limit s",
        "stock fp32 s",
        "fast s",
        "fast/limit",
        "stock/fast",
        "min box IoU",
        "prompt ms",
    )
    rows = [measure(name, image, boxes, args.repeats, peak_bf16) for name in args.models]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
