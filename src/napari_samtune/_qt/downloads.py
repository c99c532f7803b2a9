"""Model downloads that a widget's worker starts: progress in the widget, and a stop.

Loading a model (Annotate) or training one (Finetune) may first download gigabytes
(vit_h: 2.5 GB). The worker downloads through :func:`fetch_model_file`, whose progress
moves the widget's bar and label ("downloading vit_h: 1.2 / 2.6 GB (46%)"). Once the
widget sets the job's stop event (Cancel, Stop, the panel or the viewer closed) the
download stops at its next chunk with
:class:`~napari_samtune.core.fetch.DownloadStopped`: what arrived is kept, the bytes are
checked against the published hash when the next download resumes there. Nothing here
touches a widget: progress goes through a thread-safe ``report``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from napari_samtune._qt.workers import TaskProgress
from napari_samtune.core.fetch import DownloadStopped, ProgressCallback

Reporter = Callable[[TaskProgress], None]  # thread-safe progress sink (TaskRunner.report)
BAR_UNIT = 1000  # bytes per step of the bar: a QProgressBar counts in 32-bit ints (2 TB)

_UNITS = (("GB", 1e9, 1), ("MB", 1e6, 1), ("kB", 1e3, 0))  # (name, bytes, decimals)


def _unit_of(n_bytes: int) -> tuple[str, float, int]:
    return next((unit for unit in _UNITS if n_bytes >= unit[1]), ("B", 1, 0))


def _in_unit(n_bytes: int, unit: tuple[str, float, int]) -> str:
    _, size, decimals = unit
    return f"{n_bytes / size:.{decimals}f}"


def size_text(n_bytes: int) -> str:
    """``n_bytes`` for people: "2.6 GB", "340.2 MB", "12 kB" (powers of 1000, as servers say)."""
    unit = _unit_of(n_bytes)
    return f"{_in_unit(n_bytes, unit)} {unit[0]}"


def download_text(name: str, done: int, total: int | None) -> str:
    """ "downloading vit_h: 1.2 / 2.6 GB (46%)"; without a total "downloading vit_h: 1.2 GB"."""
    if not total:
        return f"downloading {name}: {size_text(done)}"
    amount = _in_unit(done, _unit_of(total))
    return f"downloading {name}: {amount} / {size_text(total)} ({100 * done // total}%)"


def download_progress(name: str, report: Reporter, stop: threading.Event) -> ProgressCallback:
    """The ``progress(bytes_done, bytes_total)`` callback of a widget's download of ``name``:
    reports each chunk, and raises :class:`DownloadStopped` once ``stop`` is set."""

    def progress(done: int, total: int | None) -> None:
        if stop.is_set():
            raise DownloadStopped()
        report(
            TaskProgress(
                done // BAR_UNIT, (total or 0) // BAR_UNIT, download_text(name, done, total)
            )
        )

    return progress


def fetch_model_file(model: str | Path, report: Reporter, stop: threading.Event) -> None:
    """Download the weights of the built-in model ``model`` unless they are there already
    (a user model or a weights file needs no download), so that the core then loads them
    without a download that nothing could stop. Raises :class:`DownloadStopped` once
    ``stop`` is set, the core's download errors otherwise."""
    from napari_samtune.core.download import ensure_model_file
    from napari_samtune.core.registry import builtin_model

    spec = builtin_model(model) if isinstance(model, str) else None
    if spec is None or spec.url is None:
        return
    ensure_model_file(spec, progress=download_progress(model, report, stop))
    report(TaskProgress(0, 0, f"loading {model}…"))
