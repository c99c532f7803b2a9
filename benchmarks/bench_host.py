"""Host (CPU) work of one training step, which a GPU step waits for: before and after.

On an H200 (docs/gpu/h200-2026-12-04-train.txt) a training step took 0.15-0.40 s whatever
the model (vit_t or vit_b, stock loop or fast) and grew with the objects per patch: the
GPU waited for the host. Two parts of a step's host work grow with the objects:

* the low-res targets: the stock way makes every object's full-size mask as float32 on the
  host (200 MB at 50 objects of a 1024 x 1024 patch), copies it to the device and averages
  4 x 4 blocks there; the project's ``train_step.lowres_targets`` computes only the blocks
  of each object's bounding box;
* the corrective clicks (``n_iterative_prompts`` per step, 2 in every preset): the stock way
  labels the error regions of each object on the whole 256 x 256 low-res grid; the
  project's ``prompts.corrective_point`` works on the box of prediction | target.

Both give identical results (tests/core/test_host_prep.py). Measured here on the CPU, for the
objects per patch of the presets (cpu-16gb 5, cpu-32gb 10, rtx5000 20, v100 45, a100 50), on
crowded 1024 x 1024 synthetic patches (40-60 objects, as bench_train.py's), with predictions
that miss each object by a few pixels (as a model in training does) and, as the worst case,
random logits. Best of ``--repeats`` runs each, in one process.

Run: ``.venv/bin/python benchmarks/bench_host.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_samtune.core.prompts import corrective_points, largest_error_click
from napari_samtune.core.synthetic import SyntheticStyle, make_image
from napari_samtune.core.train_step import LOWRES_FACTOR, lowres_targets

OBJECT_COUNTS = (5, 10, 20, 45, 50)
IMG_SIZE = 1024


def stock_targets(labels, object_ids, input_size, img_size, device) -> torch.Tensor:
    """The straightforward low-res targets: full-size float masks, resized, padded, pooled."""
    masks = labels[None] == np.asarray(object_ids, dtype=labels.dtype)[:, None, None]
    return stock_targets_of_masks(masks, input_size, img_size, device)


def stock_targets_of_masks(masks, input_size, img_size, device) -> torch.Tensor:
    """:func:`stock_targets` of bool (n, h, w) masks made already."""
    targets = torch.as_tensor(masks[:, None], dtype=torch.float32, device=device)
    if input_size != masks.shape[1:]:
        targets = F.interpolate(targets, input_size, mode="bilinear", align_corners=False)
    targets = F.pad(targets, (0, img_size - input_size[1], 0, img_size - input_size[0]))
    return F.avg_pool2d(targets, LOWRES_FACTOR)


def stock_corrective_point(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int]:
    """The straightforward corrective click: error regions labelled on the whole grid."""
    return largest_error_click(prediction.astype(bool), target.astype(bool))


def stock_corrective_points(predictions, targets):
    results = [stock_corrective_point(p, t) for p, t in zip(predictions, targets, strict=True)]
    return np.array([r[0] for r in results]).reshape(-1, 2), np.array([r[1] for r in results])


def crowded_patch(seed: int = 0) -> np.ndarray:
    _, labels = make_image((IMG_SIZE, IMG_SIZE), SyntheticStyle(n_objects=(40, 60)), seed)
    return labels


def near_miss(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Predictions that miss each object by a few pixels: shifted, grown or shrunk."""
    out = np.empty_like(truth)
    for k, mask in enumerate(truth):
        shifted = np.roll(mask, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        grow = int(rng.integers(-1, 2))
        if grow > 0:
            shifted = ndimage.binary_dilation(shifted, iterations=grow)
        elif grow < 0:
            shifted = ndimage.binary_erosion(shifted)
        out[k] = shifted
    return out


def best_of(repeats: int, fn, *args) -> float:
    """Best wall time of ``fn(*args)`` over ``repeats`` calls, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def two_passes(clicks, predictions: np.ndarray, truth: np.ndarray) -> None:
    """The corrective clicks of one step: ``n_iterative_prompts`` = 2 in every preset."""
    for _ in range(2):
        clicks(predictions, truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    labels = crowded_patch()
    ids_all = np.unique(labels)[1:]
    rng = np.random.default_rng(0)
    side = IMG_SIZE // LOWRES_FACTOR
    cpu = torch.device("cpu")
    shape = (IMG_SIZE, IMG_SIZE)
    print(f"crowded {IMG_SIZE} x {IMG_SIZE} patch with {len(ids_all)} objects; "
          f"{torch.get_num_threads()} torch threads; ms, best of {args.repeats}")  # fmt: skip
    header = ("objects", "targets stock", "targets", "ratio", "2 clicks stock", "2 clicks",
              "ratio", "random logits: stock", "new", "ratio")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for count in OBJECT_COUNTS:
        ids = rng.choice(ids_all, size=min(count, len(ids_all)), replace=False)
        targets_args = (labels, ids, shape, IMG_SIZE, cpu)
        old_t = best_of(args.repeats, stock_targets, *targets_args)
        new_t = best_of(args.repeats, lowres_targets, *targets_args)
        truth = (lowres_targets(labels, ids, shape, IMG_SIZE, cpu)[:, 0] > 0.5).numpy()
        guess = near_miss(truth, rng)
        noise = rng.random((len(ids), side, side)) > 0.5
        row = [str(len(ids)), f"{old_t * 1e3:.1f}", f"{new_t * 1e3:.1f}", f"{old_t / new_t:.1f}x"]
        for prediction in (guess, noise):
            old_c = best_of(args.repeats, two_passes, stock_corrective_points, prediction, truth)
            new_c = best_of(args.repeats, two_passes, corrective_points, prediction, truth)
            row += [f"{old_c * 1e3:.1f}", f"{new_c * 1e3:.1f}", f"{old_c / new_c:.1f}x"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
