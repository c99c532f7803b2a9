"""Progress bars: in place on a terminal, whole throttled lines in a log file."""

from __future__ import annotations

import io
import itertools
import re
import sys
import time

import pytest

from napari_samtune.core.progress import progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(total: int, **options) -> None:
    bar = progress_bar(total, "work", unit="image", **options)
    for _ in range(total):
        bar.update(1)
    bar.close()


def test_off_a_terminal_the_bar_writes_whole_lines(capsys):
    _run(4, log_interval_s=0)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split("|")[-1].split()[0] for line in lines[:5]] == [f"{i}/4" for i in range(5)]
    assert all(line.startswith("work:") and line.isascii() for line in lines)


def test_off_a_terminal_lines_are_throttled(capsys):
    _run(500)  # far faster than the log interval: the first and the final state only
    assert [line.split("|")[-1].split()[0] for line in capsys.readouterr().err.splitlines()] == [
        "0/500",
        "500/500",
    ]
    # A bar that clears itself (an epoch's) wrote a "0/500" line and nothing more: work
    # shorter than the log interval now leaves no line, and no blank one
    _run(500, leave=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("leave", [True, False])
def test_off_a_terminal_lines_are_the_log_interval_apart(capsys, monkeypatch, leave):
    """A step a second for 200 s (a fake clock), tqdm's monitor thread looking in as often
    as it likes: it used to force a redraw, so a line, 10 s after the last one, so lines
    came 20 s apart instead of at least 30 s. A bar that clears itself writes its first
    line after 30 s, not at the start."""
    from tqdm import _monitor, std

    now = [0.0]
    monkeypatch.setattr(std, "time", lambda: now[0])
    monkeypatch.setattr(_monitor, "time", lambda: now[0])
    if std.tqdm.monitor is not None:
        std.tqdm.monitor.exit()
    monkeypatch.setattr(std.tqdm, "monitor", None)
    monkeypatch.setattr(std.tqdm, "monitor_interval", 0.001)  # real seconds between looks
    bar = progress_bar(200, "work", unit="step", leave=leave, log_interval_s=30)
    try:
        for _ in range(200):
            now[0] += 1
            bar.update(1)
            time.sleep(0.01)  # time for the monitor to look
        lines = capsys.readouterr().err.splitlines()
    finally:
        bar.close()
        std.tqdm.monitor.exit()
    elapsed = [int(m) * 60 + int(s) for m, s in re.findall(r"\[(\d+):(\d+)<", "\n".join(lines))]
    assert len(elapsed) == len(lines) and len(lines) >= 6  # (0,) 30, 60, ... 180 s
    assert all(b - a >= 30 for a, b in itertools.pairwise(elapsed)), elapsed
    assert (elapsed[0] == 0) if leave else (30 <= elapsed[0] <= 32), elapsed


def test_off_a_terminal_the_log_interval_is_read_when_a_bar_is_made(capsys, monkeypatch):
    from napari_samtune.core import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0)
    _run(3, leave=False)  # no delay, no throttling: every state
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("|")[-1].split()[0] for line in lines] == [f"{i}/3" for i in range(4)]


def test_on_a_terminal_the_bar_redraws_in_place(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _run(4, log_interval_s=0)
    text = terminal.getvalue()
    assert text.count("\r") >= 2 and "4/4" in text and "\n" not in text.rstrip("\n")


def test_in_a_notebook_the_bar_is_the_notebook_widget(monkeypatch):
    """tqdm.auto's choice: train(progress=True) or a download in Jupyter shows a widget."""
    from tqdm import autonotebook
    from tqdm import tqdm as text_bar

    class NotebookBar(text_bar):  # stands in for tqdm.notebook.tqdm
        pass

    monkeypatch.setattr(autonotebook, "tqdm", NotebookBar)
    bar = progress_bar(3, "work")
    assert type(bar) is NotebookBar and bar.total == 3
    bar.close()
