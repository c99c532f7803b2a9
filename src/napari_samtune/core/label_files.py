"""Label files: how they pair with their images (their names and fingerprints:
:mod:`napari_samtune.core.label_names`).

The annotation widget autosaves the labels of an image layer named ``name`` as
``<safe_stem(name)>.labels.tif``; ``samtune segment`` names its outputs for several
images the same way, so the widget restores them for correcting; training pairs
them with their images (:func:`match_files`, which compares names through
:func:`safe_stem` as well). Files come as a folder, a glob pattern, a file, or a
list of these (:func:`~napari_samtune.core.file_lists.expand_paths`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_samtune.core.file_lists import list_files
from napari_samtune.core.file_names import NAMESAKE_STEM, earlier_stems, safe_stem
from napari_samtune.core.label_names import (  # noqa: F401 (importable from here as ever)
    LABEL_SUFFIXES,
    LABELS_STEM_SUFFIX,
    LABELS_SUFFIX,
    PROMPTS_SUFFIX,
    image_fingerprint,
    labels_file_name,
    namesake_name,
    prompts_path_for,
    saved_fingerprint,
)


def _label_stem(path: Path) -> str | None:
    """The image name a label file is named after (lower case), None if not named as labels;
    a namesake's autosave ``<name>-<fingerprint>.labels.tif`` is named after ``<name>``."""
    stem = _plain_stem(path.stem).lower()
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            namesake = NAMESAKE_STEM.match(stem) if suffix == LABELS_STEM_SUFFIX else None
            return namesake.group(1) if namesake else stem
    return None


def _is_autosave(path: Path) -> bool:
    return path.stem.lower().endswith(LABELS_STEM_SUFFIX)


def _pairing_key(path: Path, as_labels: bool) -> str:
    """The name a file pairs by; through :func:`safe_stem` as the annotation widget names its
    autosaves (``cell 1.tif`` pairs with ``cell_1.labels.tif``)."""
    stem = _label_stem(path) if as_labels else None
    return _plain_stem(safe_stem(path.stem if stem is None else stem)).lower()


def _plain_stem(stem: str) -> str:
    """``stem`` without the ``.ome`` of an OME-TIFF name: ``cell_1.ome.tif`` pairs with
    ``cell_1_labels.tif`` and ``cell_1_labels.ome.tif``, and with the autosave of its layer,
    which napari names ``cell_1.ome``."""
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem


def is_label_file(path: Path) -> bool:
    """Whether the file is named as labels: an image name plus one of ``LABEL_SUFFIXES``."""
    return _label_stem(path) is not None


RENAMED_LAYER_NOTE = (
    "napari saves an image's annotations under its layer's name: to pair a file renamed so "
    "with its image, rename the file or the layer back"
)


@dataclass(frozen=True)
class FileMatch:
    """Image and label files paired by name, and the files left without a partner."""

    pairs: list[tuple[Path, Path]]  # (image file, label file), in the images' order
    lonely_images: tuple[str, ...] = ()  # names of image files without a label file
    lonely_labels: tuple[str, ...] = ()  # names of label files without an image file
    # image file -> its autosave and those of namesakes (<name>-<fingerprint>.labels.tif),
    # for images that have several or only a namesake's; the pixels decide (choose_namesake)
    namesakes: dict[Path, tuple[Path, ...]] = field(default_factory=dict)
    # what the folders given hold besides TIFF files: subfolders ("name/"), other files
    skipped: tuple[str, ...] = ()
    # files of the images named as the labels of images beside them (a dataset's own
    # cell_1_labels.tif next to cell_1.tif, labels given from elsewhere): not images
    labels_beside: tuple[str, ...] = ()

    def unpaired_message(self) -> str:
        """Why the files do not all pair, with the fix; "" when they do."""
        if not self.lonely_images and not self.lonely_labels:
            return ""
        sides = [
            f"{what} {list(names)!r}"
            for names, what in (
                (self.lonely_images, "images without labels"),
                (self.lonely_labels, "labels without images"),
            )
            if names  # (an empty side named as "[]" read as a fault)
        ]
        unpaired = f"could not pair files by name: {', '.join(sides)}"
        named_as_labels = [is_label_file(Path(name)) for name in self.lonely_images]
        named_as_images = [not is_label_file(Path(name)) for name in self.lonely_labels]
        if named_as_labels and all(named_as_labels) and named_as_images and all(named_as_images):
            return (
                f"{unpaired}: were the images and labels swapped? The files given as images "
                "are named as labels (an image's name plus a suffix such as '_labels'): give "
                "them as the labels and the others as the images"
            )
        return (
            f"{unpaired}; name each label file like its image (optionally with one of "
            f"{list(LABEL_SUFFIXES)!r} appended){self._autosave_notes()}"
        )

    def _autosave_notes(self) -> str:
        """Why autosaves left alone may be of images left alone: saved by an earlier
        napari-samtune under the file name it gave (named, with the rename that pairs
        them), or an image layer renamed in napari; "" where none is."""
        renames = self._earlier_names()
        notes = [
            f"{old!r} is named as an earlier napari-samtune named the annotations of "
            f"{image!r}: rename it {new!r} (and its .prompts.json) to pair them"
            for old, image, new in renames[:3]
        ]
        explained = {old for old, _, _ in renames}
        others = [name for name in self.lonely_labels if name not in explained]
        if self.lonely_images and any(_is_autosave(Path(name)) for name in others):
            notes.append(RENAMED_LAYER_NOTE)
        return f" ({'; '.join(notes)})" if notes else ""

    def _earlier_names(self) -> list[tuple[str, str, str]]:
        """(autosave, image, its name now) for each autosave left alone that an earlier
        version named after an image left alone (``Zelle.labels.tif`` of ``Zelle ä.tif``)."""
        lonely = {name.lower(): name for name in self.lonely_labels}
        found = []
        for image in self.lonely_images:
            stem = _plain_stem(Path(image).stem)
            for earlier in earlier_stems(stem):
                old = lonely.get(f"{earlier}{LABELS_SUFFIX}".lower())
                if old is not None:
                    found.append((old, image, labels_file_name(stem)))
                    break
        return found

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
        if self.lonely_images and self.lonely_labels:
            parts[-1] += self._autosave_notes()
        if self.labels_beside:
            parts.append(
                f"{len(self.labels_beside)} file(s) among the images named as the labels of "
                f"images beside them: {describe_names(self.labels_beside)}"
            )
        if self.skipped:  # a person may think those were read too
            parts.append(
                f"{len(self.skipped)} entr{'y' if len(self.skipped) == 1 else 'ies'} of the "
                f"folders that are not TIFF files (subfolders are not searched: give a pattern "
                f"such as folder/*/*.tif for theirs): {describe_names(self.skipped)}"
            )
        return f"left out {' and '.join(parts)}" if parts else ""

    def left_out_listing(self, limit: int = 3) -> list[str]:
        """Every file :meth:`left_out_message` names, a line each, where it names only the
        first ``limit`` of a kind ("and 47 more" told nobody which); [] where it names all."""
        kinds = (self.lonely_images, self.lonely_labels, self.labels_beside, self.skipped)
        if all(len(names) <= limit for names in kinds):
            return []
        return [f"  {name}" for names in kinds for name in names]


def describe_names(names: Sequence[str], limit: int = 3) -> str:
    """``'a, b, c and 2 more'``: names for a message, the first ``limit`` of them."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_files(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
    strict: bool = False,
) -> FileMatch:
    """Pair image and label files by file name (labels may add e.g. ``_labels`` or ``_mask``)
    and name the files without a partner.

    Images and labels may share a folder (``--images F --labels F``): a file named by both
    counts as labels if its name ends with a label suffix, else as an image. One image file
    and one label file given as files (not found in a folder or by a pattern) pair whatever
    their names. Raises ``ValueError`` when no file pairs, or when two label files pair with
    the same image or two images with the same label file (but for autosaves of namesakes:
    see :attr:`FileMatch.namesakes`); with ``strict``, also listing every file without a
    partner.
    """
    image_list, images_skipped = list_files(images, "images", (PROMPTS_SUFFIX,))
    label_list, labels_skipped = list_files(labels, "labels", (PROMPTS_SUFFIX,))
    image_files, label_files = _split_shared(image_list, label_list)
    image_files, beside = _without_labels_beside(image_files)
    label_files = _each_file_once(label_files)  # a file named twice: pairs once
    one_each = len(image_files) == 1 and len(label_files) == 1
    if one_each and _names_a_file(images) and _names_a_file(labels):
        _check_not_swapped(image_files[0], label_files[0])
        return FileMatch([(image_files[0], label_files[0])])
    by_key = _group_labels(label_files)
    keys = {f: _pairing_key(f, as_labels=False) for f in image_files}
    pairs = [(f, by_key[keys[f]][0]) for f in image_files if keys[f] in by_key]
    namesakes = {
        f: tuple(by_key[keys[f]])
        for f, labels in pairs
        if len(by_key[keys[f]]) > 1 or _is_namesake(labels)  # a namesake's is checked alone too
    }
    _check_one_image_per_label_file(pairs, namesakes)
    used = {f for image, _ in pairs for f in (image, *by_key[keys[image]])}
    match = FileMatch(
        pairs,
        tuple(f.name for f in image_files if f not in used),
        tuple(f.name for f in label_files if f not in used),
        namesakes,
        tuple(dict.fromkeys([*images_skipped, *labels_skipped])),
        tuple(f.name for f in beside),
    )
    if not pairs or (strict and match.unpaired_message()):
        raise ValueError(match.unpaired_message())
    return match


def _check_not_swapped(image: Path, labels: Path) -> None:
    """``ValueError`` when the one image file is named as the labels of the one label file
    (``cell_1_labels.tif`` and ``cell_1.tif``): any other two names pair, but these would
    train on the labels as the image."""
    if (
        is_label_file(image)
        and not is_label_file(labels)
        and _pairing_key(image, as_labels=True) == _pairing_key(labels, as_labels=False)
    ):
        raise ValueError(
            f"the image file {image.name!r} is named as the labels of the label file "
            f"{labels.name!r}: were the images and labels swapped? Give {labels.name!r} as the "
            f"image and {image.name!r} as its labels"
        )


def _names_a_file(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> bool:
    """Whether ``spec`` names one file itself: a folder or a pattern that holds one file
    (the only image annotated so far, another image's labels) still pairs by name."""
    if not isinstance(spec, (str, os.PathLike)):
        return len(spec) == 1 and _names_a_file(spec[0])
    text = os.path.expanduser(os.fspath(spec))  # as the files were listed: "~/imgs" a folder
    return not glob.has_magic(text) and not Path(text).is_dir()


def _each_file_once(files: list[Path]) -> list[Path]:
    """``files`` without a second name of a file named before (a folder and a file in it,
    two overlapping globs, a relative and a whole path): as two label files of one image,
    it was refused with the advice to rename one image and its labels. A link under
    another name (``b_labels.tif`` to ``a_labels.tif``) is another image's label file."""
    seen: set[tuple[Path, str]] = set()
    kept = []
    for f in files:
        key = (f.resolve(), _pairing_key(f, as_labels=True))
        if key not in seen:
            seen.add(key)
            kept.append(f)
    return kept


def _group_labels(label_files: list[Path]) -> dict[str, list[Path]]:
    """Label files by the image name they pair with. Several per name only as autosaves of
    namesakes (the image's own first): any other second label file is refused."""
    by_key: dict[str, list[Path]] = {}
    for f in label_files:
        by_key.setdefault(_pairing_key(f, as_labels=True), []).append(f)
    for key, files in by_key.items():
        if len(files) > 1 and not all(map(_is_autosave, files)):
            raise ValueError(_two_label_files(key, files))
        files.sort(key=_is_namesake)
    return by_key


def _two_label_files(key: str, files: list[Path]) -> str:
    """Why label files that pair with one image name are refused, and the fix: most often
    copies of the images among the labels, named like their image, beside the real ones."""
    plain = [f.name for f in files if not is_label_file(f)]
    named = [f.name for f in files if is_label_file(f)]
    if plain and named:
        return (
            f"label files {plain[0]!r} and {named[0]!r} both pair with image name {key!r}: "
            f"{plain[0]!r} is named like an image (a copy of it among the labels?), "
            f"{named[0]!r} as its labels; keep one label file per image, e.g. move the "
            "images out of the labels folder"
        )
    first, second = files[:2]
    if first.parent != second.parent and first.stem.lower() == second.stem.lower():
        return (
            f"label files {str(first)!r} and {str(second)!r} have the same name in two "
            f"folders, and labels pair with images by name alone (image name {key!r}): "
            "images of two experiments named alike cannot be told apart in one run; train "
            "on one experiment's folders at a time, or rename one experiment's images and "
            "label files alike (e.g. with a prefix)"
        )
    shown = (f.name for f in (first, second)) if first.parent == second.parent else files
    return (
        f"label files {' and '.join(repr(str(f)) for f in shown)} both pair with image name "
        f"{key!r}, as names are compared ignoring case and extension, with spaces and symbols "
        "read as '_'; keep one label file per image, or, for two images whose names differ "
        "only so, rename one image and its label file"
    )


def _check_one_image_per_label_file(
    pairs: list[tuple[Path, Path]], namesakes: dict[Path, tuple[Path, ...]]
) -> None:
    """Refuse two images whose names compare equal (``cell 1.tif`` and ``cell_1.tif``,
    ``a.tif`` and ``A.tiff``): both would train on the one label file. Images with autosaves
    of namesakes are left to the pixels (:func:`choose_namesake`)."""
    first_image: dict[Path, Path] = {}
    for image, labels in pairs:
        if image in namesakes:
            continue
        other = first_image.setdefault(labels, image)
        if other != image:
            raise ValueError(
                f"images {str(other)!r} and {str(image)!r} both pair with label file "
                f"{labels.name!r}, as names are compared ignoring case and extension, with "
                "spaces and symbols read as '_'; rename one image (and its label file), or "
                "move it to another folder"
            )


def _is_namesake(path: Path) -> bool:
    """Whether a file is a namesake's autosave, ``<name>-<fingerprint>.labels.tif``."""
    stem = path.stem.lower()
    return _is_autosave(path) and bool(NAMESAKE_STEM.match(stem[: -len(LABELS_STEM_SUFFIX)]))


def choose_namesake(image: np.ndarray, image_path: Path, candidates: Sequence[Path]) -> Path:
    """Of the autosaves named after one image, those of namesakes among them (images of the
    same name from other experiments), the one saved for ``image``'s pixels; else the one
    without a fingerprint (e.g. ``samtune segment``'s). ``ValueError`` when none is, and
    when several were saved for these pixels (one was trained on, the others left unsaid)."""
    fingerprint = image_fingerprint(image)
    saved = {path: saved_fingerprint(path) for path in candidates}
    mine = [path for path, found in saved.items() if found == fingerprint]
    unrecorded = [path for path, found in saved.items() if found is None]
    if len(mine) > 1:  # a save diverted beside a file changed meanwhile: which is meant?
        raise ValueError(
            f"the annotation files {describe_names([p.name for p in mine])} were all saved for "
            f"the pixels of {image_path.name!r} (two napari windows, or a file changed by "
            "another program while it was annotated); keep the one to train on and move the "
            "others out of the folder (compare them in napari with 'Load annotations…')"
        )
    if mine or len(unrecorded) == 1:
        return (mine or unrecorded)[0]
    raise ValueError(
        f"the annotation files {describe_names([p.name for p in candidates])} pair with "
        f"{image_path.name!r} by name, but none was saved for its pixels: they belong to other "
        "images of the same name; move them to another folder, or name this image's labels "
        f"{labels_file_name(image_path.stem)}"
    )


def pair_files(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
) -> list[tuple[Path, Path]]:
    """The pairs of :func:`match_files` when every file pairs (``strict``); else
    ``ValueError`` listing every file without a partner."""
    return match_files(images, labels, strict=True).pairs


def _without_labels_beside(image_files: list[Path]) -> tuple[list[Path], list[Path]]:
    """The image files but those named as the labels of another image file among them
    (``cell_1_labels.tif`` beside ``cell_1.tif``), and those: train and evaluate refused
    the folder as holding images without labels, advising to rename them."""
    keys = {_pairing_key(f, as_labels=False) for f in image_files if not is_label_file(f)}
    beside = [f for f in image_files if is_label_file(f) and _pairing_key(f, True) in keys]
    return [f for f in image_files if f not in beside], beside


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
