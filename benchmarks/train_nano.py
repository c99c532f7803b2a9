"""Train the offline "nano" generalist from scratch on generated microscopy-like images.

Two commands reproduce the weights shipped in ``src/napari_samtune/weights/nano.pth``::

    OMP_NUM_THREADS=1 python benchmarks/train_nano.py --out nano-run --max-minutes 45 --install
    OMP_NUM_THREADS=1 python benchmarks/train_nano.py --out nano-clicks --init nano \
        --iterative-prompts 3 --learning-rate 1e-4 --max-minutes 38 --install

(The first: 45 min on a 2-core CPU shared with other jobs, 42 epochs of 300 steps, best
validation IoU 0.59 at epoch 40; those weights got worse with more corrective clicks. The
second goes on from them with three corrective clicks per object: 58 epochs in 38 min,
best validation IoU 0.63. ``OMP_NUM_THREADS=1`` matters on a busy machine: with two
threads competing for cores each step ran about 8x slower.)

It builds a varied training set (:func:`napari_samtune.core.synthetic.make_varied_dataset`:
bright objects of random size, density, shape, contrast, texture, blur, noise, 8 and 16
bit; never the DARK_CELLS domain), a held-out validation set of other seeds, and trains
``--init`` (``random:nano`` by default) with the project's own training engine (box or
point prompts plus iterative corrective clicks, several objects per patch). ``--max-minutes`` sets a
wall-clock budget: a timer sets the stop event, the engine finishes its step, writes a
checkpoint and exports the best model. ``--install`` stores the best weights as fp16 at
the packaged path and writes their sha256 into ``core/registry.py`` (``NANO_SHA256``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "src/napari_samtune/weights/nano.pth"
REGISTRY = ROOT / "src/napari_samtune/core/registry.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("nano-run"), help="run folder (new)")
    parser.add_argument("--n-train", type=int, default=300, help="generated training images")
    parser.add_argument("--n-val", type=int, default=10, help="generated validation images")
    parser.add_argument("--samples-per-epoch", type=int, default=300, help="patches per epoch")
    parser.add_argument("--epochs", type=int, default=1000, help="at most this many epochs")
    parser.add_argument("--max-minutes", type=float, default=45.0, help="wall-clock budget")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--objects", type=int, default=6, help="objects per patch")
    parser.add_argument("--batch-size", type=int, default=1, help="patches per step")
    parser.add_argument(
        "--iterative-prompts", type=int, default=1, help="corrective clicks per object"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", type=Path, default=None, help="a last.pt to continue from")
    parser.add_argument(
        "--install", action="store_true", help=f"write the best weights to {PACKAGED} (fp16)"
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="train nothing: print the quality table of the packaged nano vs random weights",
    )
    parser.add_argument("--n-test", type=int, default=8, help="held-out images per domain")
    parser.add_argument(
        "--init",
        default="random:nano",
        help="the model to start from: random weights, or e.g. 'nano' (the packaged weights) "
        "to teach them more, such as corrective clicks",
    )
    parser.add_argument(
        "--candidate",
        type=Path,
        default=None,
        help="with --evaluate-only: also evaluate these weights (e.g. a run's exported model)",
    )
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace):
    from napari_samtune.core.presets import TrainConfig

    return TrainConfig(
        model=args.init,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        n_objects_per_batch=args.objects,
        batch_size=args.batch_size,
        early_stopping=None,  # the wall-clock budget ends the run
        min_samples_per_epoch=args.samples_per_epoch,
        n_iterative_prompts=args.iterative_prompts,
        seed=args.seed,
        device=args.device,
        scheduler_patience=4,
        min_object_area=16,
    )


def install_weights(model_path: Path, target: Path = PACKAGED) -> str:
    """Store the weights in ``model_path`` (any layout) as fp16 at ``target``; its sha256 hex."""
    from napari_samtune.core.checkpoints import atomic_torch_save
    from napari_samtune.core.download import file_digest
    from napari_samtune.core.models import read_sam_state_dict

    state, _ = read_sam_state_dict(model_path)
    half = OrderedDict(
        (k, v.half() if v.is_floating_point() else v) for k, v in state.items()
    )  # fp16 storage halves the package; loading copies into fp32 parameters
    atomic_torch_save(half, target)
    target.chmod(0o644)  # a package file, readable by everyone
    return file_digest(target, "sha256")


def keep_earlier(target: Path = PACKAGED, registry: Path = REGISTRY) -> Path | None:
    """Keep the weights about to be replaced beside them as ``nano-<hash>.pth`` and list them
    in the registry's ``EARLIER_NANO``: a checkpoint holding only the weights its run trained
    on them (a frozen-encoder run in progress) is still completed on them. The kept path."""
    from napari_samtune.core.download import file_digest

    if not target.exists():
        return None
    digest = file_digest(target, "sha256")
    kept = target.with_name(f"nano-{digest[:8]}.pth")
    shutil.copyfile(target, kept)
    kept.chmod(0o644)
    entry = f'    ("{kept.name}", "sha256:{digest}"),  # noqa: E501\n'
    text = registry.read_text(encoding="utf-8")
    if entry not in text:
        text, count = re.subn(
            r"^EARLIER_NANO: .* = \(\n", lambda m: m.group(0) + entry, text, flags=re.M
        )
        if count != 1:
            raise ValueError(f"{registry} has no single 'EARLIER_NANO: ... = (' line")
        registry.write_text(text, encoding="utf-8")
    return kept


def record_hash(digest: str, registry: Path = REGISTRY) -> None:
    """Write the new weights' sha256 into the ``NANO_SHA256 = ...`` line of the registry."""
    text = registry.read_text(encoding="utf-8")
    new, count = re.subn(
        r"^NANO_SHA256 = .*$", f'NANO_SHA256 = "sha256:{digest}"', text, flags=re.M
    )
    if count != 1:
        raise ValueError(f"{registry} has no single 'NANO_SHA256 = ...' line to update")
    registry.write_text(new, encoding="utf-8")


def quality_table(n_test: int, seed: int = 3000, candidate: Path | None = None) -> str:
    """Markdown table: packaged nano vs random weights (and ``candidate``'s, if given) on
    held-out generated images.

    Domains: varied bright objects like the training data (other seeds), the plain
    NUCLEI style, and DARK_CELLS, which nano never saw.
    """
    from napari_samtune.core.automatic import NANO_AUTO_CONFIG
    from napari_samtune.core.demo import model_metrics
    from napari_samtune.core.model_source import load_base_model
    from napari_samtune.core.models import load_model
    from napari_samtune.core.synthetic import DARK_CELLS, NUCLEI, make_dataset, make_varied_dataset

    domains = {
        "varied bright (training-like)": make_varied_dataset(n_test, seed=seed),
        "NUCLEI": make_dataset(n_test, style=NUCLEI, seed=seed),
        "DARK_CELLS (unseen)": make_dataset(n_test, style=DARK_CELLS, seed=seed),
    }
    nano = load_model("nano")
    random_sam, _, random_id = load_base_model("random:nano", seed=0)
    models = [("nano", nano.sam, nano.model_id), ("random init", random_sam, random_id)]
    if candidate is not None:
        loaded = load_model(candidate)
        models.insert(1, (f"candidate {candidate.name}", loaded.sam, loaded.model_id))
    lines = [
        "| held-out images | model | box IoU | point IoU | IoU after 3 clicks | auto mSA "
        "| auto SA50 | auto F1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for domain, pairs in domains.items():
        images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        for name, sam, model_id in models:
            m = model_metrics(sam, model_id, images, labels, NANO_AUTO_CONFIG, 3)
            keys = ("box_iou", "point_iou", "iou_after_3_clicks", "msa", "sa50", "f1")
            cells = " | ".join(f"{m[k]:.3f}" for k in keys)
            lines.append(f"| {domain} ({n_test}) | {name} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.evaluate_only:
        print(quality_table(args.n_test, candidate=args.candidate))
        return 0
    # registering the result as a user model must not touch the real user folder
    os.environ.setdefault("SAMTUNE_MODELS_DIR", str(args.out.resolve() / "user-models"))
    from napari_samtune.core.synthetic import make_varied_dataset
    from napari_samtune.core.train import EpochDone, StepDone, TrainingStarted, iter_train

    start = time.perf_counter()
    # larger than the 256 px patches: random crops add variety at no generation cost
    train_data = make_varied_dataset(args.n_train, (384, 384), seed=1000 + args.seed)
    val_data = make_varied_dataset(args.n_val, seed=2000 + args.seed)
    seconds = time.perf_counter() - start
    print(f"generated {len(train_data)} + {len(val_data)} images in {seconds:.0f} s")
    stop = threading.Event()
    timer = threading.Timer(args.max_minutes * 60, stop.set)
    timer.daemon = True
    timer.start()
    events = iter_train(
        make_config(args), train_data, val_data, args.out, stop, args.resume, "nano-train"
    )
    finished = None
    for event in events:
        if isinstance(event, TrainingStarted):
            print(f"config: {event.config}", flush=True)
            print(f"{event.steps_per_epoch} steps/epoch, {event.n_trainable_params} params")
        elif isinstance(event, StepDone) and event.step % 25 == 0:
            print(f"  epoch {event.epoch} step {event.step} loss {event.loss:.3f}", flush=True)
        elif isinstance(event, EpochDone):
            metrics = " ".join(f"{k} {v:.3f}" for k, v in event.val_metrics.items())
            print(
                f"epoch {event.epoch}: loss {event.train_loss:.3f} {metrics} lr "
                f"{event.learning_rate:.1e} {event.epoch_seconds:.0f} s"
                f"{' (best)' if event.is_best else ''}",
                flush=True,
            )
        else:
            finished = event
    timer.cancel()
    print(f"finished: {finished}")
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")
    if args.install and finished is not None and finished.exported_model_path is not None:
        kept = keep_earlier()
        print(f"kept the replaced weights as {kept}")
        digest = install_weights(finished.exported_model_path)
        record_hash(digest)
        print(f"installed {PACKAGED} ({PACKAGED.stat().st_size / 1e6:.1f} MB) sha256:{digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
