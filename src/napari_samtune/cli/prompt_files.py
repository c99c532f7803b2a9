"""Prompt files of ``samtune segment``: CSV with a header, pixel coordinates, x = column.

* points: ``x,y[,label][,object]``, or a points layer saved from napari
  (``axis-0,axis-1[,label]``, row before column); labels 1/0 or positive/negative. Without
  an ``object`` column each positive point is one object and negative points mark
  background for all of them (on their plane); with one, points of an object id form its
  prompt. Every object needs a positive point;
* boxes: ``x_min,y_min,x_max,y_max`` (``x_max``/``y_max`` may reach the image's far edges,
  ``W``/``H``, and are clipped to it), or a shapes layer saved from napari (each shape by
  its bounding box, clipped to the image, as the annotation widget reads its boxes);
* for a stack (``--stack``) each row also names its plane: a ``z`` column, or
  ``axis-0`` of a 3D napari points layer (without ``--stack`` a ``z`` column is refused,
  not ignored).

Other named columns are refused, a napari points layer's other features too: a column
not read (a misspelt ``lable``) would change the prompts without a word.

Every mistake is a ``ValueError`` naming the file, the line and the fix.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_samtune.cli.prompt_tables import (
    Rows,
    read_table,
    refuse_unknown,
    require,
    require_rows,
)
from napari_samtune.core.annotation_files import MAX_ID
from napari_samtune.core.coords import napari_to_sam
from napari_samtune.core.prompt_checks import check_boxes

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
PLANE_COLUMN = "z"
POINT_LABEL_WORDS = {"positive": 1, "negative": 0}  # what napari writes for our points layer


@dataclass(frozen=True)
class PointPrompts:
    """Points read from a CSV file."""

    points_xy: np.ndarray  # float64 (N, 2) image (x, y)
    labels: np.ndarray  # int64 (N,), 1 positive, 0 negative
    objects: np.ndarray | None  # int64 (N,) object ids, when the file has an "object" column
    planes: np.ndarray | None = None  # int64 (N,) plane of each point (--stack)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class BoxPrompts:
    """Boxes read from a CSV file."""

    boxes_xyxy: np.ndarray  # float64 (N, 4)
    planes: np.ndarray | None = None  # int64 (N,) plane of each box (--stack)
    ids_from: str = "data rows"  # what box i (object i + 1) is counted in

    def __len__(self) -> int:
        return len(self.boxes_xyxy)


def _refuse_planes(path: Path, header: list[str], stacked: bool) -> None:
    """A plane column without ``--stack`` would be ignored: prompts meant for several planes
    would all be put on the one 2D image."""
    if PLANE_COLUMN in header and not stacked:
        raise ValueError(
            f"{path}: column {PLANE_COLUMN!r} gives each prompt's plane, but without --stack "
            "the image is segmented as one 2D plane; pass --stack to segment each plane of a "
            f"stack, or remove the {PLANE_COLUMN!r} column"
        )


# What a column that is no number should hold, where it is not a pixel coordinate.
NUMBER_ADVICE: dict[str, str] = {
    "object": "object ids are whole numbers from 1, e.g. 1 for every point of the first object",
    PLANE_COLUMN: "planes are numbered from 0, e.g. 0 for the first plane",
    "index": "it numbers the shapes or points from 0, as napari saves them",
}


def _number(path: Path, line: int, row: dict, name: str) -> float:
    text = (row.get(name) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: column {name!r} is {text!r}, not a number; "
            + NUMBER_ADVICE.get(name, "write pixel coordinates as plain numbers, e.g. 12.5")
        ) from None
    if not np.isfinite(value):
        raise ValueError(f"{path}, line {line}: column {name!r} is {text!r}; use a finite number")
    return value


def _plane(path: Path, line: int, row: dict, name: str, n_planes: int) -> int:
    return _plane_index(path, line, _number(path, line, row, name), name, n_planes)


def _plane_index(path: Path, line: int, value: float, name: str, n_planes: int) -> int:
    if value != int(value) or not 0 <= value < n_planes:
        raise ValueError(
            f"{path}, line {line}: plane ({name}) is {value:g}; the image has {n_planes} "
            f"planes, numbered 0..{n_planes - 1}: give a whole number among them"
        )
    return int(value)


def _point_label(path: Path, line: int, row: dict) -> int:
    text = (row.get("label") or "").strip().lower()
    if text in POINT_LABEL_WORDS:
        return POINT_LABEL_WORDS[text]
    with contextlib.suppress(ValueError):
        if float(text) in (0.0, 1.0):
            return int(float(text))
    raise ValueError(
        f"{path}, line {line}: label is {text!r}; use 1 (or positive) for a positive and "
        "0 (or negative) for a negative point"
    )


def _check_inside(path: Path, line: int, x: float, y: float, shape: tuple[int, int]) -> None:
    """(x, y) must lie on the image: pixel centres at integers, so x in [-0.5, W - 0.5]."""
    height, width = shape
    if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
        raise ValueError(
            f"{path}, line {line}: (x={x:g}, y={y:g}) lies outside the image of width {width} "
            f"and height {height}; x is the column (0..{width - 1}), y the row "
            f"(0..{height - 1})"
        )


def _check_overlap(
    path: Path, line: int, box: tuple[float, float, float, float], shape: tuple[int, int]
) -> None:
    """A box must cover some of the image; the parts beyond its edges are clipped off, as
    the annotation widget and napari's shapes files have them (a detector's boxes, one drawn
    past the border). Its far corner may lie on the far edges as pixel-edge coordinates put
    them (x = W, y = H: ``0,0,W,H`` is the whole image)."""
    height, width = shape
    x_min, y_min, x_max, y_max = box
    # only touching an edge from outside covers no pixel: clipped, it would be a line
    wide, tall = x_min < x_max, y_min < y_max
    if (
        (x_max <= -0.5 if wide else x_max < -0.5)
        or (y_max <= -0.5 if tall else y_max < -0.5)
        or (x_min >= width - 0.5 if wide else x_min > width - 0.5)
        or (y_min >= height - 0.5 if tall else y_min > height - 0.5)
    ):
        raise ValueError(
            f"{path}, line {line}: the box ({x_min:g}, {y_min:g}, {x_max:g}, {y_max:g}) lies "
            f"outside the image of width {width} and height {height}; x is the column "
            f"(0..{width - 1}), y the row (0..{height - 1})"
        )


def _on_one_plane(path: Path, rows: Rows, what: str) -> None:
    """3D prompts (``axis-0`` = plane) for a 2D image: napari saves a layer so when the
    viewer also holds a stack. Taken as 2D where they all lie on one plane; else refused
    (it said to pass --stack, which the 2D image then refused)."""
    planes = sorted({_number(path, line, row, "axis-0") for line, row in rows})
    if len(planes) > 1:
        shown = ", ".join(f"{plane:g}" for plane in planes[:5])
        raise ValueError(
            f"{path} holds 3D {what} on {len(planes)} planes (axis-0: {shown}), as napari "
            "saves them for a stack; pass --stack for a stack, or, for this 2D image, save "
            f"the {what} of one plane"
        )


def _point_columns(
    path: Path, header: list[str], stacked: bool, rows: Rows
) -> tuple[str, str, str | None]:
    """The row, column and plane columns: ``y,x[,z]``, or the ``axis-*`` of a napari points
    layer (in napari's order: plane, row, column)."""
    axes = [name for name in header if name.startswith("axis-")]
    if "x" not in header and axes:
        if "shape-type" in header:
            raise ValueError(
                f"{path} holds shapes (a shapes layer saved from napari), not points: each "
                "corner would become a point; pass it with --boxes"
            )
        if axes not in (["axis-0", "axis-1"], ["axis-0", "axis-1", "axis-2"]):
            raise ValueError(
                f"{path} holds points with columns {axes!r}; give 2D points (axis-0, axis-1) or, "
                "with --stack, 3D points (axis-0 = plane, axis-1, axis-2)"
            )
        if len(axes) == 3 and not stacked:
            _on_one_plane(path, rows, "points")
            refuse_unknown(path, header, ("index", *axes, "label", "object"))
            return "axis-1", "axis-2", None
        if len(axes) == 2 and stacked and PLANE_COLUMN in header:  # a z column added
            refuse_unknown(path, header, ("index", *axes, "label", "object", PLANE_COLUMN))
            return "axis-0", "axis-1", PLANE_COLUMN
        if len(axes) == 2 and stacked:
            raise ValueError(
                f"{path} holds 2D points (axis-0, axis-1) and --stack needs each point's plane; "
                f"save the points layer of the stack (axis-0 = plane) or add a "
                f"{PLANE_COLUMN} column"
            )
        _refuse_planes(path, header, stacked)  # a z column added, without --stack
        refuse_unknown(path, header, ("index", *axes, "label", "object"))
        return ("axis-1", "axis-2", "axis-0") if stacked else ("axis-0", "axis-1", None)
    require(path, header, ("x", "y", PLANE_COLUMN) if stacked else ("x", "y"))
    _refuse_planes(path, header, stacked)
    refuse_unknown(path, header, ("x", "y", "label", "object", PLANE_COLUMN))
    return "y", "x", (PLANE_COLUMN if stacked else None)


def read_points_csv(
    path: Path, image_shape: tuple[int, int], n_planes: int | None = None
) -> PointPrompts:
    """Read and check a points file (see the module docstring) for (H, W) planes;
    ``n_planes`` is the number of planes of a stack (``--stack``), else ``None``."""
    header, rows = read_table(path)
    row_column, col_column, plane_column = _point_columns(path, header, n_planes is not None, rows)
    require_rows(path, rows)
    has_labels, has_objects = "label" in header, "object" in header
    points, labels, objects, planes = [], [], [], []
    for line, row in rows:
        row_col = (_number(path, line, row, row_column), _number(path, line, row, col_column))
        x, y = napari_to_sam(row_col)
        _check_inside(path, line, x, y, image_shape)
        label = _point_label(path, line, row) if has_labels else 1
        object_id = _number(path, line, row, "object") if has_objects else 0
        if has_objects and not (1 <= object_id <= MAX_ID and object_id == int(object_id)):
            raise ValueError(
                f"{path}, line {line}: object is {object_id:.15g}; object ids are whole numbers "
                f"from 1 to {MAX_ID} (the labels file's uint32 ids)"
            )
        if plane_column is not None:
            planes.append(_plane(path, line, row, plane_column, n_planes))
        points.append((x, y))
        labels.append(label)
        objects.append(int(object_id))
    prompts = PointPrompts(
        np.array(points, dtype=np.float64),
        np.array(labels, dtype=np.int64),
        np.array(objects, dtype=np.int64) if has_objects else None,
        np.array(planes, dtype=np.int64) if plane_column is not None else None,
    )
    _check_positive_points(path, prompts, [line for line, _ in rows])
    return prompts


def _check_positive_points(path: Path, prompts: PointPrompts, lines: list[int]) -> None:
    """Every object needs a positive point: negative points only refine one (with an
    'object' column), or mark background for all (without)."""
    if prompts.objects is None:
        if not prompts.labels.any():
            raise ValueError(
                f"{path} holds only negative points; add a positive point (label 1) on each "
                "object to segment"
            )
        return
    planes = np.zeros(len(prompts), np.int64) if prompts.planes is None else prompts.planes
    # each plane is segmented on its own: an object's negative points alone on one plane
    # were a prompt there, which made a spurious object of a neighbour
    pairs = zip(prompts.objects.tolist(), planes.tolist(), strict=True)
    for object_id, plane in dict.fromkeys(pairs):
        rows = np.flatnonzero((prompts.objects == object_id) & (planes == plane))
        if not prompts.labels[rows].any():
            where = f" on plane {plane}" if prompts.planes is not None else ""
            raise ValueError(
                f"{path}, line {lines[rows[0]]}: object {object_id} has only negative "
                f"points{where}; give it a positive point (label 1) on the object{where}"
            )


def read_boxes_csv(
    path: Path, image_shape: tuple[int, int], n_planes: int | None = None
) -> BoxPrompts:
    """Read and check a boxes file for (H, W) planes (``n_planes``: as for points)."""
    header, rows = read_table(path)
    if "shape-type" in header:
        return _napari_shapes(path, header, rows, image_shape, n_planes)
    require(path, header, (*BOX_COLUMNS, PLANE_COLUMN) if n_planes is not None else BOX_COLUMNS)
    _refuse_planes(path, header, n_planes is not None)
    refuse_unknown(path, header, (*BOX_COLUMNS, PLANE_COLUMN))
    require_rows(path, rows)
    boxes, planes = [], []
    for line, row in rows:
        x_min, y_min, x_max, y_max = (_number(path, line, row, name) for name in BOX_COLUMNS)
        if x_min > x_max or y_min > y_max:
            raise ValueError(
                f"{path}, line {line}: x_min > x_max or y_min > y_max in "
                f"({x_min:g}, {y_min:g}, {x_max:g}, {y_max:g}); swap the corners"
            )
        _check_overlap(path, line, (x_min, y_min, x_max, y_max), image_shape)
        if n_planes is not None:
            planes.append(_plane(path, line, row, PLANE_COLUMN, n_planes))
        boxes.append((x_min, y_min, x_max, y_max))
    return BoxPrompts(
        check_boxes(np.array(boxes, dtype=np.float64), image_shape),  # clipped to the image
        np.array(planes, dtype=np.int64) if n_planes is not None else None,
    )


def _napari_shapes(
    path: Path, header: list[str], rows: Rows, image_shape: tuple[int, int], n_planes: int | None
) -> BoxPrompts:
    """Boxes from a shapes layer saved by napari (``index,shape-type,vertex-index,axis-0,..``):
    each shape by its bounding box, clipped to the image, as the annotation widget reads its
    boxes layer; shape ``i`` (in file order) becomes object ``i + 1``."""
    axes = [name for name in header if name.startswith("axis-")]
    expected = ["axis-0", "axis-1", "axis-2"] if n_planes is not None else ["axis-0", "axis-1"]
    if n_planes is None and axes == ["axis-0", "axis-1", "axis-2"]:  # of a 2D image's plane
        require_rows(path, rows)
        _on_one_plane(path, rows, "shapes")
        expected = axes
    if axes != expected:
        raise ValueError(
            f"{path} holds shapes with columns {axes!r}; give 2D shapes (axis-0, axis-1) or, "
            "with --stack, the shapes layer of the stack (axis-0 = plane)"
        )
    require(path, header, ("index",))
    require_rows(path, rows)
    shapes: dict[float, list[tuple[int, list[float]]]] = {}  # index -> (line, vertex) rows
    for line, row in rows:
        vertex = [_number(path, line, row, name) for name in expected]
        shapes.setdefault(_number(path, line, row, "index"), []).append((line, vertex))
    height, width = image_shape
    boxes, planes = [], []
    for index, vertices in shapes.items():
        line, coords = vertices[0][0], np.array([vertex for _, vertex in vertices])
        if n_planes is not None:
            on_planes = np.unique(coords[:, 0])
            if len(on_planes) > 1:
                raise ValueError(
                    f"{path}, line {line}: shape {index:g} spans planes {on_planes.tolist()}; "
                    "draw each box on one plane"
                )
            planes.append(_plane_index(path, line, on_planes[0], "axis-0", n_planes))
        low, high = (
            napari_to_sam(coords[:, -2:].min(axis=0)),
            napari_to_sam(coords[:, -2:].max(axis=0)),
        )
        if high[0] < -0.5 or high[1] < -0.5 or low[0] > width - 0.5 or low[1] > height - 0.5:
            raise ValueError(
                f"{path}, line {line}: shape {index:g} lies outside the image of width {width} "
                f"and height {height}"
            )
        limit = np.array([width - 0.5, height - 0.5])
        boxes.append(np.concatenate([np.clip(low, -0.5, limit), np.clip(high, -0.5, limit)]))
    return BoxPrompts(
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        np.array(planes, dtype=np.int64) if n_planes is not None else None,
        ids_from="shapes, in file order",
    )
