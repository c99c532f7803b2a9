"""Decoding speed: the low-rank inference decoder against the plain fused decoder, and automatic
segmentation with and without skipping the points that have no confident candidate.

On one synthetic image, in one process, old and new alternate (medians of each and of the
per-pair ratios):

* prompt decoding (prompt encoder + mask decoder to low-res logits) of 1 point (one mask), 16
  points (one mask each) and 64 points (three masks each, as automatic segmentation decodes
  them): the Segmenter's low-rank path against the plain fused decoder on the same projected
  first layer, with the largest logit difference relative to the largest logit;
* automatic segmentation (with the packaged nano model's trained weights, ``--auto-model``,
  and its automatic settings: random weights find no object, and two empty label images are
  equal whatever the paths do): the Segmenter's, which upscales only the masks of points with
  a candidate above the predicted-IoU threshold, against one that upscales every point's
  masks, and whether their labels are equal.

Batches of points run with the batch allocator settings, as the Segmenter runs them.

Run: ``.venv/bin/python benchmarks/bench_decoder.py [--model random:vit_t] [--auto-model nano]
[--size 1024]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from dataclasses import replace
from unittest.mock import patch

import numpy as np
import torch

from napari_samtune.core import fast_decoder
from napari_samtune.core.automatic import default_auto_config
from napari_samtune.core.fast_decoder import decode_prompts, decoder_image
from napari_samtune.core.heap import keep_freed_memory
from napari_samtune.core.model_source import load_base_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

CASES = (("1 point", 1, False), ("16 points", 16, False), ("64 points x 3 masks", 64, True))


def make_segmenter(model: str, size: int) -> Segmenter:
    sam, _, _ = load_base_model(model, seed=0)
    segmenter = Segmenter(sam, model_id=model, device=torch.device("cpu"), use_disk_cache=False)
    image = make_image((size, size), seed=5)[0]
    segmenter.set_image(np.stack([image] * 3, axis=-1))
    return segmenter


def _paired(run_new, run_old, repeats: int) -> dict:
    """Median seconds of each and of the per-pair ratios new / old, alternating the order."""
    times = {"new": [], "old": []}
    ratios = []
    for index in range(repeats + 1):
        order = (("new", run_new), ("old", run_old))
        pair = {}
        for name, run in order if index % 2 else order[::-1]:
            start = time.perf_counter()
            run()
            pair[name] = time.perf_counter() - start
        if index:  # the first pair warms both up
            for name, seconds in pair.items():
                times[name].append(seconds)
            ratios.append(pair["new"] / pair["old"])
    return {
        "new_s": statistics.median(times["new"]),
        "old_s": statistics.median(times["old"]),
        "ratio": statistics.median(ratios),
    }


def decode_rows(segmenter: Segmenter, repeats: int) -> list[dict]:
    """The low-rank decoder against the plain one, per case of :data:`CASES`."""
    sam, size = segmenter.model, segmenter.img_size
    # the low-rank projections at any embedding size, the Segmenter's threshold aside
    with torch.inference_mode(), patch.object(fast_decoder, "LOW_RANK_MIN_TOKENS", 0):
        low_rank = decoder_image(sam, segmenter.features(0), project_first_layer=True)
    plain = replace(low_rank, first_layer=replace(low_rank.first_layer, low_rank=None))
    rng = np.random.default_rng(0)
    rows = []
    for name, n, multimask in CASES:
        points = torch.tensor(rng.uniform(0, size, (n, 1, 2)), dtype=torch.float32)
        labels = torch.ones(n, 1, dtype=torch.int64)

        def run(image, points=points, labels=labels, multimask=multimask):
            with torch.inference_mode():
                return decode_prompts(sam, image, points, labels, None, None, multimask)[0]

        with keep_freed_memory() if n > 1 else nullcontext():
            row = _paired(lambda: run(low_rank), lambda: run(plain), repeats)
            new, old = run(low_rank), run(plain)
        error = ((new - old).abs().max() / old.abs().max()).item()
        rows.append({"case": name, "max_rel_diff": error, **row})
    return rows


def automatic_row(segmenter: Segmenter, repeats: int) -> dict:
    """Automatic segmentation, skipping unconfident points (new) or not (old)."""
    labels = {}
    decode = segmenter.decode

    def every_point(*args, min_iou=None, **kwargs):  # upscale every point's masks
        return decode(*args, **kwargs)

    def run(name):
        if name == "old":
            segmenter.decode = every_point
        try:
            labels[name] = segmenter.segment_all(default_auto_config(segmenter.img_size))
        finally:
            vars(segmenter).pop("decode", None)

    row = _paired(lambda: run("new"), lambda: run("old"), repeats)
    return {
        **row,
        "objects": int(labels["new"].max()),
        "equal": bool(np.array_equal(labels["new"], labels["old"])),
    }


def print_tables(segmenter, model: str, size: int, decode: list[dict], automatic) -> None:
    tokens = segmenter.features(0)[0, 0].numel()
    used = "uses" if tokens >= fast_decoder.LOW_RANK_MIN_TOKENS else "does not use"
    print(f"model {model}, {size} x {size} image, {torch.get_num_threads()} CPU threads")
    print(
        f"{tokens} image tokens: the Segmenter {used} the low-rank decoder here "
        f"(from {fast_decoder.LOW_RANK_MIN_TOKENS} tokens)"
    )
    print("| decoding | plain ms | low-rank ms | low-rank / plain | max rel. logit diff |")
    print("|---|---|---|---|---|")
    for row in decode:
        print(
            f"| {row['case']} | {1000 * row['old_s']:.1f} | {1000 * row['new_s']:.1f} | "
            f"{row['ratio']:.2f} | {row['max_rel_diff']:.1e} |"
        )
    if automatic is not None:
        print(f"\nautomatic segmentation with {automatic['model']}")
        print(
            "| automatic segmentation | every point s | confident points s | ratio | "
            "objects | same labels |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| {size} px | {automatic['old_s']:.2f} | {automatic['new_s']:.2f} | "
            f"{automatic['ratio']:.2f} | {automatic['objects']} | {automatic['equal']} |"
        )
        if automatic["objects"] == 0:
            print("no object found: equal labels say nothing here (use trained weights)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--model", default="random:vit_t", help="registry name or random:<arch>")
    parser.add_argument("--size", type=int, default=1024, help="side of the synthetic image")
    parser.add_argument("--repeats", type=int, default=15, help="decoding pairs per case")
    parser.add_argument("--auto-repeats", type=int, default=2, help="automatic segmentation pairs")
    parser.add_argument(
        "--auto-model", default="nano", help="automatic segmentation's model (trained weights)"
    )
    args = parser.parse_args()
    segmenter = make_segmenter(args.model, args.size)
    decode = decode_rows(segmenter, args.repeats)
    automatic = None
    if args.auto_repeats:
        auto_segmenter = make_segmenter(args.auto_model, args.size)
        automatic = {**automatic_row(auto_segmenter, args.auto_repeats), "model": args.auto_model}
    print_tables(segmenter, args.model, args.size, decode, automatic)


if __name__ == "__main__":
    main()
