"""Pairs given twice to one run: the same image as a layer pair and in a folder, or a list
that names one file twice. Trained on twice it weighs double, and the validation split can
hold out one copy while the other trains (the score then rewards memory). A repeat is left
out and named; a repeat with other labels is refused, as which annotation is right is the
person's to say.

Two pairs are the same image when their normalised images (what SAM sees,
:attr:`PreparedImage.rgb`) are equal, whatever their names or paths. A fingerprint of
each image (:func:`image_fingerprint`, milliseconds) finds the candidates; only those are
compared pixel for pixel, so a fingerprint that samples a large image never merges two
that differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import numpy as np

from napari_samtune.core.data import PreparedImage
from napari_samtune.core.label_files import describe_names, image_fingerprint


class _Scored(NamedTuple):
    rgb: np.ndarray
    labels: np.ndarray
    name: str


_Pair = TypeVar("_Pair", PreparedImage, _Scored)  # an image with its labels and name


class DuplicateImageError(ValueError):
    """Two pairs of the same image whose labels differ (see :func:`conflict_message`)."""


def conflict_message(later: str, earlier: str) -> str:
    return (
        f"{later!r} and {earlier!r} are the same image with different labels, given twice "
        "(e.g. as a layer pair and in a folder, or one file twice); which annotation is "
        "right is yours to say: remove the pair whose labels are wrong, or make the "
        "labels agree"
    )


def drop_duplicates(
    images: Sequence[_Pair],
) -> tuple[list[_Pair], tuple[tuple[str, str], ...]]:
    """``images`` without the repeats of an earlier image, and the ``(left out, kept)`` names
    of each repeat. A repeat whose objects differ raises :class:`DuplicateImageError`."""
    kept: list[_Pair] = []
    by_fingerprint: dict[str, list[_Pair]] = {}
    dropped = []
    for image in images:
        candidates = by_fingerprint.setdefault(image_fingerprint(image.rgb), [])
        earlier = next((c for c in candidates if np.array_equal(c.rgb, image.rgb)), None)
        if earlier is None:
            candidates.append(image)
            kept.append(image)
        elif same_objects(earlier.labels, image.labels):
            dropped.append((image.name, earlier.name))
        else:
            raise DuplicateImageError(conflict_message(image.name, earlier.name))
    return kept, tuple(dropped)


def drop_repeats(
    images: list[np.ndarray], labels: list[np.ndarray], names: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], tuple[tuple[str, str], ...]]:
    """:func:`drop_duplicates` for SAM-ready ``images`` with their ``labels`` and ``names``
    (``samtune evaluate``'s pairs, whose repeats were scored twice, weighing double in every
    mean): the three lists without the repeats, and the ``(left out, kept)`` names."""
    pairs = [_Scored(*pair) for pair in zip(images, labels, names, strict=True)]
    kept, dropped = drop_duplicates(pairs)
    return [p.rgb for p in kept], [p.labels for p in kept], [p.name for p in kept], dropped


def same_objects(labels: np.ndarray, other: np.ndarray) -> bool:
    """Whether two (H, W) label images hold the same objects, whatever their ids: ids that
    map one to one (0, background, to 0)."""
    if labels.shape != other.shape:
        return False
    if np.array_equal(labels, other):
        return True
    if not np.array_equal(labels == 0, other == 0):
        return False
    a, b = labels.ravel().astype(np.int64), other.ravel().astype(np.int64)
    joint = np.unique(a * (int(b.max()) + 1) + b)  # each (id, other id) that occurs
    return len(joint) == len(np.unique(a)) == len(np.unique(b))


def duplicates_message(
    duplicates: Sequence[tuple[str, str]],
    so: str = "so each image trains once and no copy of a training image validates",
) -> str:
    """The warning that repeats were left out, naming each with the pair it repeats and
    what leaving them out does (``so``); "" if there were none."""
    if not duplicates:
        return ""
    named = describe_names([f"{later!r} (same as {earlier!r})" for later, earlier in duplicates])
    return (
        f"left out {len(duplicates)} pair(s) that repeat another pair (same image and labels), "
        f"{so}: {named}"
    )
