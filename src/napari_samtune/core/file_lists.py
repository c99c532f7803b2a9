"""The files a folder, a glob pattern, a file or a list of these names (training data,
``samtune segment``'s images), and what a folder holds that is not read (subfolders, files
that are not TIFF), for the person to be told."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from napari_samtune.core.tiff_files import TIFF_SUFFIXES


def is_glob_pattern(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a glob pattern: it has ``*``, ``?`` or ``[`` and names no
    existing file (``well[A1].tif`` that exists is that file)."""
    return glob.has_magic(os.fspath(text)) and not os.path.lexists(text)


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> list[Path]:
    """Files named by a folder, a glob pattern, one file, or a list of any of these."""
    return _expand(spec, what, (), None)


def list_files(
    spec: str | os.PathLike | Sequence[str | os.PathLike], what: str, companions: tuple[str, ...]
) -> tuple[list[Path], tuple[str, ...]]:
    """:func:`expand_paths` 's files, and the entries of the folders in ``spec`` it does not
    read, each folder listed once: subfolders (``"name/"``; they are not searched) and files
    that are not TIFF, but for hidden ones and those ending in one of ``companions`` (the
    annotation widget's records beside its labels). They were left out without a word: a
    person may train on fewer images than they think."""
    skipped: dict[str, None] = {}
    return _expand(spec, what, companions, skipped), tuple(skipped)


def _expand(spec, what: str, companions: tuple[str, ...], skipped: dict | None) -> list[Path]:
    """:func:`expand_paths`; the entries a folder holds besides its files go to ``skipped``
    (unless None), those ending in ``companions`` but for."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.path.expanduser(os.fspath(spec))  # "~/data" as the shell means it
        if text == "":  # Path('') is the current folder: every file there, unsaid
            raise ValueError(
                f"{what} '' is an empty path; give files, a folder or a glob pattern, or '.' "
                "for the current folder"
            )
        if is_glob_pattern(text):
            matched = sorted(Path(p) for p in glob.glob(text))
            if not matched:
                raise ValueError(f"{what} pattern {text!r} matches no files; check the pattern")
            # as a folder's: its TIFF files (the annotation widget's records, notes, folders
            # were listed as images without a label file)
            files = _listed_files(matched, companions, skipped)
            if not files:
                others = ", ".join(path.name for path in matched[:3])
                hidden = all(path.name.startswith(".") for path in matched)
                raise ValueError(
                    f"{what} pattern {text!r} matches no .tif/.tiff files to read (it matches "
                    f"{others}{', ...' if len(matched) > 3 else ''}"
                    f"{'; hidden files are not read' if hidden else ''}); check the pattern"
                )
            return files
        path = Path(text)
        if path.is_dir():
            files = _folder_files(path, companions, skipped)
            if not files:
                raise ValueError(
                    f"{what} folder {text!r} contains no .tif/.tiff files{_below(path)}"
                )
            return files
        if not path.exists():
            raise FileNotFoundError(f"{what} path {text!r} does not exist; check the path")
        return [path]
    if not isinstance(spec, Sequence) or not all(
        isinstance(item, (str, os.PathLike)) for item in spec
    ):
        raise TypeError(
            f"{what} must be a path, a folder, a glob pattern or a list of paths; got "
            f"{_kind(spec)}: image and label arrays go to train() as "
            "[(image, labels), ...] pairs (or ImageLabelPair), files to load_pairs/match_files"
        )
    files = [f for item in spec for f in _expand(item, what, companions, skipped)]
    if not files:
        raise ValueError(f"{what} is an empty list; give files, a folder or a glob pattern")
    return files


def _folder_files(folder: Path, companions: tuple[str, ...], skipped: dict | None) -> list[Path]:
    """The TIFF files of ``folder``, sorted; what else it holds goes to ``skipped``."""
    return _listed_files(sorted(folder.iterdir()), companions, skipped)


def _listed_files(entries: list[Path], companions: tuple[str, ...], skipped: dict | None):
    """The TIFF files of ``entries``; the others go to ``skipped``, but for hidden ones and
    those ending in ``companions``."""
    files = []
    for entry in entries:
        if _listed(entry):
            files.append(entry)
        elif skipped is not None and not (
            entry.name.startswith(".") or entry.name.endswith(companions)
        ):
            skipped[entry.name + ("/" if entry.is_dir() else "")] = None
    return files


def _listed(path: Path) -> bool:
    """Whether a folder's entry ``path`` is one of its TIFF files: not a folder, and not
    hidden (the ``._name.tif`` that macOS copies beside each file onto other disks hold no
    image, and clashed with the images' names)."""
    return path.suffix.lower() in TIFF_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _kind(spec) -> str:
    """``ndarray``, or ``list of ndarray``: what was given where paths were expected."""
    if isinstance(spec, Sequence):  # (a str is a path: never here)
        items = sorted(
            {type(item).__name__ for item in spec if not isinstance(item, (str, os.PathLike))}
        )
        return f"{type(spec).__name__} of {', '.join(items)}"
    return type(spec).__name__


def _below(folder: Path) -> str:
    """For a folder without TIFF files: the subfolders that hold them, and the pattern."""
    subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    holding = [p for p in subfolders if any(_listed(f) for f in p.iterdir())]
    if not holding:
        return ""
    return (
        f"; subfolders are not searched, and {holding[0].name}/ holds some: give a pattern "
        f"such as {str(folder / '*' / '*.tif')!r}, or each subfolder"
    )
