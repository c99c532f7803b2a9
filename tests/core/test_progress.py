"""Progress bars: in place on a terminal, whole throttled lines in a log file."""

from __future__ import annotations

import io
import itertools
import re
import sys
import time

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
    _run(500, leave=False)  # a bar that clears itself leaves no blank line behind
    assert capsys.readouterr().err.splitlines()[-1].startswith("work:   0%")


def test_off_a_terminal_lines_are_the_log_interval_apart(capsys, monkeypatch):
    """A step a second for 200 s (a fake clock), tqdm's monitor thread looking in as often
    as it likes: it used to force a redraw, so a line, 10 s after the last one, so lines
    came 20 s apart instead of at least 30 s."""
    from tqdm import _monitor, std

    now = [0.0]
    monkeypatch.setattr(std, "time", lambda: now[0])
    monkeypatch.setattr(_monitor, "time", lambda: now[0])
    if std.tqdm.monitor is not None:
        std.tqdm.monitor.exit()
    monkeypatch.setattr(std.tqdm, "monitor", None)
    monkeypatch.setattr(std.tqdm, "monitor_interval", 0.001)  # real seconds between looks
    bar = progress_bar(200, "work", unit="step", log_interval_s=30)
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
    assert len(elapsed) == len(lines) and len(lines) >= 6  # 0, 30, 60, ... 180 s
    assert all(b - a >= 30 for a, b in itertools.pairwise(elapsed)), elapsed


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
