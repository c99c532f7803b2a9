"""Progress bars for long work, readable in a terminal and in a log file alike.

On a terminal a tqdm bar redraws itself in place with carriage returns. Written to a
file (``samtune train ... 2> train.log``, a batch job, ``torchrun`` logs), every redraw
would land there: several a second for hours, run together by carriage returns. So off
a terminal the same bar writes whole lines, in ASCII, at most every ``log_interval_s``.
In a Jupyter notebook it is tqdm's notebook widget, as ``tqdm.auto`` would choose.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from napari_samtune.core.config_checks import kind_of

LOG_INTERVAL_S = 30.0  # seconds between progress lines off a terminal


class _WholeLines:
    """A text stream that turns tqdm's in-place redraws into separate lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.split("\r"):
            line = part.strip()
            if line:  # tqdm clears a bar by drawing blanks: nothing to log
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: IO[str] | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    total: float | None,
    desc: str,
    unit: str = "it",
    leave: bool = True,
    log_interval_s: float | None = None,
    **options: Any,
):
    """A tqdm bar on stderr: in place on a terminal (or a notebook's widget), else a line
    per ``log_interval_s``.

    Off a terminal a bar that clears itself (``leave=False``, e.g. an epoch's, whose result
    the caller writes as a line of its own) writes its first line only once
    ``log_interval_s`` has passed: work shorter than that leaves no line behind, where a
    "0/N" line at its start was all it logged.

    ``log_interval_s`` None: :data:`LOG_INTERVAL_S`. ``options`` go to tqdm (e.g.
    ``unit_scale``). Returns the ``tqdm`` instance.
    """
    from tqdm import autonotebook, std, tqdm

    if log_interval_s is None:
        log_interval_s = LOG_INTERVAL_S

    stream = sys.stderr
    if stream is None:  # closed (2>&-): nowhere to show it; the work goes on
        return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=True, **options)
    if autonotebook.tqdm is not std.tqdm:  # a Jupyter kernel: its widget, not text
        return autonotebook.tqdm(total=total, desc=desc, unit=unit, leave=leave, **options)
    if _is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, leave=leave, **options)
    # miniters=1: every update checks the time, and a line is due when log_interval_s has
    # passed since the last one. tqdm's default (dynamic miniters) lets its monitor thread
    # force a redraw every maxinterval (10 s), which here would be a line each time.
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        file=_WholeLines(stream),
        mininterval=log_interval_s,
        miniters=1,
        delay=0 if leave else log_interval_s,
        ascii=True,
        ncols=100,
        **options,
    )


def check_callback(value: object, name: str, called_as: str) -> None:
    """``TypeError`` up front for a ``name`` callback that is neither callable nor None:
    ``progress=True`` (as ``train`` takes it) failed as "'bool' object is not callable"
    only after the first tile or batch was done."""
    if value is not None and not callable(value):
        raise TypeError(
            f"{name}={value!r} is {kind_of(value)}, not a function; pass one called "
            f"as {called_as}, or None"
        )
