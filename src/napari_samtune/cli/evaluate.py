"""``samtune evaluate``: score one or more models on annotated images and compare them.

For every ``--model``: box- and point-prompt IoU, the iterative-prompting curve
(IoU after 1..n corrective clicks) and automatic instance segmentation (mSA, SA50,
SA75, precision, recall, F1 at IoU 0.5). Writes ``evaluation.csv`` (one row per
model, every metric) and ``evaluation.png`` (bar chart) to ``--out`` and prints
a table.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from napari_samtune.cli import (
    SKIP_UNPAIRED_HELP,
    add_channel_options,
    model_argument,
    not_empty,
    option_wording,
    output_folder,
    read_annotated,
)
from napari_samtune.cli.console import shell_path, sigterm_interrupts
from napari_samtune.cli.evaluate_data import normalised_pairs
from napari_samtune.cli.evaluate_rows import format_table, model_names, row_names
from napari_samtune.cli.segment_planes import download_bar, optional_bar

if TYPE_CHECKING:
    from napari_samtune.core.automatic import AutoSegmentConfig

# The core's parameter names as the options that set them, for its error messages.
OPTION_NAMES: dict[str, str] = {
    "device": "--device",
    "max_objects_per_image": "--max-objects",
    "n_corrective_clicks": "--clicks",
    "points_per_side": "--points-per-side",
    "pred_iou_thresh": "--pred-iou-thresh",
    "stability_score_thresh": "--stability-score-thresh",
    "channel_axis": "--channel-axis",
    "channels": "--channels",
}
NONE_MEANS: dict[str, str] = {"max_objects_per_image": "no --max-objects (every object)"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare models on annotated images (prompted IoU, automatic mSA)",
        description=(
            "Evaluate one or more SAM models on images with instance labels: box/point "
            "prompt IoU, IoU after corrective clicks, and automatic segmentation scores. "
            "Writes evaluation.csv and evaluation.png to --out (evaluation-2.csv, ... "
            "where an earlier evaluation's files are there: none is replaced)."
        ),
    )
    parser.add_argument(
        "--images", type=not_empty, nargs="+", required=True, help="TIFF files, folder or glob"
    )
    parser.add_argument(
        "--labels", type=not_empty, nargs="+", required=True, help="instance label TIFFs"
    )
    parser.add_argument("--skip-unpaired", action="store_true", help=SKIP_UNPAIRED_HELP)
    add_channel_options(parser)
    parser.add_argument(
        "--model",
        type=model_argument,
        action="append",
        required=True,
        help="model name or weights file (repeatable)",
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        default="samtune-evaluation",
        help="folder of the table and chart (default: ./samtune-evaluation)",
    )
    parser.add_argument(
        "--clicks", type=int, default=7, help="corrective clicks after the point (default: 7)"
    )
    parser.add_argument(
        "--max-objects",
        type=int,
        default=None,
        help="prompt at most this many objects per image (automatic scores take all)",
    )
    auto = parser.add_argument_group(
        "automatic segmentation (defaults as in SAM, or for nano-sized models 24 points per "
        "side, predicted IoU 0.4, stability 0.9, as samtune segment)"
    )
    auto.add_argument("--points-per-side", type=int, default=None, help="automatic grid")
    auto.add_argument("--pred-iou-thresh", type=float, default=None, help="automatic filter")
    auto.add_argument(
        "--stability-score-thresh",
        "--stability-thresh",  # its first name, kept for scripts written with it
        dest="stability_thresh",
        metavar="STABILITY_SCORE_THRESH",
        type=float,
        default=None,
        help="automatic filter (named as in segment)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def auto_config_for(img_size: int, args: argparse.Namespace) -> AutoSegmentConfig:
    """Defaults per model size (nano's for 256 px models, SAM's otherwise), then the options."""
    from napari_samtune.core.automatic import default_auto_config

    config = default_auto_config(img_size)
    changes = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_thresh,
    }
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def check_models(models: list[str], show_progress: bool = True) -> None:
    """Refuse, before any model is evaluated, a ``--model`` that is neither a model name
    nor a file; download (and check) the built-in weights not downloaded yet.

    Every file but the first is also loaded, as its loading would fail only after the
    models before it were evaluated (weights that miss a key, say); the first is loaded
    right away anyway.
    """
    from napari_samtune.core.download import ensure_model_file
    from napari_samtune.core.model_lookup import get_model_spec
    from napari_samtune.core.models import folder_not_weights, load_model, neither_model_nor_file

    for index, model in enumerate(models):
        try:
            try:
                spec = get_model_spec(model)
            except ValueError:
                path = Path(model).expanduser()
                if path.is_dir():
                    raise ValueError(folder_not_weights(path)) from None
                if not path.is_file():
                    raise neither_model_nor_file(model) from None
                if index:
                    load_model(model, device="cpu")
            else:
                with download_bar(show_progress) as progress:
                    ensure_model_file(spec, progress=progress)
        except (ValueError, OSError) as err:
            raise type(err)(f"--model {model}: {err}; nothing was evaluated") from None


def run(args: argparse.Namespace) -> int:
    with option_wording(OPTION_NAMES, NONE_MEANS):
        return _run(args)


def _check_options(args: argparse.Namespace, known: set[str]) -> None:
    if args.clicks < 0:
        raise ValueError(f"--clicks {args.clicks!r}; use 0 or more corrective clicks")
    if args.max_objects is not None and args.max_objects < 1:
        raise ValueError(
            f"--max-objects {args.max_objects!r}; use 1 or more, or leave it out to evaluate "
            "every object"
        )
    auto_config_for(1024, args)  # the automatic settings' own checks
    _check_repeated(args.model, known)


def _check_repeated(models: list[str], known: set[str]) -> None:
    """Refuse a ``--model`` given twice (a name, a file by any path, or a model's name and
    its file): it would be evaluated twice, taking as long again, for a second row of the
    same scores."""
    from napari_samtune.core.model_lookup import model_file

    first_given: dict[str, str] = {}
    for model in models:
        path = model_file(model) if model in known else Path(model).expanduser()
        key = str(path.resolve()) if path is not None and path.is_file() else model
        if key in first_given:
            again = "" if first_given[key] == model else f" (as {first_given[key]!r} before)"
            raise ValueError(
                f"--model {model} is given twice{again}; each model is evaluated once: "
                "leave out the repeat"
            )
        first_given[key] = model


def _run(args: argparse.Namespace) -> int:
    from napari_samtune.core.devices import resolve_device

    known = model_names()  # read once, for the repeats and the row names
    _check_options(args, known)
    device = str(resolve_device(args.device))
    channels = (args.channel_axis, args.channels)
    pairs = read_annotated(
        args.images, args.labels, "evaluation", args.skip_unpaired, True, channels, sys.stderr
    )
    images, labels, used = normalised_pairs(pairs)  # all checked before any model is loaded
    check_models(args.model, not args.no_progress)
    results, done = {}, []  # done: evaluated, or left out as the weights of one that was
    names = row_names(args.model, known)
    measured = {"device": device, "pairs": used, "models": {}}
    try:  # SIGTERM (a batch job's time limit) as Ctrl+C: the models done are kept
        with sigterm_interrupts():
            for name, model in zip(names, args.model, strict=True):
                metrics = _evaluate(name, model, images, labels, args, device, measured)
                if metrics is not None:
                    results[name] = metrics
                done.append(name)
    except (Exception, KeyboardInterrupt):
        missing = [name for name in names if name not in done]
        _keep_finished(results, missing, args, measured)  # then the error or interrupt is said
        raise
    _report(results, args, measured)
    return 0


def _evaluate(name, model, images, labels, args, device, measured) -> dict | None:
    """The metrics of ``model`` (shown as ``name``); its settings go to ``measured``. None
    for weights evaluated already under another name (a run's registered model and its
    model.pth, a copy: the same scores twice, as long again)."""
    from napari_samtune.core.demo import model_metrics
    from napari_samtune.core.models import load_model, weights_id

    loaded = load_model(model, device=device)  # downloaded by check_models
    weights = weights_id(loaded)  # a built-in and a copy of its file: the same weights
    same = [n for n, record in measured["models"].items() if record["weights_id"] == weights]
    if same:
        print(
            f"--model {shell_path(model)} holds the same weights as {same[0]}, evaluated "
            "already: left out",
            file=sys.stderr,
        )
        return None
    images_text = "1 image" if len(images) == 1 else f"{len(images)} images"
    print(f"evaluating {name} on {images_text} ...", file=sys.stderr, flush=True)
    auto = auto_config_for(loaded.architecture.img_size, args)
    measured["models"][name] = _model_record(model, loaded, weights, auto, device)
    # steps: each object's prompts and each image's automatic segmentation
    with optional_bar(not args.no_progress, f"evaluating {name}", "step") as bar:
        return model_metrics(
            loaded.sam, loaded.model_id, images, labels, auto, args.clicks,
            args.max_objects, device, progress=bar,
        )  # fmt: skip


def _keep_finished(
    results: dict, missing: list[str], args: argparse.Namespace, measured: dict
) -> None:
    """A model failed to load or evaluate, or Ctrl+C came, after others were evaluated:
    their results are written and printed (the models ``missing``, not done, named), not
    thrown away (minutes to hours of a large model's work)."""
    if not results:
        return
    print(
        f"evaluation stopped before {', '.join(map(repr, missing))}; the results of "
        f"{', '.join(map(repr, results))} are kept:",
        file=sys.stderr,
    )
    _report(results, args, measured)


def _report(results: dict, args: argparse.Namespace, measured: dict) -> None:
    """Write the comparison files and print the table and the click curves."""
    from napari_samtune.core.evaluate import compare_models

    settings = evaluation_settings(args, measured, list(results))
    # printed first: a full disk failed the files, and the scores of the whole run were lost
    print(format_table(results))
    if args.clicks:  # (without corrective clicks the curve is the table's point IoU alone)
        print(f"iterative prompting (IoU after 0..{args.clicks} clicks):")
        for name, metrics in results.items():
            curve = [metrics["point_iou"]] + [
                metrics[f"iou_after_{k}_clicks"] for k in range(1, args.clicks + 1)
            ]
            print(f"  {name}: " + " ".join(f"{v:.3f}" for v in curve))
    sys.stdout.flush()
    files = compare_models(results, args.out, "evaluation", settings=settings)  # or -2, ...
    written = (shell_path(p) for p in (files.csv_path, files.png_path, files.settings_path))
    print("wrote {}, {} and {}".format(*written))


def _model_record(model: str, loaded, weights: str, auto: AutoSegmentConfig, device: str) -> dict:
    """What identifies an evaluated model, how its automatic segmentation was set and the
    precision its encoder ran in ("auto": bf16 on CPUs that compute it faster, whose
    scores differ a little from float32's)."""
    import torch

    from napari_samtune.core.accelerate import autocast_dtype

    dtype = autocast_dtype(torch.device(device), "auto")
    return {
        "given": model,
        "model_id": loaded.model_id,  # its embeddings' cache key: a built-in's file hash
        "weights_id": weights,  # the weights' content id: same id, same weights
        "file": None if loaded.path is None else str(Path(loaded.path).absolute()),
        "architecture": loaded.architecture.name,
        "automatic": asdict(auto),
        "encoder_precision": str(dtype or torch.float32).removeprefix("torch."),
    }


def evaluation_settings(args: argparse.Namespace, measured: dict, names: list[str]) -> dict:
    """How ``samtune evaluate`` measured the models in ``names`` (those with results; the
    device, pairs and models' records in ``measured``), for
    ``evaluation.json`` beside the table: the data, the models' weights, the prompts and
    the versions, so that a row can be told apart from one measured otherwise."""
    import platform
    from datetime import datetime, timezone

    from napari_samtune.core.train_checkpoints import versions

    return {
        "command": "samtune evaluate",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": [str(Path(p).absolute()) for p in args.images],
        "labels": [str(Path(p).absolute()) for p in args.labels],
        "pairs": measured["pairs"],
        "channel_axis": args.channel_axis,
        "channels": None if args.channels is None else list(args.channels),
        "corrective_clicks": args.clicks,
        "max_objects_per_image": args.max_objects,
        "device": measured["device"],
        "models": {name: measured["models"][name] for name in names},
        "versions": {**versions(), "python": platform.python_version()},  # as checkpoints
    }
