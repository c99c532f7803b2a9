"""``samtune segment``: segment an image from prompt files, or automatically; write labels.

Prompt files are CSV with a header; coordinates are pixels, x = column, y = row:

* points: ``x,y,label`` (label 1 positive, 0 negative). Each positive point is one
  object. To refine an object with several points (negative ones included), add
  an ``object`` column: rows with the same object id form one prompt, and the
  object gets that id in the labels.
* boxes: ``x_min,y_min,x_max,y_max``; box ``i`` (0-based row) becomes object ``i + 1``.

The output is a uint32 TIFF of instance labels (0 = background).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_samtune.cli import output_file

POINT_COLUMNS = ("x", "y", "label")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
AUTO_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_area")


def _channels(text: str) -> tuple[int, ...]:
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a channel list; give one index (e.g. 1) or three (e.g. 0,1,2)"
        ) from None
    if len(channels) not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: give one channel index or three")
    return channels


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image from point/box CSV prompts, or automatically",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", type=Path, help="TIFF image: 2D, RGB or multichannel")
    parser.add_argument("--model", required=True, help="model name (see `samtune models`) or path")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--points", type=Path, metavar="POINTS.csv", help="x,y,label[,object]")
    prompts.add_argument("--boxes", type=Path, metavar="BOXES.csv", help="x_min,y_min,x_max,y_max")
    prompts.add_argument("--auto", action="store_true", help="segment everything automatically")
    output = output_file("labels.tif")
    parser.add_argument("-o", "--output", type=output, required=True, metavar="LABELS.tif")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--channel-axis", type=int, default=None, help="axis holding channels")
    parser.add_argument("--channels", type=_channels, default=None, help="i (gray) or i,j,k (RGB)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache embeddings on disk")
    auto = parser.add_argument_group("automatic segmentation (--auto; defaults as in SAM)")
    auto.add_argument("--points-per-side", type=int, help="point grid side per tile")
    auto.add_argument("--pred-iou-thresh", type=float, help="minimum predicted IoU")
    auto.add_argument("--stability-score-thresh", type=float, help="minimum stability score")
    auto.add_argument("--min-area", type=int, help="smallest object kept, in pixels")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class PointPrompts:
    """Points read from a CSV file."""

    points_xy: np.ndarray  # float64 (N, 2) image (x, y)
    labels: np.ndarray  # int64 (N,), 1 positive, 0 negative
    objects: np.ndarray | None  # int64 (N,) object ids, when the file has an "object" column


def _read_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """Yield (line number, {column: float}) for each data row of a CSV prompt file."""
    if not path.is_file():
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing!r} (header is {header!r}); the first line "
                f"must name the columns: {','.join(required)}"
            )
        reader.fieldnames = header
        columns = [*required, *(name for name in optional if name in header)]
        n_rows = 0
        for row in reader:
            n_rows += 1
            yield (
                reader.line_num,
                {name: _number(path, reader.line_num, row, name) for name in columns},
            )
    if n_rows == 0:
        raise ValueError(f"{path} has a header but no rows; add one prompt per line")


def _number(path: Path, line: int, row: dict, name: str) -> float:
    text = (row.get(name) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: column {name!r} is {text!r}, not a number; "
            "write pixel coordinates and labels as plain numbers, e.g. 12.5"
        ) from None
    if not np.isfinite(value):
        raise ValueError(f"{path}, line {line}: column {name!r} is {text!r}; use a finite number")
    return value


def _check_inside(path: Path, line: int, x: float, y: float, shape: tuple[int, int]) -> None:
    height, width = shape
    if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
        raise ValueError(
            f"{path}, line {line}: (x={x:g}, y={y:g}) lies outside the image of width {width} "
            f"and height {height}; x is the column (0..{width - 1}), y the row (0..{height - 1})"
        )


def read_points_csv(path: Path, image_shape: tuple[int, int]) -> PointPrompts:
    """Read and check a points file (see the module docstring) for an (H, W) image."""
    points, labels, objects = [], [], []
    has_objects = False
    for line, row in _read_rows(path, POINT_COLUMNS, ("object",)):
        _check_inside(path, line, row["x"], row["y"], image_shape)
        if row["label"] not in (0.0, 1.0):
            raise ValueError(
                f"{path}, line {line}: label is {row['label']:g}; use 1 for a positive and "
                "0 for a negative point"
            )
        has_objects = "object" in row
        if has_objects and (row["object"] < 1 or row["object"] != int(row["object"])):
            raise ValueError(
                f"{path}, line {line}: object is {row['object']:g}; object ids are whole "
                "numbers >= 1"
            )
        if not has_objects and row["label"] == 0:
            raise ValueError(
                f"{path}, line {line}: a negative point needs to say which object it refines; "
                "add an 'object' column giving the points of one object the same id"
            )
        points.append((row["x"], row["y"]))
        labels.append(int(row["label"]))
        objects.append(int(row.get("object", 0)))
    return PointPrompts(
        np.array(points, dtype=np.float64),
        np.array(labels, dtype=np.int64),
        np.array(objects, dtype=np.int64) if has_objects else None,
    )


def read_boxes_csv(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Read and check a boxes file; float64 (N, 4) XYXY boxes."""
    boxes = []
    for line, row in _read_rows(path, BOX_COLUMNS):
        x_min, y_min, x_max, y_max = (row[name] for name in BOX_COLUMNS)
        if x_min > x_max or y_min > y_max:
            raise ValueError(
                f"{path}, line {line}: x_min > x_max or y_min > y_max in "
                f"({x_min:g}, {y_min:g}, {x_max:g}, {y_max:g}); swap the corners"
            )
        _check_inside(path, line, x_min, y_min, image_shape)
        _check_inside(path, line, x_max, y_max, image_shape)
        boxes.append((x_min, y_min, x_max, y_max))
    return np.array(boxes, dtype=np.float64)


def read_image(path: Path) -> np.ndarray:
    """The pixels of a TIFF file."""
    import tifffile

    if not path.is_file():
        raise ValueError(f"image {str(path)!r} does not exist")
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises several types for files it cannot parse
        raise ValueError(f"cannot read {str(path)!r} as a TIFF image ({err})") from None


class _Progress:
    """A tqdm bar created on the first ``(done, total)`` call."""

    def __init__(self, description: str, unit: str) -> None:
        self.description, self.unit, self.bar = description, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit=self.unit)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _segment_points(segmenter, prompts: PointPrompts) -> np.ndarray:
    if prompts.objects is None:
        return segmenter.predict_points_batched(prompts.points_xy)
    labels = np.zeros(segmenter.image_shape, dtype=np.uint32)
    for object_id in dict.fromkeys(prompts.objects.tolist()):  # in order of appearance
        rows = prompts.objects == object_id
        single_click = rows.sum() == 1
        prediction = segmenter.predict(
            prompts.points_xy[rows], prompts.labels[rows], multimask=single_click
        )
        labels[prediction.mask & (labels == 0)] = object_id  # earlier objects keep overlaps
    return labels


def _report_empty(labels: np.ndarray, expected_ids, ids_from: str) -> None:
    """Tell on stderr which prompted objects got no pixels, rather than dropping them quietly.
    ``ids_from``: where the ids come from, "data rows" (counted from 1) or the object column."""
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


def _auto_config(args: argparse.Namespace):
    from napari_samtune.core.automatic import AutoSegmentConfig

    overrides = {name: getattr(args, name) for name in AUTO_OPTIONS}
    return AutoSegmentConfig(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    import tifffile

    from napari_samtune.core.checkpoints import atomic_write
    from napari_samtune.core.devices import resolve_device
    from napari_samtune.core.images import to_sam_rgb
    from napari_samtune.core.models import load_model
    from napari_samtune.core.predict import Segmenter

    rgb = to_sam_rgb(read_image(args.image), args.channel_axis, args.channels)
    shape = rgb.shape[:2]
    # read prompts and settings before loading the model, so mistakes show up at once
    points = read_points_csv(args.points, shape) if args.points else None
    boxes = read_boxes_csv(args.boxes, shape) if args.boxes else None
    config = _auto_config(args) if args.auto else None
    device = resolve_device(args.device)
    with _Progress("downloading model", "B") as progress:
        loaded = load_model(args.model, device=device, progress=progress)
    segmenter = Segmenter(
        loaded.sam, model_id=loaded.model_id, device=device, use_disk_cache=not args.no_cache
    )
    with _Progress("embedding", "tile") as progress:
        segmenter.set_image(rgb, progress=progress)
    if points is not None:
        labels = _segment_points(segmenter, points)
        if points.objects is None:
            _report_empty(labels, range(1, len(points.labels) + 1), "data rows")
        else:
            _report_empty(labels, points.objects, "'object' column")
    elif boxes is not None:
        labels = segmenter.predict_boxes(boxes)
        _report_empty(labels, range(1, len(boxes) + 1), "data rows")
    else:
        with _Progress("segmenting", "batch") as progress:
            labels = segmenter.segment_all(config, progress=progress)
    atomic_write(args.output, lambda tmp: tifffile.imwrite(tmp, labels))
    n_objects = len(np.unique(labels)) - 1
    noun = "object" if n_objects == 1 else "objects"
    print(f"{n_objects} {noun} written to {args.output} (model {loaded.name}, device {device})")
    return 0
