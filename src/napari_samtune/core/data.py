"""Training data: image + instance-label pairs, checked up front, split for validation.

Pairs come from TIFF files (folders, globs or file lists, paired by file name:
:mod:`napari_samtune.core.data_files`) or from in-memory arrays (the napari widget
passes layer data; :mod:`napari_samtune.core.data_pairs`). Every pair is checked before
training starts; errors name the pair and the fix.

Images are normalised once with :func:`napari_samtune.core.images.to_sam_rgb`,
exactly as at inference, and their objects relabelled 1..N and located
(:class:`PreparedImage`). Training patches are cut from them by
:mod:`napari_samtune.core.patches`.

Coordinates: arrays are (row, col).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage

from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.data_checks import check_channels, check_labels

# the pairs and the files they are read from, importable from here as they always were
from napari_samtune.core.data_files import (  # noqa: F401
    empty_planes_message,
    foreign_labels_message,
    gray_as_is,
    load_pairs,
    namesakes_message,
    read_match,
)
from napari_samtune.core.data_pairs import (
    ImageLabelPair,
    PreparedImage,
    _without_single_axis,
    split_planes,
)
from napari_samtune.core.images import (
    as_pixels,
    check_some_pixel_finite,
    plane_to_sam_rgb,
    sam_plane,
    warnings_named,
)
from napari_samtune.core.label_files import describe_names


def as_pairs(
    data: Sequence[ImageLabelPair | tuple[np.ndarray, np.ndarray]],
) -> list[ImageLabelPair]:
    """Accept pairs as :class:`ImageLabelPair` or plain ``(image, labels)`` tuples; a tuple
    of stacks, ``(planes, H, W[, C])`` and ``(planes, H, W)`` labels, gives one pair per
    annotated plane, as a stack read from files does (:func:`split_planes`)."""
    if isinstance(data, ImageLabelPair) or not isinstance(data, Sequence) or not len(data):
        one = "; to train on one pair, pass [pair]" if isinstance(data, ImageLabelPair) else ""
        raise ValueError(
            "training data must be a non-empty list of (image, labels) pairs; "
            f"got {type(data).__name__} of length "
            f"{len(data) if hasattr(data, '__len__') else '?'}{one}"
        )
    pairs = []
    for i, item in enumerate(data):
        if isinstance(item, ImageLabelPair):
            pairs.append(_with_arrays(item))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pairs += split_planes(as_pixels(item[0]), as_pixels(item[1]), f"pair {i}")
        else:
            one = len(data) == 2 and all(isinstance(part, np.ndarray) for part in data)
            hint = "; to train on one pair, pass [(image, labels)]" if one else ""
            raise TypeError(f"data[{i}] is {kind_of(item)}; give an (image, labels) pair{hint}")
    return pairs


def _with_arrays(pair: ImageLabelPair) -> ImageLabelPair:
    """``pair`` with numpy arrays (:func:`as_pixels`: a bfloat16 tensor or one that tracks
    gradients too; numpy arrays are kept as they are) and (H, W, 1) or (1, H, W) labels that
    fit the image as (H, W), as an (image, labels) tuple's are (:func:`split_planes`)."""
    image, labels = as_pixels(pair.image), as_pixels(pair.labels)
    labels = _without_single_axis(labels, image)
    if image is pair.image and labels is pair.labels:
        return pair
    return replace(pair, image=image, labels=labels)


def prepare_pair(pair: ImageLabelPair) -> PreparedImage:
    """Check one pair and normalise it; errors name the pair and say how to fix it, and so
    do warnings (a stack's planes by the stack's name, said once)."""
    with warnings_named(pair.source or pair.name):
        rgb, labels = normalise_pair(pair)
    if pair.source:  # a plane of 3D labels
        labels = pieces_apart(labels)
    return index_objects(rgb, labels, pair.name, pair.source)


def pieces_apart(labels: np.ndarray) -> np.ndarray:
    """(H, W) labels whose objects are each one connected piece (diagonal neighbours
    connect): an object in several pieces gets an id per piece, uint32 ids 1..N. A plane
    cut from 3D labels holds a 3D object's cross-section, which is in pieces where the
    object bends (a U-shaped cell's two arms): trained as one object, its box spanned both,
    and a click on one arm was taught to segment the other too."""
    dense = _relabel(labels)
    out = np.zeros(dense.shape, np.uint32)
    connected = ndimage.generate_binary_structure(2, 2)
    next_id = 1
    for object_id, window in enumerate(ndimage.find_objects(dense), start=1):
        if window is None:
            continue
        pieces, n_pieces = ndimage.label(dense[window] == object_id, connected)
        inside = pieces > 0
        out[window][inside] = pieces[inside] + (next_id - 1)
        next_id += n_pieces
    return out


def normalise_pair(pair: ImageLabelPair) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W, 3) uint8 image (:func:`to_sam_rgb`) and the (H, W) labels of a checked
    pair, as given (they may have no object); errors as in :func:`prepare_pair`."""
    plane, labels = _checked(pair)
    return plane_to_sam_rgb(plane), labels


def check_pair(pair: ImageLabelPair) -> None:
    """Raise what :func:`prepare_pair` would raise for ``pair``, with the same message,
    without normalising it or locating its objects: dtypes, shapes and passes over the
    labels (0.3 s for a 4096 x 4096 image in ``prepare_pair``, about 12 ms here), so a front
    end can check a pair where it must not wait."""
    if not np.any(_checked(pair)[1]):
        raise _no_objects(pair.name)


def _checked(pair: ImageLabelPair) -> tuple[np.ndarray, np.ndarray]:
    """The pair's image plane to normalise (:func:`~napari_samtune.core.images.sam_plane`)
    and its labels as an array, after every check but that the labels hold an object."""
    image, labels = np.asarray(pair.image), np.asarray(pair.labels)
    check_channels(pair)
    check_labels(labels, pair.name)
    check_some_pixel_finite(image, f"image of {pair.name!r}")
    try:
        plane = sam_plane(image, pair.channel_axis, pair.channels)
    except (ValueError, TypeError) as err:
        raise type(err)(f"image of {pair.name!r}: {err}") from None
    height, width = plane.shape[:2]
    if (height, width) != labels.shape:
        raise ValueError(
            f"image of {pair.name!r} is {height}x{width} pixels but its labels have "
            f"shape {labels.shape!r}; image and labels must cover the same pixels (check the "
            "pairing, or that neither was resized or transposed)"
        )
    return plane, labels


class NoObjectsError(ValueError):
    """Labels without any object: every pixel is background (0)."""


def _no_objects(name: str) -> NoObjectsError:
    return NoObjectsError(
        f"labels of {name!r} contain no objects (every pixel is 0); annotate at least one "
        "object or leave this pair out"
    )


MAX_LOOKUP_ID = 1 << 22  # relabel through a lookup table up to this id, else by sorting


def _relabel(labels: np.ndarray) -> np.ndarray:
    """uint32 labels whose ids are 1..N in the order of the original ids (0 stays 0).

    Through a table indexed by id: O(pixels), where np.unique sorted a copy (1.1-2.6 s for
    a 4096 x 4096 image on the 2-core VM). Labels with ids beyond MAX_LOOKUP_ID are sorted.
    """
    if labels.max(initial=0) <= MAX_LOOKUP_ID:
        # as intp: numpy 1's bincount refuses uint64 ("Cannot cast ... according to 'safe'")
        present = np.flatnonzero(np.bincount(labels.ravel().astype(np.intp, copy=False)))
        table = np.zeros(int(present[-1]) + 1, dtype=np.uint32)
        table[present] = np.arange(len(present), dtype=np.uint32)
        dense = table[labels]
        first_id = present[0]
    else:
        ids, dense = np.unique(labels, return_inverse=True)
        dense, first_id = dense.reshape(labels.shape).astype(np.uint32), ids[0]
    if first_id != 0:  # no background pixel: ids must still start at 1
        dense += 1
    return dense


def index_objects(
    rgb: np.ndarray, labels: np.ndarray, name: str, source: str = ""
) -> PreparedImage:
    """Relabel to ids 1..N and locate the objects; refuse labels without any object."""
    dense = _relabel(labels)
    n_objects = int(dense.max())
    if n_objects == 0:
        raise _no_objects(name)
    areas = np.bincount(dense.ravel(), minlength=n_objects + 1)[1:].astype(np.int64)
    slices = tuple(ndimage.find_objects(dense, max_label=n_objects))
    return PreparedImage(rgb, dense, name, slices, areas, source)


def prepare_pairs(pairs: Sequence[ImageLabelPair]) -> list[PreparedImage]:
    return [prepare_pair(p) for p in pairs]


def prepare_annotated(
    pairs: Sequence[ImageLabelPair],
    what: str = "training",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[PreparedImage], tuple[str, ...]]:
    """Prepare the pairs that have objects and name those left out for having none.

    Prompts and losses need objects, so labels of only background (an empty field of
    view, or an image not annotated yet) cannot be trained or validated on. They are left
    out, as Cellpose does, so a folder of annotations trains as it is; the caller says
    which. Every other check still refuses its pair. ``what`` names the data in the error
    raised when no pair has an object; ``progress(done, total)`` is called after each pair.
    """
    prepared, left_out = [], []
    for done, pair in enumerate(pairs, start=1):
        try:
            prepared.append(prepare_pair(pair))
        except NoObjectsError as err:
            left_out.append(pair.name)
            error = err
        if progress is not None:
            progress(done, len(pairs))
    if not prepared:
        if len(left_out) == 1:
            raise error  # the single pair's own message
        raise NoObjectsError(
            f"none of the {len(left_out)} {what} pairs has any object (all their labels are "
            f"0): {describe_names(left_out)}; annotate objects, or check that the labels are "
            "the right files"
        )
    return prepared, tuple(left_out)
