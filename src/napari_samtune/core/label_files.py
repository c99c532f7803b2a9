"""Label files: how they are named and how they pair with their images.

The annotation widget autosaves the labels of an image layer named ``name`` as
``<safe_stem(name)>.labels.tif``; ``samtune segment`` names its outputs for several
images the same way, so the widget restores them for correcting; training pairs
them with their images (:func:`match_files`, which compares names through
:func:`safe_stem` as well). Files come as a folder, a glob pattern, a file, or a
list of these (:func:`expand_paths`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS_STEM_SUFFIX = ".labels"  # what the file stem ends in (a label suffix for pairing)
LABELS_SUFFIX = LABELS_STEM_SUFFIX + ".tif"
TIFF_SUFFIXES = (".tif", ".tiff")
# Label files are often named after their image plus one of these.
LABEL_SUFFIXES = (
    *("_labels", "_label", "_masks", "_mask", "_seg", "_gt", "-labels", "-mask"),
    LABELS_STEM_SUFFIX,  # what the annotation widget autosaves: <image>.labels.tif
)


def safe_stem(image_name: str) -> str:
    """A file-name-safe version of a layer or file name (letters, digits, ``._-``; any run
    of other characters becomes ``_``), e.g. ``"cell 1"`` -> ``"cell_1"``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", image_name).strip("._")
    return stem or "image"


def labels_file_name(image_name: str) -> str:
    """``"cell 1"`` -> ``"cell_1.labels.tif"``: the labels of an image (layer) of that name."""
    return safe_stem(image_name) + LABELS_SUFFIX


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> list[Path]:
    """Files named by a folder, a glob pattern, one file, or a list of any of these."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if glob.has_magic(text):
            files = sorted(Path(p) for p in glob.glob(text))
            if not files:
                raise ValueError(f"{what} pattern {text!r} matches no files; check the pattern")
            return files
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
            if not files:
                raise ValueError(f"{what} folder {text!r} contains no .tif/.tiff files")
            return files
        if not path.exists():
            raise FileNotFoundError(f"{what} path {text!r} does not exist; check the path")
        return [path]
    files = [f for item in spec for f in expand_paths(item, what)]
    if not files:
        raise ValueError(f"{what} is an empty list; give files, a folder or a glob pattern")
    return files


def _label_stem(path: Path) -> str | None:
    """The image name a label file is named after (lower case), None if not named as labels."""
    stem = path.stem.lower()
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return None


def _pairing_key(path: Path, as_labels: bool) -> str:
    """The name a file pairs by; through :func:`safe_stem` as the annotation widget names its
    autosaves (``cell 1.tif`` pairs with ``cell_1.labels.tif``)."""
    stem = _label_stem(path) if as_labels else None
    return safe_stem(path.stem.lower() if stem is None else stem).lower()


def is_label_file(path: Path) -> bool:
    """Whether the file is named as labels: an image name plus one of ``LABEL_SUFFIXES``."""
    return _label_stem(path) is not None


@dataclass(frozen=True)
class FileMatch:
    """Image and label files paired by name, and the files left without a partner."""

    pairs: list[tuple[Path, Path]]  # (image file, label file), in the images' order
    lonely_images: tuple[str, ...] = ()  # names of image files without a label file
    lonely_labels: tuple[str, ...] = ()  # names of label files without an image file

    def unpaired_message(self) -> str:
        """Why the files do not all pair, with the fix; "" when they do."""
        if not self.lonely_images and not self.lonely_labels:
            return ""
        return (
            f"could not pair files by name: images without labels {list(self.lonely_images)!r}, "
            f"labels without images {list(self.lonely_labels)!r}; name each label file like its "
            f"image (optionally with one of {list(LABEL_SUFFIXES)!r} appended)"
        )

    def left_out_message(self) -> str:
        """The files a lenient caller leaves out, for the user; "" when none."""
        parts = [
            f"{len(names)} {what}: {describe_names(names)}"
            for names, what in (
                (self.lonely_images, "image(s) without a label file (not annotated yet?)"),
                (self.lonely_labels, "label file(s) without an image"),
            )
            if names
        ]
        return f"left out {' and '.join(parts)}" if parts else ""


def describe_names(names: Sequence[str], limit: int = 3) -> str:
    """``'a, b, c and 2 more'``: names for a message, the first ``limit`` of them."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_files(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
) -> FileMatch:
    """Pair image and label files by file name (labels may add e.g. ``_labels`` or ``_mask``)
    and name the files without a partner.

    Images and labels may share a folder (``--images F --labels F``): a file named by both
    counts as labels if its name ends with a label suffix, else as an image. One image file
    and one label file pair whatever their names. Raises ``ValueError`` when no file pairs,
    or when two label files pair with the same image.
    """
    image_files, label_files = _split_shared(
        expand_paths(images, "images"), expand_paths(labels, "labels")
    )
    if len(image_files) == 1 and len(label_files) == 1:
        return FileMatch([(image_files[0], label_files[0])])
    by_key: dict[str, Path] = {}
    for f in label_files:
        key = _pairing_key(f, as_labels=True)
        if key in by_key:
            raise ValueError(
                f"label files {by_key[key].name!r} and {f.name!r} both pair with image name "
                f"{key!r}; keep one label file per image"
            )
        by_key[key] = f
    keys = {f: _pairing_key(f, as_labels=False) for f in image_files}
    pairs = [(f, by_key[keys[f]]) for f in image_files if keys[f] in by_key]
    used = {f for pair in pairs for f in pair}
    match = FileMatch(
        pairs,
        tuple(f.name for f in image_files if f not in used),
        tuple(f.name for f in label_files if f not in used),
    )
    if not pairs:
        raise ValueError(match.unpaired_message())
    return match


def pair_files(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
) -> list[tuple[Path, Path]]:
    """The pairs of :func:`match_files`; raises ``ValueError`` listing every file without a
    partner when there is one."""
    match = match_files(images, labels)
    if match.unpaired_message():
        raise ValueError(match.unpaired_message())
    return match.pairs


def _split_shared(image_files: list[Path], label_files: list[Path]) -> tuple[list, list]:
    """Files named both as images and as labels count as labels when named so (a suffix)."""
    shared = {f.resolve() for f in image_files} & {f.resolve() for f in label_files}
    if not shared:
        return image_files, label_files
    image_files = [f for f in image_files if f.resolve() not in shared or not is_label_file(f)]
    label_files = [f for f in label_files if f.resolve() not in shared or is_label_file(f)]
    if not image_files or not label_files:
        raise ValueError(
            f"images and labels name the same {len(shared)} file(s), and "
            f"{'all' if not image_files else 'none'} of them are named as labels (ending in "
            f"one of {list(LABEL_SUFFIXES)!r}); in a shared folder name each label file "
            "like its image plus such a suffix, e.g. cell_1.tif and cell_1_mask.tif"
        )
    return image_files, label_files


def read_tiff(path: Path) -> np.ndarray:
    """The pixels of a TIFF file; ``ValueError`` naming the file when it cannot be read."""
    import tifffile

    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"file {str(path)!r} is not a TIFF file; save images as .tif")
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises several types for files it cannot parse
        raise ValueError(
            f"cannot read {str(path)!r} as a TIFF image ({err}); it may be truncated or "
            "still being written: save it again, or move it out of the folder"
        ) from None
