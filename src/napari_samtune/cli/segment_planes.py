"""The planes of ``samtune segment``'s input and how each is segmented from prompt rows
or automatically; Qt-free, used by :mod:`napari_samtune.cli.segment`."""

from __future__ import annotations

import argparse
import contextlib
import warnings
from pathlib import Path

import numpy as np

from napari_samtune.cli.prompt_files import BoxPrompts, PointPrompts
from napari_samtune.core.prompt_checks import check_boxes


class Progress:
    """A progress bar created on the first ``(done, total)`` call."""

    def __init__(self, description: str, unit: str, leave: bool = True) -> None:
        self.description, self.unit, self.bar = description, unit, None
        self.leave = leave  # False: the bar goes once done (a plane's, under the planes' bar)

    def __call__(self, done: int, total: int) -> None:
        from napari_samtune.core.progress import progress_bar

        if self.bar is None:
            scale = {"unit_scale": True, "unit_divisor": 1024} if self.unit == "B" else {}
            self.bar = progress_bar(total, self.description, self.unit, self.leave, **scale)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _renumber(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Labels whose id ``i + 1`` becomes ``ids[i]`` (0 stays 0)."""
    lookup = np.zeros(len(ids) + 1, dtype=np.uint32)
    lookup[1:] = ids
    return lookup[labels]


def _segment_points(segmenter, prompts: PointPrompts, rows: np.ndarray) -> np.ndarray:
    """Labels of the image set in ``segmenter`` from the points in ``rows`` (file row
    indices): without an object column, the positive point in row ``i`` gives object
    ``i + 1``, with the negative points of ``rows`` as background."""
    points, point_labels = prompts.points_xy[rows], prompts.labels[rows]
    if prompts.objects is None:
        positive = point_labels == 1
        if positive.all():
            return _renumber(segmenter.predict_points_batched(points), rows + 1)
        return _with_shared_negatives(segmenter, points, positive, rows + 1)
    from napari_samtune.core.click_chain import ClickChain

    objects = prompts.objects[rows]
    labels = np.zeros(segmenter.image_shape, dtype=np.uint32)
    for object_id in dict.fromkeys(objects.tolist()):  # in order of appearance
        # click by click, as the widget answers them and SAM is trained (all at once: nano's
        # IoU 0.765 where 0.882 with 3 corrective clicks), from its first positive point
        order = np.flatnonzero(objects == object_id)
        prediction = ClickChain().predict(segmenter, points[order], point_labels[order])
        labels[prediction.mask & (labels == 0)] = object_id  # earlier objects keep overlaps
    return labels


def _with_shared_negatives(
    segmenter, points: np.ndarray, positive: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    """One object per positive point, each prompted with every negative point too (where
    objects overlap, the larger logit wins)."""
    none = np.zeros((0, 4))
    labels = segmenter.predict_with_negatives(none, points[positive], points[~positive])
    return _renumber(labels, ids[positive])


def _prompt_views(
    segmenter, points: PointPrompts | None, boxes: BoxPrompts | None, rows: np.ndarray
) -> list:
    """The views (tiles, or views made for prompts in no tile) the prompts in ``rows`` are
    decoded on, as :func:`_segment_points` and :func:`_segment_boxes` prompt them: embedded
    first with a bar, and no others (a few boxes on a large image need only their tiles)."""
    if boxes is not None:
        clipped = check_boxes(boxes.boxes_xyxy[rows], segmenter.image_shape)
        corners = [box.reshape(2, 2) for box in clipped]
    elif points.objects is not None:
        objects = points.objects[rows]
        corners = [points.points_xy[rows][objects == i] for i in dict.fromkeys(objects.tolist())]
    else:
        xy, positive = points.points_xy[rows], points.labels[rows] == 1
        near = [segmenter.within_view_of(point[None], xy[~positive]) for point in xy[positive]]
        corners = [np.vstack([point[None], n]) for point, n in zip(xy[positive], near, strict=True)]
    views = dict.fromkeys(segmenter.view_for(c) for c in corners)
    return [segmenter.view_tile(view) for view in views]


def _segment_boxes(segmenter, prompts: BoxPrompts, rows: np.ndarray) -> np.ndarray:
    """Labels from the boxes in ``rows``; the box in row ``i`` gives object ``i + 1``."""
    return _renumber(segmenter.predict_boxes(prompts.boxes_xyxy[rows]), rows + 1)


class Planes:
    """The planes of the input image, normalised for SAM one at a time."""

    def __init__(self, image: np.ndarray, axes: str, path: Path, args: argparse.Namespace) -> None:
        """``image`` as read from ``path``, with the ``axes`` the file names for it."""
        from napari_samtune.core.images import (
            blank_problem,
            check_some_pixel_finite,
            is_blank,
            plane_channel_axis,
            planes_first,
            to_sam_rgb,
        )
        from napari_samtune.core.tiff_files import channel_axis_for

        self.pixels = image  # as read: its fingerprint goes into the labels' record
        check_some_pixel_finite(image, str(path))
        self.image, self.stacked, self.channels = image, args.stack, args.channels
        given = args.channel_axis  # else the one the file's metadata names (ImageJ's C)
        channel_axis = self.channel_axis = channel_axis_for(axes, image.ndim, given, str(path))
        if args.stack and given is None and image.ndim == 3 and channel_axis == 0:
            # the only axis besides the rows and columns: the planes --stack asks for
            # (tifffile.imwrite(..., imagej=True) names that of any 3D array C); refused,
            # with advice to give a channel axis the file does not have
            warnings.warn(
                f"{path.name}: the file names its first axis C (channels); with --stack it is "
                "read as the planes (save it with metadata={'axes': 'ZYX'} to name them so)",
                UserWarning,
                stacklevel=2,
            )
            channel_axis = self.channel_axis = None
        declared = channel_axis if given is None else None
        option = (
            f"--channel-axis {given}"
            if declared is None
            else f"channels on axis {declared}, as {path}'s metadata says"
        )
        self._to_rgb, self._first = to_sam_rgb, None
        if self.stacked:
            if image.ndim < 3 or _one_plane_with_axes_of_one_entry(image.shape):
                raise ValueError(
                    f"--stack: {path} has shape {image.shape!r}, a single 2D plane; "
                    "leave out --stack"
                )
            _refuse_thin_planes(path, image.shape)
            _refuse_planes_on_two_axes(path, axes, image.shape)
            self.image, axis = planes_first(image, channel_axis)  # (C, Z, H, W) too
            try:
                self.channel_axis = plane_channel_axis(axis, image.ndim)
            except ValueError as err:
                raise ValueError(f"--stack with {option}: {err}") from None
        try:
            first = self.rgb(0)
        except ValueError as err:
            if declared is not None:
                stack = "; pass --stack to segment each plane" if image.ndim > 3 else ""
                stack = "" if self.stacked else stack
                raise ValueError(f"{option}: {err}{stack}") from None
            if given is not None or image.ndim < 3:
                raise  # the hints below are for an image given without channel options
            if not self.stacked:
                raise _planes_or_channels(err, image.shape, args.channels, axes) from None
            if args.channels is None and image.ndim == 4:
                raise _stack_channels_unclear(path, image.shape) from None
            if self.image.ndim == 3:  # its planes were called "2D grayscale": a stack's are
                raise ValueError(
                    f"--stack with --channels: {path} has shape {image.shape!r}, a stack of "
                    f"{image.shape[0]} grayscale planes, with no channels to choose from; "
                    "segment it without --channels (a folder mixing it with multichannel "
                    "images takes a run for each)"
                ) from None
            raise
        if not self.stacked and is_blank(first):  # a stack may hold empty planes
            raise ValueError(blank_problem(str(path)) + " (--channels)")
        self._first = first  # normalised once: it is the first plane segmented
        self.shape: tuple[int, int] = first.shape[:2]
        self.count = self.image.shape[0] if self.stacked else 1

    def rgb(self, index: int) -> np.ndarray:
        if index == 0 and self._first is not None:
            first, self._first = self._first, None
            return first
        plane = self.image[index] if self.stacked else self.image
        return self._to_rgb(plane, self.channel_axis, self.channels)


def _planes_or_channels(
    err: ValueError, shape: tuple[int, ...], channels: tuple[int, ...] | None, axes: str = ""
) -> ValueError:
    """The core's refusal of an image of more axes than a plane, with both ways on: planes
    (``--stack``) or channels. Without ``--channels`` it is the core's ambiguous channel
    axis, whose own advice names the options again: given once here, with their values. A
    file that names its first axis Z or T (ImageJ, OME-TIFF) is a stack: only ``--stack``."""
    if len(axes) == len(shape) == 3 and axes[0] in "ZT" and axes[1:] == "YX":
        kind = "z-stack" if axes[0] == "Z" else "time series"
        return ValueError(
            f"image has shape {shape!r}, a {kind} of {shape[0]} planes as its file names its "
            f"axes ({axes}); pass --stack to segment each plane"
        )
    ambiguous = channels is None and "channel axis is ambiguous" in str(err)
    problem = f"image has shape {shape!r} and its channel axis is ambiguous" if ambiguous else err
    channel_options = (
        "--channel-axis (e.g. 0 or -1) and --channels (one index, used as gray, or three, as RGB)"
        if ambiguous
        else "--channel-axis and --channels"
    )
    if _thin_planes(shape) and shape[-1] <= 4:  # --stack refuses it as channels
        return ValueError(
            f"{problem}: its last axis holds {shape[-1]} channels (too few pixels to be the "
            f"planes of a stack); pass {channel_options.replace('(e.g. 0 or -1)', '-1')}"
        )
    return ValueError(
        f"{problem}. For a z-stack or time series (planes first) pass --stack; for channels "
        f"pass {channel_options}"
    )


def _one_plane_with_axes_of_one_entry(shape: tuple[int, ...]) -> bool:
    """A 2D plane saved with more axes of one entry, not all of them first ((H, W, 1, 1)):
    as a stack its planes would be 1 pixel wide. (1, H, W) and (1, 1, H, W) are a stack of
    one plane, which is segmented as it should be."""
    longer = [axis for axis, size in enumerate(shape) if size > 1]
    return len(longer) == 2 and longer != [len(shape) - 2, len(shape) - 1]


THINNEST_PLANE = 16  # pixels: a stack whose planes would be thinner is read the wrong way


def _thin_planes(shape: tuple[int, ...]) -> bool:
    """Whether (Z, H, W) planes of an image of ``shape`` would be too thin to be planes:
    a (H, W, C) image, or a stack saved planes last."""
    return len(shape) == 3 and shape[-1] < min(THINNEST_PLANE, shape[0])


def _refuse_thin_planes(path: Path, shape: tuple[int, ...]) -> None:
    """--stack reads (Z, H, W): a (H, W, C) image or a stack saved planes last (as MATLAB
    saves them) would be segmented as H slivers a few pixels wide, without a word."""
    if not _thin_planes(shape):
        return
    if shape[-1] <= 4:
        kind = "(RGB, RGBA...)" if shape[-1] >= 3 else "(pass --channel-axis -1 --channels)"
        raise ValueError(
            f"--stack: {path} has shape {shape!r}, an image with {shape[-1]} channels last "
            f"{kind}, not a stack: its planes would be {shape[1]}x{shape[2]} pixels; "
            "leave out --stack"
        )
    raise ValueError(
        f"--stack: {path} has shape {shape!r}: its planes would be {shape[1]}x{shape[2]} "
        f"pixels, so its {shape[-1]} planes are probably on the last axis; --stack needs "
        "them first (Z, H, W): save it again with the planes first, e.g. in Python "
        "tifffile.imwrite(out, numpy.moveaxis(image, -1, 0))"
    )


def _refuse_planes_on_two_axes(path: Path, axes: str, shape: tuple[int, ...]) -> None:
    """A hyperstack of time points and z planes (ImageJ's TZCYX): --stack goes through
    planes along one axis; taken as channels, one of the two lost its planes."""
    if len(axes) != len(shape):
        return
    # named ones only: tifffile calls the axes of an array saved without metadata Q
    along = [axis for axis, size in zip(axes, shape, strict=True) if axis in "TZ" and size > 1]
    if len(along) > 1:
        raise ValueError(
            f"--stack: {path} has axes {axes} (shape {shape!r}), planes along "
            f"{' and '.join(along)}; --stack segments planes along one axis: save each "
            f"{along[0]} (e.g. each time point) as its own file and segment those"
        )


def _stack_channels_unclear(path: Path, shape: tuple[int, ...]) -> ValueError:
    """The error for a stack with channels whose channel axis cannot be guessed. The core's
    own hint ("e.g. 0 or -1") counts the axes of one plane, but --channel-axis counts those
    of the whole stack: 0 there takes the channels for the planes' axis, a silent swap."""
    return ValueError(
        f"--stack: {path} has shape {shape!r}, planes with channels on an axis that cannot "
        "be guessed; pass --channel-axis, counted in the whole stack (1 for (Z, C, H, W), "
        "0 for (C, Z, H, W), -1 for (Z, H, W, C)), and --channels (one index, or three for RGB)"
    )


def optional_bar(show: bool, description: str, unit: str, leave: bool = True):
    """A :class:`Progress` bar, or (when not ``show``) a context that gives ``None``."""
    return Progress(description, unit, leave) if show else contextlib.nullcontext()


def no_progress(done: int, total: int | None) -> None:
    """A progress callback that shows nothing: a download given ``None`` draws its own bar."""


def download_bar(show: bool):
    """A model download's progress callback as a context: a :class:`Progress` bar if
    ``show``, else :func:`no_progress` (``--no-progress``)."""
    return Progress("downloading model", "B") if show else contextlib.nullcontext(no_progress)


def segment_planes(
    segmenter,
    planes: Planes,
    points: PointPrompts | None,
    boxes: BoxPrompts | None,
    config,
    bars: bool = True,
    name: str = "",
) -> tuple[np.ndarray, list[int]]:
    """uint32 labels, (H, W) or (planes, H, W): each prompted plane (every plane with
    ``--auto``, ids made unique across the stack) is embedded and segmented in turn;
    ``bars``: show progress bars (embedding and segmenting, and for a stack its planes:
    a plane of ``--auto`` may take minutes, and the planes' bar moved only between them).

    Also the planes left empty because they are blank (one value everywhere as SAM sees
    them: any mask there would be made up, as the widget says), said on stderr (of the
    image ``name``, where several are segmented).
    """
    from napari_samtune.core.images import is_blank

    labels = np.zeros((planes.count, *planes.shape), dtype=np.uint32)
    blank: list[int] = []
    prompts = points if points is not None else boxes
    if prompts is not None:
        row_planes = np.zeros(len(prompts), np.int64) if prompts.planes is None else prompts.planes
        todo = sorted(set(row_planes.tolist()))  # planes without prompts stay empty
        segment_rows = _segment_points if points is not None else _segment_boxes
    else:
        todo = list(range(planes.count))
    offset, stacked = 0, planes.stacked
    with optional_bar(bars and stacked, "segmenting planes", "plane") as plane_bar:
        for done, index in enumerate(todo):
            of = f" plane {index}" if stacked else ""
            rgb = planes.rgb(index)
            if is_blank(rgb):  # (a single image that is blank is refused when read)
                blank.append(index)
            elif prompts is not None:
                rows = np.flatnonzero(row_planes == index)
                segmenter.set_image(rgb, embed=False)
                views = _prompt_views(segmenter, points, boxes, rows)
                with optional_bar(bars, f"embedding{of}", "view", not stacked) as bar:
                    segmenter.embed_views(views, progress=bar)
                labels[index] = segment_rows(segmenter, prompts, rows)
            else:
                with optional_bar(bars, f"embedding{of}", "tile", not stacked) as bar:
                    segmenter.set_image(rgb, progress=bar)
                with optional_bar(bars, f"segmenting{of}", "batch", not stacked) as bar:
                    found = segmenter.segment_all(config, progress=bar)
                labels[index] = np.where(found > 0, found + offset, 0)
                offset = max(offset, int(labels[index].max()))
            if plane_bar is not None:
                plane_bar(done + 1, len(todo))
    if blank:
        _say_blank(blank, None if prompts is None else row_planes, name)
    return (labels if planes.stacked else labels[0]), blank


def _say_blank(blank: list[int], row_planes: np.ndarray | None, name: str = "") -> None:
    """The note that the planes ``blank`` (of image ``name``) are left empty, with the
    prompts on them where the rows' planes ``row_planes`` are given."""
    import sys

    from tqdm import tqdm

    from napari_samtune.core.images import blank_problem
    from napari_samtune.core.label_files import describe_names

    planes = describe_names([str(i) for i in blank], limit=10)
    prompted = ""
    if row_planes is not None:
        n = int(np.isin(row_planes, blank).sum())
        prompted = f", with the {n} prompt{'s' if n != 1 else ''} there"
    of = f"{name}: " if name else ""
    each = "it" if len(blank) == 1 else "each"
    tqdm.write(
        f"note: {of}plane{'s' if len(blank) > 1 else ''} {planes} "
        f"{'are' if len(blank) > 1 else 'is'} left empty{prompted}: " + blank_problem(each),
        file=sys.stderr,
    )
