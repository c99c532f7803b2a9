"""The up-front checks of a training pair's labels and channels, whose errors name the
pair and say how to fix it; :func:`napari_samtune.core.data.check_pair` runs them all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_samtune.core.images import STACK_CHANNELS_FIX, select_channels
from napari_samtune.core.metrics import check_not_a_mask
from napari_samtune.core.tiff_files import float_labels_problem

if TYPE_CHECKING:
    from napari_samtune.core.data import ImageLabelPair


def check_labels(labels: np.ndarray, name: str) -> None:
    if labels.dtype == bool:
        raise TypeError(
            f"labels of {name!r} are boolean (a foreground mask); instance labels are needed, "
            "with one id per object: label connected components, e.g. scipy.ndimage.label"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        floating = np.issubdtype(labels.dtype, np.floating)
        problem = float_labels_problem(labels) if floating else None
        fix = problem or "convert with labels.astype('uint32') if the values are whole numbers >= 0"
        raise NonIntegerLabelsError(
            f"labels of {name!r} have dtype {labels.dtype.name}; integer instance labels are "
            f"needed (0 = background, one id per object): {fix}",
            problem,
        )
    if labels.ndim == 3 and labels.shape[-1] in (3, 4):
        raise ValueError(
            f"labels of {name!r} have shape {labels.shape!r}, an RGB image; a 2D instance label "
            "image is needed (one integer id per object), not a coloured rendering"
        )
    if labels.ndim == 3 and 1 in (labels.shape[0], labels.shape[-1]):
        index = "labels[..., 0]" if labels.shape[-1] == 1 else "labels[0]"
        raise ValueError(
            f"labels of {name!r} have shape {labels.shape!r}, a 2D label image with an extra "
            f"axis of 1 (as some tools save one); give (H, W) labels ({index}) of the image's "
            "height and width"
        )
    if labels.ndim != 2:
        raise ValueError(
            f"labels of {name!r} have shape {labels.shape!r}; give 2D (H, W) labels, or "
            "(planes, H, W) labels with an image stack of as many planes"
        )
    lowest = labels.min(initial=0) if np.issubdtype(labels.dtype, np.signedinteger) else 0
    if lowest < 0:
        raise ValueError(
            f"labels of {name!r} contain negative ids (the lowest is {int(lowest)}); use ids "
            ">= 0 (0 = background)"
        )
    check_not_a_mask(labels, f"labels of {name!r}")


class NonIntegerLabelsError(TypeError):
    """Labels of a dtype other than integers. ``float_problem``: for float labels, why they
    are not instance ids (:func:`float_labels_problem`, "" for whole numbers), computed
    once for a front end to reuse; None for other dtypes or where unknown."""

    def __init__(self, message: str, float_problem: str | None = None) -> None:
        super().__init__(message)
        self.float_problem = float_problem


class ChannelError(ValueError):
    """An image whose channels are ambiguous or badly chosen (see :func:`check_channels`)."""


MAX_CHANNELS = 4  # RGBA: a first axis longer than this holds planes, not channels


def check_channels(pair: ImageLabelPair) -> None:
    """Raise :class:`ChannelError` for an image whose channels are ambiguous or badly chosen,
    naming the pair and the fix; cheap (nothing is normalised), so a command can check every
    file first. Front ends add where the choice is made (an option, a field)."""
    image, labels = np.asarray(pair.image), np.asarray(pair.labels)
    _check_planes(image, labels, pair)
    _check_axes(image, labels, pair)
    try:
        _check_gray_stack(image, labels, pair)
        planes_first = image.ndim == 3 and labels.shape == image.shape[1:]
        if planes_first and image.shape[0] > MAX_CHANNELS and pair.channels is None:
            raise ValueError(
                f"image has shape {image.shape!r} and its labels {labels.shape!r}: a stack of "
                f"{image.shape[0]} planes needs a labels stack of as many planes (empty where "
                "not annotated); a multichannel image needs channel_axis 0 and channels"
            )
        guess = image.ndim == 4 and labels.ndim == 3 and pair.channel_axis is None
        if guess and image.shape[0] == labels.shape[0]:
            raise ValueError(
                f"image has shape {image.shape!r}: {image.shape[0]} planes with a channel axis "
                f"SAM cannot guess; {STACK_CHANNELS_FIX}"
            )
        if guess and image.shape[1] == labels.shape[0]:
            raise ValueError(
                f"image has shape {image.shape!r} and its labels {labels.shape!r}: "
                f"{image.shape[0]} channels first, then {labels.shape[0]} planes; pass "
                "channel_axis 0 and channels (one index, or three for RGB)"
            )
        select_channels(image, pair.channel_axis, pair.channels)
    except ValueError as err:
        raise ChannelError(f"image of {pair.name!r}: {err}") from None
    except TypeError as err:  # channels or channel_axis of the wrong type
        raise TypeError(f"image of {pair.name!r}: {err}") from None


def _check_axes(image: np.ndarray, labels: np.ndarray, pair: ImageLabelPair) -> None:
    """An image of more axes than a pair holds, (T, Z, H, W) say: no choice of channels
    fixes it, so it is a plain ValueError worded for every caller (a script, a command's
    files, the widget's layers), not to_sam_rgb's "pass one plane at a time"."""
    axes = sum(length > 1 for length in image.shape)  # axes of one entry are left out
    if axes > 4 or (axes == 4 and labels.ndim != 3):
        raise ValueError(
            f"image of {pair.name!r} has shape {image.shape!r} and its labels "
            f"{labels.shape!r}; a pair is a 2D image with (H, W) labels, or a stack with one "
            "axis of planes, (planes, H, W[, C]) with (planes, H, W) labels: split the image "
            "(and its labels) along the other axis, e.g. one stack per time point"
        )


def _check_gray_stack(image: np.ndarray, labels: np.ndarray, pair: ImageLabelPair) -> None:
    """A grayscale stack, (planes, H, W) like its labels, given channels it does not have
    (its planes are 2D): the labels checks would blame the labels' shape."""
    chosen = pair.channel_axis is not None or pair.channels is not None
    if chosen and image.ndim == 3 and image.shape == labels.shape:
        raise ValueError(
            f"image has shape {image.shape!r} like its labels: a stack of {image.shape[0]} "
            "grayscale planes, with no channels to choose from; give no channel_axis or "
            "channels for it"
        )


def _check_planes(image: np.ndarray, labels: np.ndarray, pair: ImageLabelPair) -> None:
    """A stack whose labels stack has another number of planes (the planes' shape fits);
    of a (Z, C, H, W) or (C, Z, H, W) stack whose channel axis is given (or named by its
    file), the planes are the axis beside it."""
    shape = image.shape
    if image.ndim == 4 and labels.ndim == 3 and pair.channel_axis is not None:
        try:
            axis = range(4)[pair.channel_axis]
        except (IndexError, TypeError):  # select_channels names a bad axis
            return
        shape = shape[:axis] + shape[axis + 1 :]
        if shape[1:] == labels.shape[1:] and shape[0] != labels.shape[0]:
            raise ValueError(
                f"{pair.name!r}: the image, of shape {image.shape!r} with its channels on axis "
                f"{axis} (given, or named by its file), is a stack of {shape[0]} planes, and "
                f"its labels {labels.shape!r} have {labels.shape[0]}; give one labels plane "
                "per image plane (empty where not annotated)"
            )
        return
    if labels.ndim == 3 and image.ndim in (3, 4) and shape[0] != labels.shape[0]:
        if image.shape[1:3] == labels.shape[1:]:
            raise ValueError(
                f"{pair.name!r}: the image stack has {image.shape[0]} planes and its labels "
                f"{labels.shape[0]}; give one labels plane per image plane (empty where not "
                "annotated)"
            )
