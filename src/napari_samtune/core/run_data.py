"""The data of a training run: pairs (or images prepared by the caller) checked and
prepared, repeated pairs left out, errors saying which data ("validation data: ...")."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from napari_samtune.core.data import ImageLabelPair, PreparedImage, as_pairs, prepare_annotated
from napari_samtune.core.data_checks import ChannelError
from napari_samtune.core.duplicate_pairs import drop_duplicates
from napari_samtune.core.images import is_blank

TrainData = Sequence[ImageLabelPair | tuple[np.ndarray, np.ndarray] | PreparedImage]

# channel_axis and channels, which the core's channel errors name, go with each pair
TUPLE_CHANNELS_HINT = (
    "; an (image, labels) tuple has no place for them: give that pair as "
    "ImageLabelPair(image, labels, channel_axis=..., channels=...)"
)


def prepare_run_data(data: TrainData, what: str):
    """:func:`prepare_annotated` and :func:`drop_duplicates`: (images, names left out for
    having no object, (left out, kept) names of repeats); errors say which data
    ("validation data: ..."). Images the caller prepared are used as they are, less repeats."""
    data = listed(data, what)
    try:
        prepared = isinstance(data, Sequence) and len(data) > 0  # (a lone pair: as_pairs says)
        if prepared and all(isinstance(item, PreparedImage) for item in data):
            images, left_out = list(data), ()
        else:
            images, left_out = prepare_annotated(as_pairs(data), what)
        kept, duplicates = drop_duplicates(images)
    except (ValueError, TypeError) as err:
        tuples = isinstance(data, Sequence) and any(isinstance(i, (tuple, list)) for i in data)
        how = TUPLE_CHANNELS_HINT if isinstance(err, ChannelError) and tuples else ""
        raise type(err)(f"{what} data: {err}{how}") from None
    return kept, left_out, duplicates


def _refuse_not_pairs(data: object, what: str) -> None:
    """A folder or file name given as the data was read as its characters ("data[0] is a
    str" named the first one); None or a number failed on its len()."""
    read_first = (
        "read files first with napari_samtune.core.data.load_pairs(images, labels), e.g. "
        "load_pairs('images/', 'labels/')"
    )
    if isinstance(data, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{what} data is the path {os.fsdecode(data)!r}, not (image, labels) pairs; "
            + read_first
        )
    if not isinstance(data, (Iterable, ImageLabelPair)):
        raise TypeError(
            f"{what} data is {data!r} ({type(data).__name__}); pass a list of (image, "
            f"labels) pairs, e.g. [(image, labels)], or {read_first}"
        )


def listed(data: TrainData, what: str) -> TrainData:
    """Pairs given as an iterator (a generator, ``zip(images, labels)``) as a list: they
    were refused with "object of type 'zip' has no len()". Sequences and what is not an
    iterator (an array, one pair) stay as they are, for :func:`as_pairs` to check; paths,
    None and numbers are refused (``what``: "training" or "validation")."""
    _refuse_not_pairs(data, what)
    return list(data) if isinstance(data, Iterator) else data


def blank_images(images: Sequence[PreparedImage]) -> tuple[str, ...]:
    """Names of the prepared images whose SAM input is one value everywhere: an empty
    channel, a layer not loaded yet, a black frame. Their objects cannot be seen, so
    training on them teaches the model to draw masks on nothing. Each name once: the parts
    of an image split in two go by one name."""
    return tuple(dict.fromkeys(image.name for image in images if is_blank(image.rgb)))


# Of the pairs of neighbouring pixels that both lie in objects, the share in two objects of
# different ids: 1 / width for touching objects of that width (0.17 for cells of 6 px wall to
# wall), a few percent for cells apart; above 0.9 for a microscopy image read as labels (each
# grey value an "object"), whatever its background.
IMAGE_LIKE_EDGES = 0.5


def image_like_labels(images: Sequence[PreparedImage]) -> tuple[str, ...]:
    """Names of the prepared images whose labels look like an image: most neighbouring
    pixels inside objects carry different ids. Images and labels swapped (``--images
    labels/ --labels images/`` with the same file names) trained a useless model without a
    word. Each name once (see :func:`blank_images`)."""
    like = (image.name for image in images if edge_share(image.labels) > IMAGE_LIKE_EDGES)
    return tuple(dict.fromkeys(like))


def edge_share(labels: np.ndarray) -> float:
    """Of the pairs of neighbouring pixels (across and down) that both lie in objects, the
    share whose two ids differ (0 where there is no such pair). Background does not count:
    a background-subtracted image has much of it, and diluted the share of one read as
    labels below any threshold."""
    counts = []
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        inside = (a > 0) & (b > 0)
        counts.append((int(np.count_nonzero(inside & (a != b))), int(np.count_nonzero(inside))))
    differing, pairs = (sum(c) for c in zip(*counts, strict=True))
    return differing / pairs if pairs else 0.0
