"""Image-embedding speed: stock SamPredictor (fp32) vs the fast path, against the machine's limit.

For each architecture (vit_b, vit_t; random weights, since no pretrained weights can be
downloaded here) this prints, measured in one run on one machine:

* the encoder's FLOPs for a 1024x1024 input (torch's FlopCounterMode),
* the machine's peak: a large bf16 (and fp32) matrix product, in TFLOP/s,
* the limit = FLOPs / bf16 peak, in seconds,
* stock ``segment_anything.SamPredictor.set_image`` time in fp32,
* the fast path time (fused SDPA attention + bf16 encoder weights),
* ratios: fast / limit (target <= 1.6) and stock / fast (target >= 2.5),
* box-prompt IoU of fast-path masks vs fp32 masks (target >= 0.98),
* median prompt -> mask latency (one point, upscaled to 1024x1024; target <= 25 ms).

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

from napari_samtune.core.accelerate import use_fast_attention, use_stock_attention
from napari_samtune.core.architectures import build_sam
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


def box_iou_fast_vs_fp32(sam, image: np.ndarray, boxes: np.ndarray, fast_encoder) -> float:
    """Mean IoU of box-prompted masks from fast-path embeddings vs fp32 embeddings."""
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    reference = [predictor.predict(box=b, multimask_output=False)[0][0] for b in boxes]
    with torch.inference_mode():
        features = fast_encoder(predictor.input_image_tensor(image)).float()
    predictor.features = features
    fast = [predictor.predict(box=b, multimask_output=False)[0][0] for b in boxes]
    ious = [(r & f).sum() / max((r | f).sum(), 1) for r, f in zip(reference, fast)]
    return float(np.mean(ious))


def prompt_latency_ms(sam, image: np.ndarray, n: int = 30) -> float:
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(n):
        point = rng.uniform(0, image.shape[0], size=(1, 2))
        start = time.perf_counter()
        predictor.predict(point_coords=point, point_labels=np.ones(1), multimask_output=False)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_t"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak_bf16 = matmul_peak_tflops(torch.bfloat16)
    peak_fp32 = matmul_peak_tflops(torch.float32)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"peak matmul: bf16 {peak_bf16:.2f} TFLOP/s, fp32 {peak_fp32:.2f} TFLOP/s")
    image = np.stack([make_image((1024, 1024), seed=5)[0]] * 3, axis=-1)
    boxes = np.array([[100, 120, 300, 330], [500, 480, 620, 700], [700, 100, 900, 260]])
    header = ("model", "GFLOPs", "limit s", "stock fp32 s", "fast s", "fast/limit", "stock/fast",
              "box IoU", "prompt ms")
    rows = []
    for name in args.models:
        sam = build_sam(name)
        flops = encoder_flops(sam.image_encoder, sam.image_encoder.img_size)
        predictor = SamPredictor(sam)
        use_stock_attention(sam)
        stock = timed(lambda: predictor.set_image(image), args.repeats)
        fast_encoder = use_fast_attention(build_sam(name)).image_encoder
        fast_encoder.load_state_dict(sam.image_encoder.state_dict())
        fast_encoder = fast_encoder.to(torch.bfloat16)
        x = predictor.input_image_tensor(image) if hasattr(predictor, "input_image_tensor") else None
        fast = timed(lambda: fast_encoder(x.to(torch.bfloat16)), args.repeats)
        limit = flops / (peak_bf16 * 1e12)
        iou = box_iou_fast_vs_fp32(sam, image, boxes, lambda t: fast_encoder(t.to(torch.bfloat16)))
        latency = prompt_latency_ms(sam, image)
        rows.append((name, f"{flops / 1e9:.0f}", f"{limit:.3f}", f"{stock:.2f}", f"{fast:.2f}",
                     f"{fast / limit:.2f}", f"{stock / fast:.2f}", f"{iou:.3f}", f"{latency:.1f}"))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
