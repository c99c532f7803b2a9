"""The images ``samtune evaluate`` scores: normalised, checked, each once, with those it
cannot score (no object, blank) left out and named."""

from __future__ import annotations

import sys


def normalised_pairs(pairs: list) -> tuple[list, list, list[str]]:
    """The SAM-ready (H, W, 3) uint8 images, the labels and the names of the pairs with
    objects, checked; each pair's own pixels are let go (taken out of ``pairs``) once normalised.

    Pairs without any object (an empty field of view, or an image not annotated yet)
    are left out and named, as in training, and so are blank images (one value everywhere:
    no model can segment them); ``ValueError`` naming them if none is left.
    The planes of stacks score each piece of an object as an object, as training does
    (:func:`~napari_samtune.core.data.pieces_apart`).
    """
    from napari_samtune.core.data import normalise_pair, pieces_apart
    from napari_samtune.core.duplicate_pairs import drop_repeats, duplicates_message
    from napari_samtune.core.images import is_blank
    from napari_samtune.core.label_files import describe_names

    images, labels, names, left_out, blank = [], [], [], [], []
    for index, pair in enumerate(pairs):
        pairs[index] = None
        image, label = normalise_pair(pair)
        if pair.source:  # a plane of 3D labels: an object per piece, as training takes it
            label = pieces_apart(label)
        if not label.any():
            left_out.append(pair.name)
            continue
        if is_blank(image):
            blank.append(pair.name)
            continue
        images.append(image)
        labels.append(label)
        names.append(pair.name)
    try:  # an image given twice was scored twice: double weight in every mean
        images, labels, names, repeats = drop_repeats(images, labels, names)
    except ValueError as err:  # the same image with other labels
        raise ValueError(f"evaluation data: {err}") from None
    if repeats:
        said = duplicates_message(repeats, "so each image is scored once")
        print(f"evaluation data: {said}", file=sys.stderr)
    if blank:
        print(
            f"evaluation data: left out {len(blank)} pair(s) whose image is one value "
            f"everywhere (blank), which no model can segment: {describe_names(blank)}; "
            "check that they are the right files, and the channels chosen",
            file=sys.stderr,
        )
    if not images and blank:
        raise ValueError("evaluation data: every pair with objects has a blank image")
    if not images:
        raise ValueError(
            f"evaluation data: none of the {len(left_out)} pair(s) has any object (their "
            f"labels are all 0): {describe_names(left_out)}; prompted evaluation needs "
            "annotated objects: annotate them, or check that --labels names the right files"
        )
    if left_out:
        print(
            f"evaluation data: left out {len(left_out)} pair(s) without any object (labels "
            f"all 0): {describe_names(left_out)}",
            file=sys.stderr,  # stdout holds the results alone (> scores.md)
        )
    return images, labels, names
