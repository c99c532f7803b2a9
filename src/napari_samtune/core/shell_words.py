"""Paths and words as a person pastes them into a shell: the commands that messages advise
(``samtune export <run>/checkpoints/best.pt -o model.pth``) must work as printed, with
spaces, quotes and non-ASCII letters in their paths, and on Windows too. Standard library
only: the command line imports it before torch."""

from __future__ import annotations

import os
import shlex

# what cmd.exe or PowerShell read as more than a letter in a bare word: C:\R&D ran "C:\R"
# and then "D" in cmd, and PowerShell refused it; ';' ended a PowerShell command there.
# (Quotes do not stop cmd's %NAME% or PowerShell's $name: paths rarely hold them.)
_WINDOWS_SPECIAL = frozenset(" \t\"&|<>^;,()%$'`@{}")


def shell_quote(text: str) -> str:
    """``text`` as a word of a command to paste in this system's shell: POSIX quotes
    (``'C:\\runs'``) are no quotes in Windows' cmd.exe, which took them as part of the path;
    there a word with a character either shell reads otherwise is put in double quotes."""
    if not _on_windows():
        return shlex.quote(text)
    if text and not _WINDOWS_SPECIAL.intersection(text):
        return text
    return _double_quoted(text)


def _double_quoted(text: str) -> str:
    """``text`` in double quotes as Windows programs split their command line: a quote
    inside is escaped, and so are the backslashes before it and before the closing quote."""
    quoted, backslashes = [], 0
    for char in text:
        if char == "\\":
            backslashes += 1
            continue
        quoted.append(
            "\\" * (2 * backslashes + 1) + char if char == '"' else "\\" * backslashes + char
        )
        backslashes = 0
    return '"' + "".join(quoted) + "\\" * (2 * backslashes) + '"'


def _on_windows() -> bool:
    return os.name == "nt"


def shell_path(path: str | os.PathLike) -> str:
    """:func:`shell_quote` of a path, a relative one starting with ``-`` or ``@`` as
    ``./-run``: the command read ``--resume -ab`` as an option without its value, and
    ``samtune segment @x.tif`` as a list of images in ``x.tif``."""
    text = os.fspath(path)
    return shell_quote(f".{os.sep}{text}" if text.startswith(("-", "@")) else text)
