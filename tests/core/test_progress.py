"""Progress bars: in place on a terminal, whole throttled lines in a log file."""

from __future__ import annotations

import io
import sys

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
