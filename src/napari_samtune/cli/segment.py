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
from pathlib import Path

import numpy as np

from napari_samtune.cli import (
    add_channel_options,
    check_output_file,
    given_path,
    model_argument,
    not_empty,
    option_wording,
)
from napari_samtune.cli.console import shell_path
from napari_samtune.cli.prompt_files import read_boxes_csv, read_points_csv
from napari_samtune.cli.segment_batch import run_batch
from napari_samtune.cli.segment_files import (
    check_image_file,
    check_labels_name,
    output_for,
    read_image,
)
from napari_samtune.cli.segment_output import (
    APPEARED,
    AUTO_OPTIONS,
    OPTION_NAMES,
    auto_config,
    load_segmenter,
    made_by,
    objects_text,
    using,
    write_labels,
)
from napari_samtune.cli.segment_planes import (
    Planes,
    segment_planes,
)
from napari_samtune.core.label_files import labels_file_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image from point/box CSV prompts, or automatically",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,  # None: python -OO
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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


def _inputs(specs: list[Path]) -> tuple[list[Path], bool]:
    """The image files named on the command line, and whether they are a batch (several
    files, a folder or a glob: labels then go to a folder)."""
    from napari_samtune.core.file_lists import expand_paths, is_glob_pattern

    batch = len(specs) > 1 or any(p.is_dir() or is_glob_pattern(p) for p in specs)
    return (expand_paths([str(p) for p in specs], "images") if batch else specs), batch


def _listed_images(specs: list[Path]) -> tuple[list[Path], list[Path]]:
    """``specs`` with each ``@FILE`` as the paths FILE lists, one per line (a blank line, an
    editor's last, none), and the lists. Only the images are listed so: argparse's own
    ``@`` read every argument from files (``--boxes @b.csv`` looked for ``b.csv``), took a
    listed ``--overwrite`` for the option, and a binary file for a traceback."""
    images, lists = [], []
    for spec in specs:
        text = str(spec)
        if not text.startswith("@"):
            images.append(spec)
            continue
        listed = Path(text[1:]).expanduser()
        escape = f"a file whose name starts with @ is given as ./{text}"
        try:
            lines = listed.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(
                f"{text}: {str(listed)!r} is no list of images (text, a path per line); {escape}"
            ) from None
        except OSError as err:
            raise ValueError(
                f"{text}: the list {str(listed)!r} cannot be read ({err.strerror or err}); {escape}"
            ) from None
        images += [Path(line) for line in lines if line.strip()]
        lists.append(listed)
    if lists and not images:
        raise ValueError(f"{' '.join(map(str, specs))}: the list names no image")
    return images, lists


def run(args: argparse.Namespace) -> int:
    with option_wording(OPTION_NAMES):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    given = [OPTION_NAMES[name] for name in AUTO_OPTIONS if getattr(args, name) is not None]
    if given and not args.auto:  # it was ignored without a word
        raise ValueError(
            f"{' and '.join(given)} {'sets' if len(given) == 1 else 'set'} automatic "
            "segmentation (--auto), which prompt files do not use; remove "
            f"{'it' if len(given) == 1 else 'them'}, or segment with --auto instead of "
            "--points/--boxes"
        )
    output_text, args.output = args.output, Path(args.output)
    args.image, args.lists = _listed_images(args.image)
    files, batch = _inputs(args.image)
    if not batch:  # before -o, which is checked against it
        check_image_file(files[0])
    example = labels_file_name(files[0].stem)
    into_folder = args.output.is_dir() or output_text.endswith(("/", os.sep))
    if batch or (into_folder and args.auto):  # one image into a folder: as one of several
        return run_batch(args, files, into_folder)
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
    config = auto_config(args) if args.auto else None
    segmenter, model_name = load_segmenter(args)
    if args.auto:
        config = auto_config(args, segmenter.img_size)
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
    made = made_by(args, model_name, config, segmenter.model_id)
    written = write_labels(
        args.output, labels, files[0], planes.pixels, made, args.overwrite, into_folder
    )
    if written is None:  # checked at the start: saved meanwhile
        print(f"not written: {APPEARED.format(args.output)}", file=sys.stderr)
        return 1
    where = f" in {written.n_planes} of {planes.count} planes" if args.stack else ""
    print(
        f"{objects_text(written.n_objects)}{where} written to {shell_path(written.path)} "
        f"({using(segmenter, model_name)})"
    )
    return 0
