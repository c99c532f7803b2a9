"""Training speed and memory of the CPU presets' configurations, fp32 vs bf16.

For each configuration of the CPU presets (random weights: no pretrained
weights can be downloaded here)

* ``vit_t``, everything trained, 5 objects per batch (CPU 16 GB),
* ``vit_t``, image encoder frozen, 1 object per batch (CPU 8 GB),
* ``vit_b``, everything trained, 10 objects per batch (CPU 32 GB),

this runs a few optimizer steps of the real training loop (``iter_train``:
1024-pixel patches, 2 corrective-click iterations, Adam) in fp32 and with bf16
autocast, each in a fresh subprocess, and prints seconds per step (median after
one warm-up step) and the peak resident memory (RSS) of that process up to its
last measured step. With a frozen encoder the first epoch computes each patch's
embedding once (no gradient); later epochs reuse it: both step times are shown.

TinyViT (vit_t) has no SAM ViT attention: ``--attention both`` compares fused and
stock attention for vit_b only.

Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 3] [--only vit_b_all]
[--threads N] [--attention fast|stock|both]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONFIGS = {
    "vit_t_all": dict(model="random:vit_t", freeze=(), n_objects_per_batch=5),
    "vit_t_frozen": dict(model="random:vit_t", freeze=("image_encoder",), n_objects_per_batch=1),
    "vit_b_all": dict(model="random:vit_b", freeze=(), n_objects_per_batch=10),
}
PRECISIONS = ("no", "bf16")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(name: str, precision: str, attention: str, steps: int) -> dict:
    """Run ``steps`` + 1 optimizer steps of one configuration in this process."""
    from napari_samtune.core.presets import TrainConfig
    from napari_samtune.core.synthetic import SyntheticStyle, make_dataset
    from napari_samtune.core.train import StepDone, iter_train

    crowded = SyntheticStyle(n_objects=(40, 60))
    data = make_dataset(2, shape=(1024, 1024), style=crowded, seed=0)
    frozen = bool(CONFIGS[name]["freeze"])
    per_epoch = steps + 1
    config = TrainConfig(
        **CONFIGS[name],
        epochs=2 if frozen else 1,
        min_samples_per_epoch=per_epoch,
        mixed_precision=precision,
        fast_attention=attention == "fast",
        val_fraction=0.0,
        early_stopping=None,
    )
    stop, times, rss = threading.Event(), {0: [], 1: []}, 0.0
    last = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        os.environ["SAMTUNE_MODELS_DIR"] = str(Path(out) / "models")
        for event in iter_train(config, data, out_dir=Path(out) / "run", stop_event=stop):
            now = time.perf_counter()
            if isinstance(event, StepDone):
                times[event.epoch].append(now - last)
                rss = peak_rss_mb()
                if event.epoch == config.epochs - 1 and event.step == per_epoch:
                    stop.set()
            last = time.perf_counter()
    first = statistics.median(times[0][1:])
    cached = statistics.median(times[1][1:]) if frozen else None
    return {"config": name, "precision": precision, "attention": attention, "s_per_step": first,
            "s_per_step_cached": cached, "peak_rss_mb": rss}  # fmt: skip


def run_in_subprocess(name: str, precision: str, attention: str, args) -> dict:
    command = [sys.executable, __file__, "--child", name, precision, attention]
    command += ["--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{name} {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run")
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="configurations")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument(
        "--attention", choices=("fast", "stock", "both"), default="fast",
        help="ViT attention: fused SDPA (the trainer's default), SAM's stock code, or both",
    )  # fmt: skip
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(*args.child, steps=args.steps)))
        return

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'configuration':<14} {'precision':<9} {'attention':<9} {'s/step':>8} "
          f"{'s/step cached':>14} {'peak RSS MB':>12}")  # fmt: skip
    attentions = ("fast", "stock") if args.attention == "both" else (args.attention,)
    for name in args.only or CONFIGS:
        for attention in attentions if name.startswith("vit_b") else ("fast",):
            for precision in PRECISIONS:
                r = run_in_subprocess(name, precision, attention, args)
                cached = f"{r['s_per_step_cached']:.2f}" if r["s_per_step_cached"] else "-"
                label = "fp32" if precision == "no" else precision
                print(f"{name:<14} {label:<9} {attention:<9} {r['s_per_step']:>8.2f} "
                      f"{cached:>14} {r['peak_rss_mb']:>12.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
