"""Paths and words as a person pastes them into a shell: the commands that messages advise
(``samtune export <run>/checkpoints/best.pt -o model.pth``) must work as printed, with
spaces, quotes and non-ASCII letters in their paths, and on Windows too. Standard library
only: the command line imports it before torch."""

from __future__ import annotations

import os
import shlex
import subprocess


def shell_quote(text: str) -> str:
    """``text`` as a word of a command to paste in this system's shell: POSIX quotes
    (``'C:\\runs'``) are no quotes in Windows' cmd.exe, which took them as part of the path."""
    if _on_windows():
        return subprocess.list2cmdline([text])
    return shlex.quote(text)


def _on_windows() -> bool:
    return os.name == "nt"


def shell_path(path: str | os.PathLike) -> str:
    """:func:`shell_quote` of a path, a relative one starting with ``-`` or ``@`` as
    ``./-run``: the command read ``--resume -ab`` as an option without its value, and
    ``samtune segment @x.tif`` as a list of images in ``x.tif``."""
    text = os.fspath(path)
    return shell_quote(f".{os.sep}{text}" if text.startswith(("-", "@")) else text)
