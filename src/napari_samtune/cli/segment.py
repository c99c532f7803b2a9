"""``samtune segment``: segment an image, or each plane of a stack, from prompt files or
automatically; write labels.

Prompt files are CSV with a header; coordinates are pixels, x = column, y = row:

* points: ``x,y,label`` (label 1 or ``positive``, 0 or ``negative``; without a label
  column every point is positive). Each positive point is one object. To refine an
  object with several points (negative ones included), add an ``object`` column: rows
  with the same object id form one prompt, and the object gets that id in the labels.
  A points layer saved from napari (``axis-0,axis-1[,label]``: row, column) works as is.
* boxes: ``x_min,y_min,x_max,y_max``; box ``i`` (0-based row) becomes object ``i + 1``.
  A shapes layer saved from napari works as is: each shape by its bounding box.

With ``--stack`` the first axis of the image holds planes (z or time) and each plane is
segmented on its own: prompts give their plane in a ``z`` column (0-based; 3D points or
shapes layers saved from napari, ``axis-0`` = plane, work as is), ``--auto`` segments
every plane with ids unique across the stack.

The output is a uint32 TIFF of instance labels (0 = background): (H, W), or
(planes, H, W) with ``--stack``. ``-o`` may be a folder (one that exists, or written with a trailing
``/``): it receives ``<image>.labels.tif``, the annotation widget's own autosave name:
with the widget's folder set there, opening an image shows its labels to correct, and
``samtune train`` pairs them with their images. With ``--auto`` the input may also be
several images, a folder or a glob: ``-o`` is then a folder that receives
``<image>.labels.tif`` for each; images whose labels are there already are skipped
unless ``--overwrite``. Each labels file gets the widget's record beside it
(``<name>.prompts.json``: model, settings or prompt file, and the image's fingerprint),
so an image of the same name from elsewhere is told apart: its labels go beside as
``<name>-<fingerprint>.labels.tif``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_samtune.cli import (
    add_channel_options,
    check_output_file,
    given_path,
    in_option_terms,
    model_argument,
    not_empty,
    option_wording,
)
from napari_samtune.cli.console import shell_path, sigterm_interrupts
from napari_samtune.cli.prompt_files import read_boxes_csv, read_points_csv
from napari_samtune.cli.segment_files import (
    check_image_file,
    check_labels_name,
    check_record_free,
    output_for,
    read_image,
)
from napari_samtune.cli.segment_planes import (
    Planes,
    download_bar,
    no_progress,
    optional_bar,
    segment_planes,
)
from napari_samtune.core.images import warnings_named
from napari_samtune.core.label_files import labels_file_name

AUTO_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_area")
# The core's parameter names as the options that set them, for its error messages.
OPTION_NAMES: dict[str, str] = {
    **{name: "--" + name.replace("_", "-") for name in AUTO_OPTIONS},
    "channel_axis": "--channel-axis",
    "channels": "--channels",
    "device": "--device",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image from point/box CSV prompts, or automatically",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,  # None: python -OO
        formatter_class=argparse.RawDescriptionHelpFormatter,
        fromfile_prefix_chars="@",  # @list: the images a stopped batch lists, one per line
    )
    parser.convert_arg_line_to_args = _listed  # blank lines (an editor's last) are no path
    parser.add_argument(
        "image",
        type=given_path,
        nargs="+",
        help="TIFF image: 2D, RGB, multichannel or a stack; with --auto also several files, a "
        "folder or a glob (their labels go to the -o folder), or @FILE: those FILE lists, "
        "one per line (a path that starts with @ is given as ./@name)",
    )
    parser.add_argument(
        "--model",
        type=model_argument,
        required=True,
        help="model name (see `samtune models`) or path",
    )
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--points", type=given_path, metavar="POINTS.csv", help="x,y[,label][,object]"
    )
    prompts.add_argument(
        "--boxes", type=given_path, metavar="BOXES.csv", help="x_min,y_min,x_max,y_max"
    )
    prompts.add_argument("--auto", action="store_true", help="segment everything automatically")
    parser.add_argument(
        "-o",
        "--output",
        type=not_empty,
        required=True,
        metavar="LABELS.tif|FOLDER",
        help="labels file, or a folder that receives <image>.labels.tif (for several "
        "images, a folder)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace labels written before: the -o file, or for several images those there",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--stack", action="store_true", help="the first axis holds planes (z or time): segment each"
    )
    add_channel_options(parser)
    parser.add_argument("--no-cache", action="store_true", help="do not cache embeddings on disk")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    auto = parser.add_argument_group(
        "automatic segmentation (--auto; defaults as in SAM, or for nano-sized models 24 "
        "points per side, predicted IoU 0.4, stability 0.9, min area 30)"
    )
    auto.add_argument("--points-per-side", type=int, help="point grid side per tile")
    auto.add_argument("--pred-iou-thresh", type=float, help="minimum predicted IoU")
    auto.add_argument("--stability-score-thresh", type=float, help="minimum stability score")
    auto.add_argument("--min-area", type=int, help="smallest object kept, in pixels")
    parser.set_defaults(func=run)


def _report_empty(labels: np.ndarray, expected_ids, ids_from: str) -> None:
    """Tell on stderr which prompted objects got no pixels, rather than dropping them quietly.
    ``ids_from``: where the ids come from, e.g. "data rows" (counted from 1)."""
    expected = list(dict.fromkeys(int(i) for i in expected_ids))
    empty = sorted(set(expected) - set(np.unique(labels).tolist()))
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
        print(
            f"note: {len(empty)} of {len(expected)} prompted objects came out empty (ids {shown}, "
            f"from the {ids_from}): the model found nothing there or an earlier object covered "
            "it; try a box, more points, or a finetuned model",
            file=sys.stderr,
        )


def _auto_config(args: argparse.Namespace, img_size: int | None = None):
    """--auto's settings: the defaults for a model of input size ``img_size`` (SAM's while
    no model is loaded yet, to check the options early), then the options given."""
    from napari_samtune.core.automatic import AutoSegmentConfig, default_auto_config

    base = AutoSegmentConfig() if img_size is None else default_auto_config(img_size)
    overrides = {name: getattr(args, name) for name in AUTO_OPTIONS}
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _inputs(specs: list[Path]) -> tuple[list[Path], bool]:
    """The image files named on the command line, and whether they are a batch (several
    files, a folder or a glob: labels then go to a folder)."""
    from napari_samtune.core.file_lists import expand_paths, is_glob_pattern

    batch = len(specs) > 1 or any(p.is_dir() or is_glob_pattern(p) for p in specs)
    return (expand_paths([str(p) for p in specs], "images") if batch else specs), batch


def _load_segmenter(args: argparse.Namespace):
    """The Segmenter of ``--model`` on ``--device``, and the model's name: a weights file's
    full path (every run's export is a ``model.pth``: its stem told them apart in no record)."""
    from napari_samtune.core.devices import resolve_device
    from napari_samtune.core.models import is_registered_name, load_model
    from napari_samtune.core.predict import Segmenter

    device = resolve_device(args.device)
    with download_bar(not args.no_progress) as progress:
        loaded = load_model(args.model, device=device, progress=progress)
    segmenter = Segmenter(
        loaded.sam, model_id=loaded.model_id, device=device, use_disk_cache=not args.no_cache
    )
    by_file = loaded.path is not None and not is_registered_name(str(args.model))
    return segmenter, str(loaded.path.resolve()) if by_file else loaded.name


def _write_labels(
    path: Path, labels: np.ndarray, image: Path, pixels, made: dict, overwrite: bool
) -> tuple[int, int] | None:
    """Write labels atomically, with the annotation widget's record next to them
    (``<name>.prompts.json``: the fingerprint of the image's ``pixels``, so that an image of
    the same name elsewhere is told apart, and ``made``: how the objects were made). Returns
    the number of objects and of the stack's planes that hold some (0 for a 2D image).

    Unless ``overwrite``, writes nothing where ``path`` exists (saved since the batch began,
    by the annotation widget?), as checked under the folder's lock, and returns None."""
    from napari_samtune.core.annotation_files import (
        ChangedMeanwhile,
        unchanged_since,
        write_annotations,
    )
    from napari_samtune.core.label_files import image_fingerprint

    ids = np.unique(labels)
    ids = ids[ids > 0]
    planes = np.flatnonzero(labels.reshape(len(labels), -1).any(1)) if labels.ndim == 3 else []
    objects = {"ids": ids.tolist(), "planes": [int(p) for p in planes], **made}
    record = {
        "image_fingerprint": image_fingerprint(pixels),
        "objects": [objects],  # one run made them all (an empty one says so too)
        "prompts": {"points": [], "point_labels": [], "boxes": []},
    }
    try:
        write_annotations(
            path, image.stem, labels, record, None if overwrite else unchanged_since(None)
        )
    except ChangedMeanwhile:
        # the same labels, written by another samtune segment run on this image: done (both
        # runs of a folder in parallel failed every image, "saved by the annotation widget?")
        return (len(ids), len(planes)) if _holds(path, labels) else None
    return len(ids), len(planes)


def _holds(path: Path, labels: np.ndarray) -> bool:
    """Whether the labels file ``path`` holds ``labels`` (read as training reads it)."""
    from napari_samtune.core.tiff_files import read_label_tiff

    try:
        return bool(np.array_equal(read_label_tiff(path), labels))
    except (OSError, ValueError):
        return False


def _made_by(args: argparse.Namespace, model_name: str, config, weights_id: str) -> dict:
    """How ``samtune segment`` made the objects, for the labels' record: the model by its
    name and its weights (a continued run gives a name other weights)."""
    from dataclasses import asdict

    model = {"model": model_name, "weights_id": weights_id}
    if args.auto:
        return {"source": "automatic", **model, "settings": asdict(config)}
    prompts = args.points if args.points is not None else args.boxes
    kind = "points" if args.points is not None else "boxes"
    return {"source": f"{kind} file", **model, "prompts_file": str(prompts)}


def _using(segmenter, model_name: str) -> str:
    return f"model {shell_path(model_name)}, device {segmenter.model.device}"


def _objects(n_objects: int) -> str:
    return f"{n_objects} object" if n_objects == 1 else f"{n_objects} objects"


def run(args: argparse.Namespace) -> int:
    with option_wording(OPTION_NAMES):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    given = [OPTION_NAMES[name] for name in AUTO_OPTIONS if getattr(args, name) is not None]
    if given and not args.auto:  # it was ignored without a word
        raise ValueError(
            f"{' and '.join(given)} set automatic segmentation (--auto), which prompt files "
            "do not use; remove it, or segment with --auto instead of --points/--boxes"
        )
    output_text, args.output = args.output, Path(args.output)
    files, batch = _inputs(args.image)
    if not batch:  # before -o, which is checked against it
        check_image_file(files[0])
    example = labels_file_name(files[0].stem)
    into_folder = args.output.is_dir() or output_text.endswith(("/", os.sep))
    if batch or (into_folder and args.auto):  # one image into a folder: as one of several
        return _run_batch(args, files, into_folder)
    if into_folder:  # a prompt file's objects: under the name the widget and train pair
        args.output = output_for(files[0], args.output)  # beside a namesake's labels
        output_text = str(args.output)
    check_output_file(output_text, example)
    check_labels_name(args.output, files[0], example, args.overwrite)
    planes = Planes(*read_image(files[0]), files[0], args)
    n_planes = planes.count if args.stack else None
    # read prompts and settings before loading the model, so mistakes show up at once
    points = read_points_csv(args.points, planes.shape, n_planes) if args.points else None
    boxes = read_boxes_csv(args.boxes, planes.shape, n_planes) if args.boxes else None
    config = _auto_config(args) if args.auto else None
    segmenter, model_name = _load_segmenter(args)
    if args.auto:
        config = _auto_config(args, segmenter.img_size)
    labels, blank = segment_planes(segmenter, planes, points, boxes, config, not args.no_progress)
    prompts = points if points is not None else boxes
    if prompts is not None:  # those on blank planes were said to be left out
        seen = (
            np.ones(len(prompts), bool)
            if prompts.planes is None
            else ~np.isin(prompts.planes, blank)
        )
        if boxes is not None:
            _report_empty(labels, np.flatnonzero(seen) + 1, boxes.ids_from)
        elif points.objects is None:
            _report_empty(labels, np.flatnonzero(seen & (points.labels == 1)) + 1, "data rows")
        else:
            _report_empty(labels, points.objects[seen], "'object' column")
    made = _made_by(args, model_name, config, segmenter.model_id)
    counts = _write_labels(args.output, labels, files[0], planes.pixels, made, args.overwrite)
    if counts is None:  # checked at the start: saved meanwhile
        print(f"not written: {_APPEARED.format(args.output)}", file=sys.stderr)
        return 1
    n_objects, found_in = counts
    where = f" in {found_in} of {planes.count} planes" if args.stack else ""
    print(
        f"{_objects(n_objects)}{where} written to {shell_path(args.output)} "
        f"({_using(segmenter, model_name)})"
    )
    return 0


# an image's labels written by someone else (the annotation widget) while it was segmented
_APPEARED = (
    "{} was saved meanwhile (by the annotation widget or another run?) with other labels, and "
    "is kept; --overwrite replaces it"
)


def _once_each(files: list[Path]) -> list[Path]:
    """``files`` without repeats of one file (overlapping globs, a file and its folder, a
    relative and an absolute path), said: such a file was segmented and counted twice, or
    refused as two images that "would have the same labels file name"."""
    seen: dict[Path, Path] = {}
    for path in files:
        seen.setdefault(path.resolve(), path)
    if len(seen) < len(files):
        print(f"{len(files) - len(seen)} file(s) given more than once are segmented once")
    return list(seen.values())


def _run_batch(args: argparse.Namespace, files: list[Path], folder_asked: bool = False) -> int:
    """--auto on several images: ``<image>.labels.tif`` each in the output folder. Images
    whose labels exist are skipped unless --overwrite (a rerun after a stop goes on where it
    stopped and never replaces corrected labels); one bad image does not stop the others.
    ``folder_asked``: -o ended with a separator (``out.tif/`` is a folder, as the README
    says, not a TIFF file named in error)."""

    from napari_samtune.core.checkpoints import check_output_folder
    from napari_samtune.core.label_files import is_label_file

    if not args.auto:
        given = f"{len(files)} images were given" if len(files) > 1 else "a folder or pattern"
        raise ValueError(
            f"{given} with a prompt file, which belongs to one image; give one image's path "
            "with --points/--boxes, or segment several with --auto"
        )
    files = _once_each(files)
    out_dir = check_output_folder(args.output)
    if out_dir.suffix.lower() in (".tif", ".tiff") and not (out_dir.is_dir() or folder_asked):
        raise ValueError(
            f"-o {str(out_dir)!r} names a TIFF file, but a folder, a glob or several images "
            f"write one labels file each into a folder; give a folder, e.g. {out_dir.stem}"
        )
    named = {spec for spec in args.image if spec.is_file()}  # given by name: never left out
    # e.g. earlier outputs in the same folder
    labelled = [f for f in files if is_label_file(f) and f not in named]
    if labelled:
        print(
            f"leaving out {len(labelled)} file(s) named as labels, e.g. {labelled[0].name} "
            "(name an image to segment it all the same)"
        )
    images = [f for f in files if f not in labelled]
    if not images:  # the labels folder given by mistake; images named *_mask, *_seg, ...
        raise ValueError(
            f"all {len(labelled)} TIFF file(s) given are named as labels (e.g. "
            f"{labelled[0].name}), which --auto leaves out, so there is nothing to segment; "
            "give the images' folder, or name an image file to segment it all the same"
        )
    outputs = {f: output_for(f, out_dir) for f in images}
    by_output: dict[Path, list[str]] = {}
    for image, output in outputs.items():
        by_output.setdefault(output, []).append(str(image))
    clashes = [(output, names) for output, names in by_output.items() if len(names) > 1]
    if clashes:
        output, names = clashes[0]
        raise ValueError(
            f"images {names!r} would have the same labels file name ({output.name}), so their "
            "labels would overwrite each other in the output folder; segment them into "
            "separate folders"
        )
    for image, output in outputs.items():  # an -o's labels there share their record
        check_record_free(output, image)
    _auto_config(args)  # the options are checked first, even when nothing is left to do
    todo = [f for f in images if args.overwrite or not outputs[f].exists()]
    if len(todo) < len(images):
        print(
            f"skipping {len(images) - len(todo)} image(s) whose labels are already in "
            f"{out_dir} (--overwrite to segment them again)"
        )
    if not todo:
        return 0
    segmenter, model_name = _load_segmenter(args)
    config = _auto_config(args, segmenter.img_size)
    written = []  # the images whose labels are written
    try:
        with sigterm_interrupts():
            failed = _segment_each(args, segmenter, model_name, config, todo, outputs, written)
    except KeyboardInterrupt as err:  # Ctrl+C, or SIGTERM (a batch job's time limit)
        _cross_off(out_dir / NOT_SEGMENTED, written)  # given back, it would redo them
        done = f"{len(written)} of {len(todo)} images segmented into {shell_path(out_dir)}"
        raise type(err)(f"{done}; {_how_to_go_on(args, todo, written, out_dir)}") from None
    using = _using(segmenter, model_name)
    into = shell_path(out_dir)
    print(f"{len(todo) - failed} of {len(todo)} images segmented into {into} ({using})")
    _cross_off(out_dir / NOT_SEGMENTED, written)
    if failed:
        print(f"{failed} image(s) failed; see the messages above", file=sys.stderr)
    return 1 if failed else 0


def _listed(line: str) -> list[str]:
    """The argument a line of an @FILE list gives: none for a blank line."""
    return [line] if line.strip() else []


def _how_to_go_on(args, todo: list[Path], written: list[Path], out_dir: Path) -> str:
    """How a stopped batch goes on: the same command skips the images whose labels are
    written; with --overwrite it redid them all, and without it, it kept the earlier labels
    of those not segmented (said to do as the first): these are named, to give alone (more
    than :data:`MAX_NAMED`: listed in a file in ``out_dir``, one per line)."""
    if not args.overwrite:
        return "the same command segments the rest (images whose labels are there are skipped)"

    rest = [f for f in todo if f not in written]
    said = (
        f"the {len(rest)} not segmented keep any labels they had there before, and the same "
        "command (--overwrite) would segment every image again; to segment just those, give "
        "only them, with --overwrite as before"
    )
    if len(rest) <= MAX_NAMED:
        return f"{said}: {' '.join(shell_path(f) for f in rest)}"
    listed = out_dir / NOT_SEGMENTED
    try:
        # whole paths: read from anywhere, and none begins with @ (another list) or -
        listed.write_text("".join(f"{f.absolute()}\n" for f in rest), encoding="utf-8")
    except OSError as err:
        return f"{said} (the list could not be written to {listed}: {err.strerror or err})"
    return f"{said}: give them as @{shell_path(listed)} (a file listing them, one per line)"


MAX_NAMED = 20  # images named in the note of a stopped batch; more go into a file
NOT_SEGMENTED = "not-segmented.txt"  # that file, in the output folder


def _cross_off(listed: Path, written: list[Path]) -> None:
    """Take the images this batch segmented off a stopped batch's list ``listed``, and
    delete it once none is left: given back (``@FILE``) and all done, it stayed, naming
    them as not segmented (and ``samtune evaluate`` of the folder left it out by name)."""
    try:
        lines = [line for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:  # none (the usual case), or not readable: nothing to cross off
        return
    done = {str(image.absolute()) for image in written}
    rest = [line for line in lines if line not in done]
    if len(rest) == len(lines):
        return
    try:
        if rest:
            listed.write_text("".join(f"{line}\n" for line in rest), encoding="utf-8")
        else:
            listed.unlink()
    except OSError:
        return
    left = f"{len(rest)} listed still" if rest else "deleted: every image listed is segmented"
    print(f"{listed}: {left}")


def _segment_each(args, segmenter, model_name, config, todo, outputs, written) -> int:
    """Segment and write the images ``todo``, appending each written one to ``written``;
    returns how many failed."""
    from tqdm import tqdm

    made, failed = _made_by(args, model_name, config, segmenter.model_id), 0
    with optional_bar(not args.no_progress, "segmenting images", "image") as bar:
        bar = bar or no_progress
        bar(0, len(todo))
        for done, image in enumerate(todo):
            try:
                with warnings_named(image.name):  # which of the folder's images it was
                    planes = Planes(*read_image(image), image, args)
                    labels, _ = segment_planes(
                        segmenter, planes, None, None, config, bars=False, name=image.name
                    )
            except (ValueError, TypeError) as err:
                failed += 1
                why = in_option_terms(str(err), OPTION_NAMES)
                tqdm.write(f"{image}: not segmented: {why}", file=sys.stderr)
            else:
                counts = _write_labels(
                    outputs[image], labels, image, planes.pixels, made, args.overwrite
                )
                if counts is None:  # saved meanwhile: kept
                    failed += 1
                    said = f"{image.name}: not written: {_APPEARED.format(outputs[image])}"
                    tqdm.write(said, file=sys.stderr)
                    bar(done + 1, len(todo))
                    continue
                n_objects, _ = counts
                written.append(image)
                renamed = outputs[image].name != labels_file_name(image.stem)
                why = " (its own name there holds another image's labels)" if renamed else ""
                tqdm.write(f"{image.name}: {_objects(n_objects)} -> {outputs[image]}{why}")
            bar(done + 1, len(todo))
    return failed
