"""The annotation widget's background jobs: plain functions run in thread workers.

Each takes the Segmenter and the image *data* (never a layer) with its layer's name
(``image_name``, for messages), yields
:class:`~napari_samtune._qt.workers.TaskProgress` and result dataclasses, and leaves
every layer update to the main thread. While one of these runs, it owns the
Segmenter: the widget makes no predictions until it has finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from napari_samtune._qt.annotate_notes import planes_phrase
from napari_samtune._qt.downloads import download_progress, fetch_model_file
from napari_samtune._qt.image_planes import ImageAxes
from napari_samtune._qt.propagate import PropagationConfig, iter_propagate, planes_past
from napari_samtune._qt.task_messages import logged_notes
from napari_samtune._qt.workers import TaskProgress
from napari_samtune.core.accelerate import cpu_has_fast_bf16
from napari_samtune.core.automatic import AutoSegmentConfig
from napari_samtune.core.embeddings import Tile
from napari_samtune.core.images import blank_problem
from napari_samtune.core.models import LoadedModel, load_model

LOAD_TASK = "loading model"
EMBED_TASK = "embedding"
AUTO_TASK = "automatic segmentation"
PROPAGATE_TASK = "propagation"
SAVE_TASK = "saving annotations"  # its errors read "saving annotations failed: …"
SEGMENTER_TASKS = (EMBED_TASK, AUTO_TASK, PROPAGATE_TASK)  # the jobs that use the Segmenter


@dataclass(frozen=True)
class PlaneResult:
    """Labels computed for one plane: uint32 (H, W); plane is None for a 2D image."""

    plane: int | None
    labels: np.ndarray


@dataclass(frozen=True)
class PlaneSkipped:
    """A plane of a run through several that could not be segmented (all NaN, say), and
    why; the run goes on with the next."""

    plane: int | None
    reason: str


def skipped_note(task: str, image: str, skipped: Sequence[PlaneSkipped]) -> str:
    """What ``task`` (e.g. "automatic segmentation") of image ``image`` could not do: the
    planes of its ``skipped``, and why."""
    planes = sorted(result.plane for result in skipped)
    where = planes_phrase(planes)
    reasons = "; ".join(dict.fromkeys(result.reason for result in skipped))
    return f"{task} skipped {where} of {image!r}, the others are done: {reasons}"


@dataclass(frozen=True)
class PropagationEnd:
    """Propagation ran to its end (it was not stopped and did not fail): the planes it
    reached, the start plane not among them, and the planes it kept out of (their own
    prompts) where it would have gone on."""

    planes: tuple[int, ...]
    kept_out: tuple[int, ...] = ()


Reporter = Callable[[TaskProgress], None]  # thread-safe progress sink (TaskRunner.report)


class JobStopped(Exception):
    """A job's ``stop`` event was set (the panel or the viewer closed, or its image went):
    raised between two tiles or batches of points, so that the job ends within one of
    them, not after the whole plane (a thread still running as Python exits ends in
    warnings about deleted Qt objects)."""


def _stop_checked(
    stop: threading.Event | None, progress: Callable[[int, int], None] | None = None
) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for the core that raises :class:`JobStopped`
    once ``stop`` is set, and otherwise passes on to ``progress``."""

    def checked(done: int, total: int) -> None:
        if stop is not None and stop.is_set():
            raise JobStopped
        if progress is not None:
            progress(done, total)

    return checked


def place_of(axes: ImageAxes, plane: int | None, image_name: str) -> str:
    """The image by its layer's name, or its plane as napari's slider shows it: "plane
    <index>/<last index> of '<name>'" (another image may be chosen while a job runs)."""
    if plane is None:
        return f"image {image_name!r}"
    return f"plane {plane}/{axes.n_planes - 1} of {image_name!r}"


def _set_plane(
    segmenter,
    axes: ImageAxes,
    data,
    plane: int | None,
    report: Reporter | None = None,
    image_name: str = "image",
    stop: threading.Event | None = None,
    of_planes: tuple[int, int] = (0, 1),
) -> None:
    """Embed ``plane``, its tiles reported as part of ``of_planes``: (planes done before
    it, planes in all) of a run through several."""
    where = place_of(axes, plane, image_name)
    before, planes = of_planes

    def tiles_done(done: int, total: int) -> None:
        if report is not None:
            message = f"embedding {where}: tile {done}/{total}"
            report(TaskProgress(before * total + done, planes * total, message))

    image = axes.plane(data, plane or 0)
    segmenter.set_image(
        image,
        progress=_stop_checked(stop, tiles_done),
        # a plane named as the slider shows it, a 2D image by its layer
        image_name=f"image layer {image_name!r}" if plane is None else where,
        **axes.segmenter_channel_args(),
    )


def iter_embed_planes(
    segmenter,
    axes: ImageAxes,
    data,
    planes: Sequence[int | None],
    report: Reporter,
    image_name: str = "image",
    stop: threading.Event | None = None,
) -> Iterator[TaskProgress | PlaneSkipped]:
    """Embed ``planes`` one after the other (cached on disk); returns the last plane
    embedded. Running through several, a plane that cannot be embedded (a padding plane
    without a finite pixel) is a :class:`PlaneSkipped` and the others are embedded; the
    first error is raised when none could be. Once ``stop`` is set, it ends after the
    tile in work, returning None."""
    embedded, first_error = None, None
    for done, plane in enumerate(planes):
        if len(planes) == 1:  # one plane: show its tiles
            try:
                _set_plane(segmenter, axes, data, plane, report, image_name, stop)
            except JobStopped:
                return None
            embedded = (plane,)
            continue
        yield TaskProgress(done, len(planes), f"embedding {place_of(axes, plane, image_name)}")
        try:  # its tiles move the bar within the plane (a large model's took minutes)
            _set_plane(segmenter, axes, data, plane, report, image_name, stop, (done, len(planes)))
        except JobStopped:
            return None
        except ValueError as err:
            first_error = first_error or err
            yield PlaneSkipped(plane, str(err))
            continue
        embedded = (plane,)
    if embedded is None:
        raise first_error
    segmenter.prepare_prompts()  # the plane the user prompts next: not at the first click
    return embedded[0]


def embed_views_job(
    segmenter,
    axes: ImageAxes,
    data,
    plane: int | None,
    views: Sequence[Tile],
    report: Reporter,
    image_name: str = "image",
    stop: threading.Event | None = None,
) -> int | None:
    """Embed views of ``plane`` that its prompts need (a prompt in no tile of a large image
    gets a view centred on it, see :meth:`.ViewPredictor.view_for`), so that the preview
    does not freeze the viewer for encoder passes; returns the plane, or None when
    ``stop`` was set."""
    where = place_of(axes, plane, image_name)

    def views_done(done: int, total: int) -> None:
        report(TaskProgress(done, total, f"embedding {where}: view {done}/{total} of a prompt"))

    try:
        _set_plane(segmenter, axes, data, plane, image_name=image_name, stop=stop)
        segmenter.embed_views(views, progress=_stop_checked(stop, views_done))
    except JobStopped:
        return None
    return plane


def iter_segment_automatically(
    segmenter,
    axes: ImageAxes,
    data,
    planes: Sequence[int | None],
    config: AutoSegmentConfig,
    report: Reporter,
    image_name: str = "image",
    stop: threading.Event | None = None,
) -> Iterator[TaskProgress | PlaneResult | PlaneSkipped]:
    """Automatic segmentation of each plane; yields a :class:`PlaneResult` per plane, or,
    running through several, a :class:`PlaneSkipped` for one that cannot be segmented (a
    padding plane without a finite pixel must not cost the planes after it). Once ``stop``
    is set, it ends after the batch of points in work, returning None."""
    for done, plane in enumerate(planes):
        where = place_of(axes, plane, image_name)
        yield TaskProgress(done, len(planes), f"segmenting {where} automatically…")
        try:
            _set_plane(segmenter, axes, data, plane, image_name=image_name, stop=stop)
            if segmenter.image_is_blank:  # "no objects: lower the thresholds" was said
                raise ValueError(blank_problem(where))
        except JobStopped:
            return None
        except ValueError as err:
            if len(planes) == 1:
                raise
            yield PlaneSkipped(plane, str(err))
            continue

        def steps(step: int, total: int, where: str = where, done: int = done) -> None:
            if len(planes) == 1:
                report(TaskProgress(step, total, f"segmenting {where}: {step}/{total}"))
                return
            # the bar moves within each plane too (a plane may take minutes): every plane
            # has as many batches of points
            of_all = f"segmenting {where} ({done + 1} of {len(planes)}): {step}/{total}"
            report(TaskProgress(done * total + step, len(planes) * total, of_all))

        try:
            labels = segmenter.segment_all(config, progress=_stop_checked(stop, steps))
        except JobStopped:
            return None
        yield PlaneResult(plane, np.asarray(labels, dtype=np.uint32))
    return planes[-1] if planes else None


def iter_propagate_object(
    segmenter,
    axes: ImageAxes,
    data,
    start_plane: int,
    start_mask: np.ndarray,
    config: PropagationConfig,
    keep_out: Collection[int] = frozenset(),
    image_name: str = "image",
    stop: threading.Event | None = None,
) -> Iterator[TaskProgress | PlaneResult]:
    """Carry one object's mask to neighbouring planes, not into those of ``keep_out`` (a
    set the main thread adds planes to while it runs, prompted meanwhile);
    yields a :class:`PlaneResult` for each plane reached, then a :class:`PropagationEnd`.
    Once ``stop`` is set, it ends after the tile in work (yielding no end)."""
    planes = iter_propagate(
        segmenter,
        lambda z: _set_plane(segmenter, axes, data, z, image_name=image_name, stop=stop),
        axes.n_planes,
        start_plane,
        start_mask,
        config,
        keep_out,
    )
    reached = []
    try:
        for plane, mask in planes:
            reached.append(plane)
            yield TaskProgress(
                len(reached), 0, f"propagated to plane {plane} ({len(reached)} reached)"
            )
            yield PlaneResult(plane, mask.astype(np.uint32))
    except JobStopped:
        return
    past = planes_past(start_plane, reached)
    yield PropagationEnd(tuple(reached), tuple(p for p in past if p in keep_out))


def load_model_job(
    source, device: str, report: Reporter, notes: list[str], stop: threading.Event
) -> LoadedModel:
    """Download (if needed, see :func:`~napari_samtune._qt.downloads.fetch_model_file`:
    progress in bytes, stopped once ``stop`` is set) and load a model; what the download
    says besides (a damaged cached file moved aside) is appended to ``notes``."""
    with logged_notes("napari_samtune.core.download", notes):
        fetch_model_file(source, report, stop)
        loaded = load_model(source, device=device, progress=download_progress(source, report, stop))
    if next(loaded.sam.parameters()).device.type == "cpu":
        # here, not in the Segmenter the viewer's thread builds: on a CPU with bf16
        # instructions the first call times bf16 against fp32 products (0.1-0.2 s, once)
        cpu_has_fast_bf16()
    return loaded
