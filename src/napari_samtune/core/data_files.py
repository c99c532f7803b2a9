"""Training pairs read from TIFF files: :func:`load_pairs` (every file paired) and
:func:`read_match` (the pairs of :func:`~napari_samtune.core.label_files.match_files`,
with what was left out), and the notes that name what was left out or looks wrong.

Files pair by name (see :mod:`napari_samtune.core.label_files`); a stack gives one pair
per annotated plane (:func:`~napari_samtune.core.data_pairs.split_planes`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_samtune.core.data_pairs import ImageLabelPair, split_planes
from napari_samtune.core.label_files import (
    FileMatch,
    choose_namesake,
    describe_names,
    image_fingerprint,
    match_files,
    saved_fingerprint,
)
from napari_samtune.core.tiff_files import (
    channel_axis_named,
    given_axis_note,
    named_otherwise,
    planes_named_channels_note,
    read_label_tiff,
    read_tiff_with_axes,
)


def load_pairs(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
    channel_axis: int | None = None,
    channels: int | Sequence[int] | None = None,
) -> list[ImageLabelPair]:
    """Read paired TIFF files (see :func:`match_files`: every file must pair) into
    :class:`ImageLabelPair` s; a stack of planes gives one pair per plane with objects, and
    ``channel_axis`` / ``channels`` select the channels (see :func:`split_planes`)."""
    return read_match(match_files(images, labels, strict=True), None, channel_axis, channels)


def read_match(
    match: FileMatch,
    foreign: list[str] | None = None,
    channel_axis: int | None = None,
    channels: int | Sequence[int] | None = None,
    empty_planes: list[str] | None = None,
    namesakes_left: list[str] | None = None,
) -> list[ImageLabelPair]:
    """Read the pairs of :func:`match_files`, as in :func:`load_pairs`; an image with
    autosaves of namesakes gets the one saved for its pixels (:func:`choose_namesake`), and
    ``namesakes_left``, if given, receives the names of the others (:func:`namesakes_message`).
    ``empty_planes``, if given, receives the stacks' planes left out for having no object
    (see :func:`split_planes`).

    ``channels`` apply to the multichannel images: a 2D gray one beside them is used as it
    is (:func:`gray_as_is`). Without ``channel_axis``, an image whose file names its channel
    axis (ImageJ hyperstacks, OME-TIFF: :func:`.channel_axis_named`) has its channels there;
    a ``channel_axis`` other than the one it names is used with a warning.

    ``foreign``, if given, receives the names of the pairs whose labels were saved in napari
    for other pixels than their image's (:func:`foreign_labels_message`); they are read all
    the same, as the image may just have been opened differently there. Label files are
    read with :func:`read_label_tiff`.
    """
    if not isinstance(match, FileMatch):
        raise TypeError(
            f"match must be the FileMatch that match_files returns; got "
            f"{type(match).__name__} {match!r:.80}: pass match_files(images, labels), or "
            "read the files with load_pairs(images, labels)"
        )
    groups, contradicted = [], []  # files whose metadata name another channel axis
    planes_named_channels: list[str] = []  # stacks whose files call their planes channels
    chosen, passed_over = set(), {}  # namesakes' label files taken, and those another took
    for image_path, labels_path in match.pairs:
        image, axes = read_tiff_with_axes(image_path)
        if image_path in match.namesakes:  # chosen by the pixels: never foreign
            labels_path = choose_namesake(image, image_path, match.namesakes[image_path])
            chosen.add(labels_path)
            passed_over.update((p, None) for p in match.namesakes[image_path])
        elif foreign is not None and _saved_for_other_pixels(labels_path, image):
            foreign.append(f"{image_path.name} / {labels_path.name}")
        name = f"{image_path.name} / {labels_path.name}"
        labels = read_label_tiff(labels_path)
        axis = channel_axis if channel_axis is not None else channel_axis_named(axes, image.ndim)
        if channel_axis is None and axis is not None and _gray_stack(image, labels):
            axis = None  # labels of a plane per "channel": the planes of a stack
            planes_named_channels.append(image_path.name)
        named = named_otherwise(axes, image.ndim, channel_axis)
        contradicted += [] if named is None else [(str(image_path), named, axes)]
        _check_planes_named(image, labels, axes, axis, name)
        if (axis is not None or channels is not None) and _gray_stack(image, labels):
            groups.append((image, labels, name, axis))  # split once the others are known
            continue
        groups.append(split_planes(image, labels, name, None, axis, channels, empty_planes))
    pairs = _with_gray_stacks(groups, channels, empty_planes)
    if namesakes_left is not None:  # those no image took (two namesakes given: neither)
        namesakes_left += [_namesake_left(p) for p in passed_over if p not in chosen]
    if contradicted:  # one warning for a folder of them
        warnings.warn(given_axis_note(channel_axis, contradicted), UserWarning, stacklevel=2)
    if planes_named_channels:
        warnings.warn(planes_named_channels_note(planes_named_channels), UserWarning, stacklevel=2)
    return gray_as_is(pairs) if any(p.image.ndim > 2 for p in pairs) else pairs


def _check_planes_named(image: np.ndarray, labels: np.ndarray, axes: str, axis, name) -> None:
    """``ValueError`` for a stack whose file names its planes (``axes`` "ZYX", "TYX") with
    labels of one plane: it was called an image whose channel axis is ambiguous, and the
    advice (a channel axis, and channels) would have scored one plane as a channel."""
    if image.ndim != 3 or labels.ndim != 2 or axis is not None or len(axes) != 3:
        return
    if axes[0] in "ZT" and axes[1:] == "YX":
        raise ValueError(
            f"{name!r}: the image is a stack of {image.shape[0]} planes (its file names its "
            f"axes {axes}), but its labels are one plane {labels.shape!r}; give labels of as "
            f"many planes, {image.shape!r}, or the one plane they annotate as the image"
        )


def _gray_stack(image: np.ndarray, labels: np.ndarray) -> bool:
    """(planes, H, W) pixels with labels of that shape: a grayscale stack (the labels of a
    2D image with channels have its height and width alone)."""
    return image.ndim == 3 and labels.ndim == 3 and image.shape == labels.shape


def _with_gray_stacks(groups: list, channels, empty_planes) -> list[ImageLabelPair]:
    """The pairs of ``groups`` (each file's pairs, or a grayscale stack's (image, labels,
    name, axis)), the planes of the stacks taking no channels beside multichannel files
    (the channels chosen are theirs: such a folder was refused, with advice to give a
    stack no channels that a command has no way to follow); alone, they keep them, to be
    refused as 2D gray images are (:func:`gray_as_is`)."""
    split = [group for group in groups if isinstance(group, list)]
    multichannel = any(p.image.ndim > 2 for pairs in split for p in pairs)
    pairs = []
    for group in groups:
        if isinstance(group, list):
            pairs += group
            continue
        image, labels, name, axis = group
        taken = (None, None) if multichannel else (axis, channels)
        pairs += split_planes(image, labels, name, None, *taken, empty_planes)
    return pairs


def gray_as_is(pairs: list[ImageLabelPair]) -> list[ImageLabelPair]:
    """``pairs`` whose 2D gray images take no channels: those chosen are the multichannel
    files' (a folder mixing them was refused whatever the channels). Data of gray images
    alone keeps them, to be refused: they were meant for other files."""
    gray = dict(channels=None, channel_axis=None)
    return [replace(p, **gray) if p.image.ndim == 2 else p for p in pairs]


def _saved_for_other_pixels(labels_path, image: np.ndarray) -> bool:
    saved = saved_fingerprint(labels_path)
    return saved is not None and saved != image_fingerprint(image)


def empty_planes_message(stacks: Sequence[str]) -> str:
    """The note on the planes of stacks left out for having no object (see split_planes)."""
    return (
        f"left out the planes without objects of {len(stacks)} stack(s): {describe_names(stacks)}"
    )


def _namesake_left(path: Path) -> str:
    """A namesake's autosave left out, as named in :func:`namesakes_message`: one without
    its image's fingerprint (an earlier version's, or samtune segment's) may be this
    image's own, passed over for the one saved for its pixels."""
    if saved_fingerprint(path) is not None:
        return path.name
    return (
        f"{path.name} (saved without its image's fingerprint, perhaps by an earlier version: "
        "if it holds this image's annotations, go on with it in napari, 'Load annotations…')"
    )


def namesakes_message(names: Sequence[str]) -> str:
    """The note on the autosaves left out for having been saved for other images of their
    images' names (see :func:`read_match`): they were left out without a word."""
    return (
        f"left out {len(names)} label file(s) saved for other images of the same name (told "
        f"apart by their pixels): {describe_names(list(names))}"
    )


def foreign_labels_message(names: Sequence[str]) -> str:
    """The warning about pairs whose labels were saved for other pixels (see read_match)."""
    return (
        f"the labels of {len(names)} pair(s) were saved (by napari-samtune: the Annotate "
        f"panel or samtune segment) for other pixels than their image's: "
        f"{describe_names(names)}; another image of the same name, or the image read "
        "differently there? Check that they belong together"
    )
