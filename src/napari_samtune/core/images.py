"""Image normalisation shared by segmentation and training.

The one documented rule (used identically at inference and in training):

* The result is a uint8 RGB array of shape (H, W, 3), what Segment Anything
  was trained on.
* 2D grayscale images are repeated into the three channels.
* Multichannel images: pick one channel (repeated) or three channels (as RGB)
  with ``channels``; ``channel_axis`` says which axis holds the channels
  (default: the last axis when it has 3 or 4 entries).
* uint8 data is used as is. Any other dtype (uint16, int, float) is rescaled
  per image: the 1st percentile maps to 0 and the 99.8th to 255, clipped
  (:mod:`.intensity`).
  So 16-bit microscopy data works without the user converting it first.
  Complex images are refused: their magnitude or real part is the user's choice.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from napari_samtune.core.intensity import check_rescalable, rescale_to_uint8

# how a script or command fixes an ambiguous channel axis; front ends word it their way
CHANNELS_FIX = "pass channel_axis (e.g. 0 or -1) and channels (one index, or three for RGB)"
# a stack with channels: the panel words it with its channels field (the axis follows)
STACK_CHANNELS_FIX = (
    "pass channel_axis (counted in the stack, e.g. 1 or -1) and channels (one index, or "
    "three for RGB)"
)


# the image file a warning is about, where a caller says (see warnings_named)
_IMAGE_NAME: ContextVar[str] = ContextVar("image_name", default="")


def as_pixels(image: object) -> np.ndarray:
    """``image`` as a numpy array; a torch tensor on a GPU, one that tracks gradients or one of
    bfloat16 (which numpy lacks) too, which np.asarray refused with torch's own words
    ("Got unsupported ScalarType BFloat16", "Can't call numpy() on Tensor that requires
    grad"). Torch is not imported here: without it loaded, no tensor can exist."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(image, torch.Tensor):
        return np.asarray(image)
    image = image.detach().cpu()
    return (image.float() if image.dtype == torch.bfloat16 else image).numpy()


def check_some_pixel_finite(image: np.ndarray, name: str) -> None:
    """``ValueError`` naming ``name`` for a float image without a finite pixel (all NaN or
    infinite, e.g. a failed export): it normalises to black, so its masks, a model's scores
    on it or training on it would be made up without a word. An image without pixels passes:
    :func:`sam_plane` names it empty."""
    if image.size and np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        raise ValueError(
            f"{name} holds no finite pixel value (all NaN or infinite), so there is "
            "nothing to segment; check how the file was exported"
        )


def is_blank(rgb: np.ndarray) -> bool:
    """Whether SAM's input ``rgb`` is one value everywhere: a black frame, an empty or
    flat channel (an alpha channel chosen as the image)."""
    if not rgb.size:
        return False
    first = rgb.reshape(-1)[0]
    sample = rgb[::61, ::67] if rgb.ndim >= 2 else rgb  # most images tell at once
    return bool(np.all(sample == first)) and bool(np.all(rgb == first))


def blank_problem(name: str) -> str:
    """Why an image that :func:`is_blank` cannot be segmented, with the fix."""
    return (
        f"{name} is one value everywhere (blank) as SAM sees it, so any mask of it would be "
        "made up; check that it is the right file, and the channel chosen"
    )


SAY_CHANNEL_AXIS = "say which with channel_axis=0 or 1"  # the panel words it otherwise
MAX_GUESSED_CHANNELS = 16  # with channels chosen, an end axis this short holds them


def _guess_channel_axis(shape: tuple[int, ...], chosen: bool) -> int:
    """The channel axis of a 3D image, in this order:

    * the last axis if it has 3 or 4 entries (RGB or RGBA);
    * an end axis of 1 entry ((1, H, W), as some tools save a 2D image);
    * only when channels are ``chosen``: the first axis if it has 2..4 entries, else the one
      end axis of at most MAX_GUESSED_CHANNELS entries ((H, W, 2), (8, H, W)).

    ``ValueError`` when none of these decides.
    """
    if shape[-1] in (3, 4):
        return -1
    if 1 in (shape[0], shape[-1]):
        return 0 if shape[0] == 1 else -1
    if chosen and shape[0] in (2, 3, 4):
        return 0
    short = [axis for axis in (0, -1) if shape[axis] <= MAX_GUESSED_CHANNELS]
    if chosen and len(short) == 1:
        return short[0]
    raise ValueError(f"image has shape {shape!r} and its channel axis is ambiguous; {CHANNELS_FIX}")


def parse_channels(text: str) -> tuple[int, ...] | None:
    """Channels typed as text: ``"1"`` (one, as gray) or ``"0,1,2"`` (three, as RGB); None
    for ``""``. ``ValueError`` naming the text otherwise."""
    if not text.strip():
        return None
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a channel list; give one index (e.g. 1) or three (e.g. 0,1,2)"
        ) from None
    if len(channels) not in (1, 3) or min(channels) < 0:
        raise ValueError(f"{text!r}: give one channel index or three, each 0 or more")
    return channels


def as_channel_indices(channels: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``channels`` as a tuple of ints: one index (``1`` is ``(1,)``) or a sequence of them;
    None stays None. ``TypeError`` naming the value for anything else (text, floats, bools);
    the number and range of the indices are checked against the image by
    :func:`select_channels`."""
    if channels is None:
        return None
    if _is_index(channels):
        return (int(channels),)
    if not isinstance(channels, (str, bytes)):
        try:
            indices = tuple(channels)
        except TypeError:
            indices = None
        if indices is not None and all(_is_index(c) for c in indices):
            return tuple(int(c) for c in indices)
    text = " (text: parse typed channels with parse_channels)" if isinstance(channels, str) else ""
    raise TypeError(
        f"channels={channels!r} is not a channel choice{text}; give one index (e.g. 1) or "
        "a list of three (e.g. [0, 1, 2]) as whole numbers"
    )


def _is_index(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_channel_axis(channel_axis: int | None, shape: tuple[int, ...]) -> None:
    """A channel axis the image of ``shape`` (2D, or 3D with channels) can have."""
    if channel_axis is None:
        return
    if not _is_index(channel_axis):
        raise TypeError(
            f"channel_axis={channel_axis!r}; give the axis that holds the channels as a whole "
            "number (e.g. 0 or -1), or None"
        )
    if len(shape) == 2:
        raise ValueError(
            f"channel_axis={channel_axis!r} was given but the image has shape {shape!r}, a 2D "
            "grayscale image without a channel axis; leave channel_axis out"
        )
    if len(shape) == 3 and not -3 <= channel_axis < 3:
        raise ValueError(
            f"channel_axis={channel_axis!r} is out of range for an image of shape {shape!r}; "
            "give an axis in -3..2 (channels are usually axis 0 or -1)"
        )


def _drop_extra_single_axes(
    image: np.ndarray, channel_axis: int | None
) -> tuple[np.ndarray, int | None]:
    """An image of more than 3 axes whose others have 1 entry ((1, 1, H, W) or (H, W, 1, 1),
    as numpy and some tools save a 2D image) without those, and ``channel_axis`` (kept, if
    given) counted in what is left; any other image and axis as they are. They were refused
    as stacks, and the hint to segment them as one (``--stack``) took (H, W, 1, 1) for H
    planes of W x 1 pixels."""
    if image.ndim <= 3 or not (channel_axis is None or _is_index(channel_axis)):
        return image, channel_axis
    if channel_axis is not None and not -image.ndim <= channel_axis < image.ndim:
        return image, channel_axis  # refused with the image's own shape below
    kept = None if channel_axis is None else channel_axis % image.ndim
    single = [axis for axis in range(image.ndim) if image.shape[axis] == 1 and axis != kept]
    if image.ndim - len(single) not in (2, 3):
        return image, channel_axis
    if kept is not None:
        kept -= sum(axis < kept for axis in single)
    return np.squeeze(image, axis=tuple(single)), kept


def select_channels(
    image: np.ndarray, channel_axis: int | None, channels: int | Sequence[int] | None
) -> np.ndarray:
    """Return (H, W) or (H, W, 3) from a 2D or channelled image.

    ``channel_axis`` is an axis of a channelled image (-3..2), or None (guessed; see
    :func:`_guess_channel_axis`); a 2D image takes neither it nor ``channels``. ``channels``
    is one index (``1`` or ``[1]``, used as gray) or three (used as RGB). More axes are
    refused unless they have one entry ((1, 1, H, W) is 2D; see
    :func:`_drop_extra_single_axes`).
    """
    chosen = as_channel_indices(channels)
    plane, axis = _drop_extra_single_axes(image, channel_axis)
    if plane is image:
        return _select_channels(image, channel_axis, channels, chosen)
    try:
        return _select_channels(plane, axis, channels, chosen)
    except ValueError as err:  # its shape and axes are those of the image less single axes
        raise ValueError(
            f"{err} (the image's shape is {image.shape!r}: its axes of one entry were left out, "
            "but channel_axis counts them)"
        ) from None


def _select_channels(
    image: np.ndarray,
    channel_axis: int | None,
    channels: int | Sequence[int] | None,
    chosen: tuple[int, ...] | None,
) -> np.ndarray:
    """:func:`select_channels` of an image of at most 3 axes (more are refused); ``chosen``
    is ``channels`` as indices."""
    _check_channel_axis(channel_axis, image.shape)
    if image.ndim == 2:
        if chosen is not None:
            raise ValueError(
                f"channels={channels!r} was given but the image is 2D grayscale, with no "
                "channels to choose from; give no channels for it"
            )
        return image
    if image.ndim != 3:
        raise ValueError(
            f"image has shape {image.shape!r}; expected one plane: a 2D image (H, W) or a "
            "channelled image (H, W, C); SAM segments a stack one plane at a time"
        )
    if channel_axis is None:
        channel_axis = _guess_channel_axis(image.shape, chosen is not None)
    image = np.moveaxis(image, channel_axis, -1)
    n_channels = image.shape[-1]
    if chosen is None:
        if n_channels == 4 and np.ptp(image[..., 3]) > 0:
            warnings.warn(
                f"{_IMAGE_NAME.get()}image of shape {image.shape!r} is taken as RGBA, so its "
                "4th channel (axis -1, index 3) is not used, yet it varies: if it holds a "
                "channel of its own (4-channel fluorescence), pass channels=[3] (or three "
                "indices) to choose what SAM sees",
                UserWarning,
                stacklevel=3,
            )
        if n_channels in (3, 4):  # RGB, or RGBA whose alpha carries no content
            return image[..., :3]
        if n_channels == 1:
            return image[..., 0]
        three = " or channels=[0, 1, 2] to use three of them as RGB" if n_channels > 2 else ""
        raise ValueError(
            f"image has {n_channels} channels (0..{n_channels - 1}); pass channels=[0] to "
            f"use one of them (here the first){three}"
        )
    if len(chosen) not in (1, 3) or any(not 0 <= c < n_channels for c in chosen):
        raise ValueError(
            f"channels={channels!r} is invalid for an image with {n_channels} channels; "
            f"give one or three indices in 0..{n_channels - 1}"
        )
    selected = image[..., list(chosen)]
    return selected[..., 0] if len(chosen) == 1 else selected


def planes_first(
    image: np.ndarray,
    channel_axis: int | None,
    channels: Sequence[int] | None = None,
    n_planes: int | None = None,
) -> tuple[np.ndarray, int | None]:
    """A 4-axis stack whose channels come first, (C, Z, H, W) as OME-TIFF files often hold
    them, as a (Z, C, H, W) view and the channel axis counted in it (1); any other image and
    axis as they are. Channels come first when ``channel_axis`` is 0, or, with ``channels``
    chosen and no axis, when axis 1 alone has ``n_planes`` entries (the labels' planes);
    given ``n_planes``, axis 1 must have as many. ``ValueError`` where both axes have them
    and no axis is given (it was read as planes first unsaid, C == Z)."""
    if image.ndim != 4 or n_planes not in (None, image.shape[1]):
        return image, channel_axis
    asked = channel_axis in (0, -4)
    chosen = channel_axis is None and channels is not None and n_planes is not None
    if chosen and n_planes == len(image):  # (C, Z, ...) and (Z, C, ...) both fit the labels
        raise ValueError(
            f"image of shape {image.shape!r} has {n_planes} entries on its first two axes, "
            "as many as its labels have planes: its channels may come first (C, Z, H, W) "
            f"or second (Z, C, H, W); {SAY_CHANNEL_AXIS}, or save it with its axes named, as "
            "ImageJ and OME-TIFF do"
        )
    guessed = chosen and n_planes != len(image)
    return (np.moveaxis(image, 0, 1), 1) if asked or guessed else (image, channel_axis)


def plane_channel_axis(channel_axis: int | None, ndim: int) -> int | None:
    """The channel axis within one plane of a stack, given ``channel_axis`` counted in the
    whole ``ndim``-axis array whose axis 0 holds the planes (z or time); None stays None.
    A stack with channels has 4 axes: the planes of 3 are 2D, without a channel axis."""
    if channel_axis is None:
        return None
    if not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"channel_axis={channel_axis!r} is out of range for an image with {ndim} axes; "
            f"give an axis in {-ndim}..{ndim - 1}"
        )
    if channel_axis % ndim == 0:
        raise ValueError(
            f"channel_axis={channel_axis!r} is the stack's axis of planes (axis 0); give the "
            "axis that holds the channels"
        )
    if ndim < 4:
        raise ValueError(
            f"channel_axis={channel_axis!r} was given for a stack of {ndim} axes, whose planes "
            "are 2D without channels; leave channel_axis out, or give a stack with channels: "
            "4 axes, (planes, H, W, C) or (C, planes, H, W)"
        )
    return channel_axis % ndim - 1


def to_sam_rgb(
    image: np.ndarray,
    channel_axis: int | None = None,
    channels: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Normalise a microscopy image to the uint8 RGB input of Segment Anything.

    Args:
        image: (H, W) grayscale, (H, W, 3|4) RGB(A), or a multichannel array whose
            channel axis is ``channel_axis``; uint8, uint16, int or float (not complex).
            More axes are refused unless they have one entry ((1, 1, H, W) is 2D).
        channel_axis: the axis that holds channels (-3..2), given only for an image with
            one; None guesses it (RGB(A) last, a single-entry end axis, ...).
        channels: one index (``1`` or ``[1]``, used as grayscale) or three (used as RGB).

    Returns:
        uint8 array of shape (H, W, 3), C-contiguous.
    """
    return plane_to_sam_rgb(sam_plane(np.asarray(image), channel_axis, channels))


def plane_to_sam_rgb(plane: np.ndarray) -> np.ndarray:
    """:func:`to_sam_rgb` of the plane :func:`sam_plane` chose and checked."""
    if plane.ndim == 3:  # rescale RGB jointly so colour balance is kept
        plane = rescale_to_uint8(plane)
    else:
        plane = np.repeat(rescale_to_uint8(plane)[..., None], 3, axis=-1)
    return np.ascontiguousarray(plane)


def sam_plane(
    image: np.ndarray, channel_axis: int | None, channels: int | Sequence[int] | None
) -> np.ndarray:
    """The (H, W) or (H, W, 3) plane that :func:`to_sam_rgb` rescales, after its checks and
    with its errors, but not normalised: it reads no pixel (three channels chosen are
    copied), so a front end can check a large image where it must not wait."""
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape!r})")
    plane = select_channels(image, channel_axis, channels)
    check_rescalable(plane.dtype)
    return plane


@contextmanager
def warnings_named(name: str) -> Iterator[None]:
    """Inside it, this module's warnings about an image name ``name`` (its file's) in front:
    of a folder of images, "image of shape (64, 64, 4) is taken as RGBA, ..." named none,
    and images of one shape were said once for all. A context variable, not
    ``warnings.catch_warnings``, whose process-wide filters a worker thread would have
    changed under the GUI thread's warnings."""
    token = _IMAGE_NAME.set(f"{name}: ")
    try:
        yield
    finally:
        _IMAGE_NAME.reset(token)
