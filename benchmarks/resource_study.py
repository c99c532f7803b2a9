"""A miniature of the resource study: how many annotated images, and which starting point?

For each CPU preset's settings (which parts train, objects per patch), finetune on
1, 2, 5 and 10 annotated images of an unseen domain (generated DARK_CELLS images),
once from random weights and once from the packaged nano generalist, and report the
best epoch, the time to reach it and the held-out box / point prompt IoU.

The presets were measured for vit_t / vit_b, whose pretrained weights cannot be
downloaded here; this study scales them down to the nano architecture (same
settings, 256 px model) and shortens the schedule (``--epochs``, ``--samples``), so
its numbers show trends, not what vit_b reaches. Run::

    python benchmarks/resource_study.py --presets cpu-16gb --sizes 1 2 5 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu-8gb", "cpu-16gb"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 5, 10])
    parser.add_argument("--starts", nargs="+", default=["random:nano", "nano"])
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run")
    parser.add_argument("--samples", type=int, default=10, help="patches per epoch")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (presets: 1e-5)")
    parser.add_argument("--iterative-prompts", type=int, default=1)
    parser.add_argument("--n-val", type=int, default=2, help="validation images (best epoch)")
    parser.add_argument("--n-test", type=int, default=4, help="held-out test images")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    args = parser.parse_args(argv)
    for name in ("sizes", "n_val", "n_test"):  # the best epoch and the scores need images
        values = getattr(args, name)
        if min(values if isinstance(values, list) else [values]) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {values!r}")
    return args


def held_out_iou(model_path: Path, test_pairs) -> dict[str, float]:
    """Box and point prompt IoU of the exported model on the test images."""
    from napari_samtune.core.evaluate import evaluate_prompts
    from napari_samtune.core.models import load_model
    from napari_samtune.core.predict import Segmenter

    loaded = load_model(model_path)
    segmenter = Segmenter(loaded.sam, loaded.model_id, use_disk_cache=False)
    images, labels = [p[0] for p in test_pairs], [p[1] for p in test_pairs]
    summary = evaluate_prompts(segmenter, images, labels, 0).summary()
    return {"box_iou": summary["box_iou"], "point_iou": summary["point_iou"]}


def one_run(args, preset, start: str, train_pairs, val_pairs, test_pairs, out: Path) -> dict:
    from napari_samtune.core.architectures import NANO
    from napari_samtune.core.presets import config_from_preset
    from napari_samtune.core.train import train

    config = config_from_preset(
        preset, start, architecture=NANO, device="cpu", epochs=args.epochs,
        min_samples_per_epoch=args.samples, learning_rate=args.lr, early_stopping=None,
        n_iterative_prompts=args.iterative_prompts,
    )  # fmt: skip
    finished = train(config, train_pairs, val_pairs, out)
    return {
        "best_epoch": finished.best_epoch,
        "time_to_best_s": finished.time_to_best_s,
        "total_s": finished.total_time_s,
        **held_out_iou(finished.exported_model_path, test_pairs),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="samtune-resource-study-"))
    # the runs register their models: in the study's folder, never among the user's own
    before = os.environ.get("SAMTUNE_MODELS_DIR")
    os.environ["SAMTUNE_MODELS_DIR"] = str(out / "user-models")
    try:
        study(args, out)
    finally:
        if before is None:
            del os.environ["SAMTUNE_MODELS_DIR"]
        else:
            os.environ["SAMTUNE_MODELS_DIR"] = before
    return 0


def study(args, out: Path) -> None:
    """Every run of the study, its table on stdout."""
    from napari_samtune.core.presets import get_preset
    from napari_samtune.core.synthetic import DARK_CELLS, make_dataset

    pool = make_dataset(max(args.sizes), style=DARK_CELLS, seed=50_000)
    val_pairs = make_dataset(args.n_val, style=DARK_CELLS, seed=60_000)
    test_pairs = make_dataset(args.n_test, style=DARK_CELLS, seed=70_000)
    print(
        "| preset (scaled to nano) | start | images | best epoch | time to best (s) "
        "| held-out box IoU | held-out point IoU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    start_time = time.perf_counter()
    for key in args.presets:
        preset = get_preset(key)
        for start in args.starts:
            for n in args.sizes:
                run_dir = out / f"{key}-{start.replace(':', '_')}-{n}"
                r = one_run(args, preset, start, pool[:n], val_pairs, test_pairs, run_dir)
                name = "random init" if start.startswith("random:") else start
                print(
                    f"| {key} | {name} | {n} | {r['best_epoch'] + 1}/{args.epochs} | "
                    f"{r['time_to_best_s']:.0f} | {r['box_iou']:.3f} | {r['point_iou']:.3f} |",
                    flush=True,
                )
    print(f"\n{(time.perf_counter() - start_time) / 60:.1f} min in total; runs in {out}")


if __name__ == "__main__":
    raise SystemExit(main())
