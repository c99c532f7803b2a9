"""Every performance benchmark in one command: embeddings and prompts, then training.

Runs ``bench_embedding.py`` (image-embedding time against the machine's limit and stock
``SamPredictor``, mask agreement with fp32, prompt latency) and ``bench_train.py`` (seconds
per step against a stock loop, frozen-encoder epoch ratios, peak memory against each preset's
budget) one after the other, so that neither disturbs the other's timings; on the CPU then
``bench_decoder.py`` (the low-rank decoder and automatic segmentation against their plain
versions), ``bench_load.py`` (loading a weights file against the official builder) and
``bench_cache.py`` (saving embeddings into a full cache).
Run it on an otherwise idle machine: other jobs sharing the cores slow PyTorch's threads far
more than their share.

Run: ``.venv/bin/python benchmarks/run_all.py [--quick] [--device cuda]``; on a lent GPU
machine, ``bash benchmarks/gpu_check.sh`` (see there).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> None:
    print(f"\n== {script} {' '.join(args)}".rstrip(), flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one repeat of the embedding and training benchmarks (about half the time)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (CPU presets) or cuda (GPU presets)")
    args = parser.parse_args()
    repeats = "1" if args.quick else "2"
    run("bench_embedding.py", "--device", args.device, "--repeats", repeats)
    run("bench_train.py", "--device", args.device, "--repeats", repeats)
    if args.device == "cpu":
        run("bench_decoder.py", "--auto-repeats", repeats)
        run("bench_load.py", "--repeats", "2")
        run("bench_cache.py")


if __name__ == "__main__":
    main()
