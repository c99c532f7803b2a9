"""Layer pairs that repeat an image of the TIFF folders of the same data, found before Start.

The core leaves out such a repeat, or refuses it when its labels differ
(:mod:`napari_samtune.core.duplicate_pairs`), but only once the worker has loaded (perhaps
downloaded) the model. The folder check (:func:`~napari_samtune._qt.train_folders.
check_folder_pairs`) already prepares every folder pair in a worker: it keeps an
:class:`ImageDigest` of each image it keeps, a few bytes, so that after Start the layer
pairs (the layers' planes, copied by the run as it begins) are prepared and compared in a
worker too, in milliseconds per image, without reading the folders again. Digests stand
for the core's exact comparison: equal normalised pixels, and labels with the same objects
whatever their ids. Nothing here touches a widget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_samtune.core.data import ImageLabelPair, PreparedImage, prepare_pair
from napari_samtune.core.duplicate_pairs import conflict_message, duplicates_message, same_objects
from napari_samtune.core.label_files import image_fingerprint


@dataclass(frozen=True)
class ImageDigest:
    """What identifies a prepared pair for finding repeats."""

    name: str  # the pair's name, as the core names it in messages
    pixels: str  # hash of the normalised (H, W, 3) uint8 image and its shape
    objects: str  # hash of the labels whatever their ids (see objects_digest)


@dataclass(frozen=True)
class RepeatCheck:
    """What comparing the layer pairs with the folders found."""

    problem: str  # a layer pair and a folder pair of one image with other labels, or ""
    note: str  # the folder pairs the run will leave out as repeats of a layer pair, or ""


def _hash(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(repr((array.shape, str(array.dtype))).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def objects_digest(image: PreparedImage) -> str:
    """A hash equal for two prepared pairs exactly when their labels hold the same objects
    (:func:`~napari_samtune.core.duplicate_pairs.same_objects`): the ids renumbered in
    order of each object's first pixel (row by row), found from its bounding box."""
    labels, firsts = image.labels, []
    for object_id, (rows, cols) in enumerate(image.object_slices, start=1):
        top = labels[rows.start, cols] == object_id  # the box's top row holds the first pixel
        firsts.append((rows.start, cols.start + int(np.argmax(top))))
    order = sorted(range(len(firsts)), key=firsts.__getitem__)
    renumber = np.zeros(len(firsts) + 1, np.uint32)
    renumber[np.asarray(order, dtype=np.int64) + 1] = np.arange(1, len(order) + 1)
    return _hash(renumber[labels])


def image_digest(image: PreparedImage) -> ImageDigest:
    """The digest of a prepared pair."""
    return ImageDigest(image.name, _hash(image.rgb), objects_digest(image))


def compare_with_folders(
    layer_pairs: Sequence[ImageLabelPair], folder_images: Sequence[ImageDigest]
) -> RepeatCheck:
    """Prepare ``layer_pairs`` (run it in a worker) and find the folder images they repeat.

    The run puts the layer pairs before the folders' and keeps the first of two copies,
    so a folder copy is the one left out, or, with other labels, the one refused. Pairs
    that cannot be prepared or hold no object are left to the other checks.
    """
    by_pixels: dict[str, ImageDigest] = {}
    for pair in layer_pairs:
        try:
            digest = image_digest(prepare_pair(pair))
        except (ValueError, TypeError):  # no object (left out), or refused by Start's checks
            continue
        by_pixels.setdefault(digest.pixels, digest)
    repeats = []
    for folder in folder_images:
        layer = by_pixels.get(folder.pixels)
        if layer is None:
            continue
        if layer.objects != folder.objects:
            return RepeatCheck(conflict_message(folder.name, layer.name), "")
        repeats.append((folder.name, layer.name))
    return RepeatCheck("", duplicates_message(repeats))


def layer_pairs_conflict(pairs: Sequence[ImageLabelPair]) -> str:
    """The core's refusal of two of ``pairs`` that are one image with labels of other objects
    (a layer duplicated, or chosen twice, and annotated apart), found at Start rather than
    once the worker had loaded (or downloaded) the model; "" if none.

    Milliseconds, on the main thread: only pairs whose pixels in memory share a fingerprint
    are prepared and compared as the core compares them. Lazy images are left to the run.
    """
    candidates: dict[tuple, list[ImageLabelPair]] = {}
    for pair in pairs:
        if isinstance(pair.image, np.ndarray):
            key = (image_fingerprint(pair.image), pair.channel_axis, pair.channels)
            candidates.setdefault(key, []).append(pair)
    for group in candidates.values():
        if len(group) < 2:
            continue
        prepared = []
        for pair in group:
            try:
                prepared.append(prepare_pair(pair))
            except (ValueError, TypeError):  # no object (left out), or refused by Start's checks
                continue
        for k, image in enumerate(prepared):
            for earlier in prepared[:k]:
                same_image = np.array_equal(earlier.rgb, image.rgb)
                if same_image and not same_objects(earlier.labels, image.labels):
                    return conflict_message(image.name, earlier.name)
    return ""
