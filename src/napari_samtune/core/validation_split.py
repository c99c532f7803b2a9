"""Validation data from the training data: held-out images (or, for one image, a held-out
part of it), and validation pairs that repeat a training pair."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from napari_samtune.core.data import PreparedImage, index_objects
from napari_samtune.core.label_files import describe_names, image_fingerprint


def repeated_pairs(images: Sequence[PreparedImage], seen: Sequence[PreparedImage]) -> tuple:
    """Names of ``images`` whose pixels and labels equal those of an image in ``seen``
    (by :func:`image_fingerprint` of both): validation data that repeats training data
    scores fitting, not new images."""
    known = {_fingerprints(image) for image in seen}
    return tuple(image.name for image in images if _fingerprints(image) in known)


def same_images(images: Sequence[PreparedImage], seen: Sequence[PreparedImage]) -> tuple:
    """Names of ``images`` whose pixels equal those of an image in ``seen`` while their labels
    differ from that image's (re-annotated, or annotated by someone else): the model trains on
    those pixels, so validating on them is leakage too. Pairs that repeat labels as well are
    :func:`repeated_pairs`."""
    pixels = {image_fingerprint(image.rgb) for image in seen}
    pairs = {_fingerprints(image) for image in seen}
    return tuple(
        image.name
        for image in images
        if image_fingerprint(image.rgb) in pixels and _fingerprints(image) not in pairs
    )


def _fingerprints(image: PreparedImage) -> tuple[str, str]:
    return image_fingerprint(image.rgb), image_fingerprint(image.labels)


class EmptyPartError(ValueError):
    """One part of the only training image, held out for validation or left for training,
    has no object: ``image`` (its name), ``where`` (e.g. "rows 86..95") and ``part``
    ("training" or "validation") say which; ``left_out``: the pairs given beside it, left
    out for having no object (the message called it the only image of two given)."""

    def __init__(self, image: str, where: str, part: str, left_out: Sequence[str] = ()) -> None:
        kept = "held out for validation" if part == "validation" else "kept for training"
        super().__init__(
            f"{image!r} is the only image{others_without_objects(left_out)}, so its {where} "
            f"were {kept}, but that part has no objects; pass validation data, "
            "annotate objects there, or set val_fraction=0"
        )
        self.image, self.where, self.part = image, where, part
        self.left_out = tuple(left_out)


def others_without_objects(left_out: Sequence[str]) -> str:
    """ " with objects (the N other pair(s) ... left out: names)", or "" for none."""
    if not left_out:
        return ""
    return (
        f" with objects (the {len(left_out)} other pair(s) given have none and are left "
        f"out: {describe_names(list(left_out))})"
    )


def split_validation(
    images: Sequence[PreparedImage], val_fraction: float, seed: int, notes: list | None = None
) -> tuple[list[PreparedImage], list[PreparedImage]]:
    """Hold out ``val_fraction`` of the images (at least one) for validation.

    The planes of a stack go together (:attr:`~.PreparedImage.group`): neighbouring planes
    look alike, so validating on planes between training planes scored fitting (one stack's
    plane 3 validated while its planes 2 and 4 trained). With several stacks or images,
    whole ones are held out; with the planes of one stack only, its last planes; with a
    single image, its last ``val_fraction`` along the longer axis, so one annotated image
    is enough to train and validate (``notes``: see :func:`split_one_image`).
    """
    images = list(images)
    if val_fraction <= 0:
        return images, []
    n_val = min(len(images) - 1, max(1, round(val_fraction * len(images))))
    sizes = Counter(image.group for image in images)
    if len(sizes) >= 2:
        held_out = _held_out_groups(list(sizes), sizes, n_val, seed)
        train = [im for im in images if im.group not in held_out]
        return train, [im for im in images if im.group in held_out]
    if len(images) >= 2:  # the planes of one stack, in their order
        return images[:-n_val], images[-n_val:]
    return split_one_image(images[0], val_fraction, notes)


def _held_out_groups(groups: list[str], sizes: Counter, n_val: int, seed: int) -> set[str]:
    """Groups in a seeded random order, each held out while the images held out stay within
    ``n_val`` (a stack of many planes would leave little to train on), and one left to
    train; where none fits, the smallest. For images of their own (groups of one), the
    first ``n_val`` in that order, as before stacks were grouped."""
    order = [groups[i] for i in np.random.default_rng([seed, 7]).permutation(len(groups))]
    held_out, n_held = set(), 0
    for group in order:
        if n_held + sizes[group] <= n_val and len(held_out) < len(groups) - 1:
            held_out.add(group)
            n_held += sizes[group]
    return held_out or {min(order, key=lambda group: sizes[group])}


def split_one_image(
    image: PreparedImage, val_fraction: float, notes: list[str] | None = None
) -> tuple[list, list]:
    """([training part], [validation part]) of one image: its last ``val_fraction`` along
    the longer axis held out (a resumed run holds out the same part again). ``notes``, if
    given, receives the warning where the held-out part holds only objects that the cut
    splits (:func:`_cut_ids`: kept then, as there is nothing else): their scores flatter
    the model, and this was unsaid."""
    index, labels = _parts(image, val_fraction)
    held_out, cut = _cut_ids(labels["training"], labels["validation"])
    if cut.any() and (held_out != cut).any():
        labels["validation"] = np.where(cut[labels["validation"]], 0, labels["validation"])
    elif cut.any() and notes is not None:
        notes.append(
            f"validation of {image.name!r}, the only image, scores only objects that the split "
            f"cuts ({_rows_named(index['validation'])} held out): training sees their other "
            "part, so the validation scores flatter the model and choose its best epoch by "
            "that; give validation data (another annotated image), or annotate an object "
            "that lies wholly in the held-out part"
        )
    parts = []
    for name, where in index.items():
        try:
            parts.append(index_objects(image.rgb[where], labels[name], image.name, image.source))
        except ValueError:
            raise EmptyPartError(image.name, _rows_named(where), name) from None
    return [parts[0]], [parts[1]]


def _parts(image: PreparedImage, val_fraction: float) -> tuple[dict, dict]:
    """The (rows, columns) index of the training and the validation part of ``image`` (its
    last ``val_fraction`` along the longer axis), and their labels."""
    axis = 0 if image.labels.shape[0] >= image.labels.shape[1] else 1
    length = image.labels.shape[axis]
    if length < 2:
        raise ValueError(
            f"{image.name!r} is the only image and is {length} pixel wide along its longer "
            "side, too small to hold part of it out for validation; pass validation data or "
            "set val_fraction=0"
        )
    # each part keeps at least one row (or column), whatever the fraction
    cut = min(length - 1, max(1, int(round(length * (1.0 - val_fraction)))))
    regions = {"training": slice(0, cut), "validation": slice(cut, length)}
    index = {
        name: (region, slice(None)) if axis == 0 else (slice(None), region)
        for name, region in regions.items()
    }
    return index, {name: image.labels[where] for name, where in index.items()}


def _rows_named(where: tuple[slice, slice]) -> str:
    """``"rows 230..255"`` or ``"columns 0..9"`` of a part's index."""
    axis = 0 if where[0] != slice(None) else 1
    region = where[axis]
    return f"{'rows' if axis == 0 else 'columns'} {region.start}..{region.stop - 1}"


def _cut_ids(training: np.ndarray, validation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which ids (a boolean (N + 1,) each, of an image's 1..N labels) the validation part
    holds, and which of those the cut splits: training sees the rest of them, and scoring
    their pieces flattered the model (6 of a 128 px image's 8 held-out objects), so they
    are not scored, unless every held-out object is cut (then there is nothing else)."""
    n = int(max(training.max(initial=0), validation.max(initial=0)))
    held_out = np.bincount(validation.ravel(), minlength=n + 1) > 0
    cut = held_out & (np.bincount(training.ravel(), minlength=n + 1) > 0)
    held_out[0] = cut[0] = False
    return held_out, cut
