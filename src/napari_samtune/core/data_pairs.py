"""Training pairs as given: :class:`ImageLabelPair` (an image and its instance labels, not
yet normalised), :class:`PreparedImage` (checked, normalised, objects located: see
:mod:`napari_samtune.core.data`), and the planes of a stack as pairs (:func:`split_planes`).

Coordinates: arrays are (row, col).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_samtune.core.images import as_channel_indices, plane_channel_axis, planes_first


@dataclass(frozen=True)
class ImageLabelPair:
    """One annotated image (not yet normalised)."""

    image: np.ndarray  # (H, W) grayscale, (H, W, 3|4) RGB(A) or channelled (see channel_axis)
    labels: np.ndarray  # (H, W) integer instance labels, 0 = background
    name: str = "image"  # shown in error messages: a file name or a layer name
    channel_axis: int | None = None  # passed to to_sam_rgb
    channels: tuple[int, ...] | None = None  # passed to to_sam_rgb
    source: str = ""  # the stack a plane was cut from (held out for validation as a whole)


@dataclass(frozen=True)
class PreparedImage:
    """A checked pair, normalised for SAM, with its usable objects located."""

    rgb: np.ndarray  # (H, W, 3) uint8 from to_sam_rgb
    labels: np.ndarray  # (H, W) uint32, ids 1..N
    name: str  # as in ImageLabelPair
    object_slices: tuple[tuple[slice, slice], ...]  # bounding box of ids 1..N (index id - 1)
    object_areas: np.ndarray  # (N,) int64 pixel counts of ids 1..N
    source: str = ""  # as in ImageLabelPair

    @property
    def group(self) -> str:
        """What validation holds out together: the stack of a plane, else the image."""
        return self.source or self.name


def _is_stack(image: np.ndarray, labels: np.ndarray, rgb: bool | None) -> bool:
    """Whether (image, labels) is a stack of planes: (N, H, W[, 3|4]) with (N, H, W) labels.

    ``rgb`` says whether the image has a colour axis last (a napari layer knows); ``None``
    infers it from the shapes. (H, W, 3) labels next to an (H, W, 3) image are a coloured
    rendering, not three planes, and are left for the label checks to refuse.
    """
    if labels.ndim != 3 or image.shape[:1] != labels.shape[:1]:
        return False
    if rgb is None:
        if labels.shape[-1] in (3, 4) and image.shape[-1] in (3, 4):
            return False
        rgb = image.ndim == 4 and image.shape[-1] in (3, 4)
    return image.ndim == (4 if rgb else 3)


def split_planes(
    image: np.ndarray,
    labels: np.ndarray,
    name: str,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    channels: int | Sequence[int] | None = None,
    left_out: list[str] | None = None,
) -> list[ImageLabelPair]:
    """One pair for a 2D image, one per annotated plane for a stack (see :func:`_is_stack`).

    Planes without any object are left out (a partly annotated stack trains on what was
    annotated), and ``left_out``, if given, receives ``"<name>: 27 of 30 planes"``; when no
    plane has one, plane 0 is kept so the checks say so.
    ``channel_axis`` and ``channels`` select the image's channels (see
    :func:`~napari_samtune.core.images.to_sam_rgb`); the axis counts the axes of the whole
    ``image``, a stack's planes included. Given either, a plane has a channel axis. A
    (C, Z, H, W) stack, channels first, takes ``channel_axis=0`` (see
    :func:`~napari_samtune.core.images.planes_first`).
    """
    channels = as_channel_indices(channels)  # 1 is (1,)
    labels = _without_single_axis(labels, image)
    if rgb is None and (channel_axis is not None or channels is not None):
        rgb = True
    if labels.ndim == 3:
        try:
            image, channel_axis = planes_first(image, channel_axis, channels, labels.shape[0])
        except ValueError as err:
            raise ValueError(f"{name!r}: {err}") from None
    if not _is_stack(image, labels, rgb):
        return [ImageLabelPair(image, labels, name, channel_axis, channels)]
    axis = plane_channel_axis(channel_axis, image.ndim)
    planes = [i for i in range(labels.shape[0]) if labels[i].any()] or [0]
    if left_out is not None and len(planes) < labels.shape[0] and labels.any():
        left_out.append(f"{name}: {labels.shape[0] - len(planes)} of {labels.shape[0]} planes")
    return [
        ImageLabelPair(image[i], labels[i], f"{name} plane {i}", axis, channels, source=name)
        for i in planes
    ]


def _without_single_axis(labels: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(H, W, 1) labels (a common TIFF export), or (1, H, W) ones of a channels-last or 2D
    image, as (H, W) when the image has those pixels; anything else as it is. Read as a
    stack, (H, W, 1) labels were H planes of W x 1 pixels. (1, H, W) labels of a (1, H, W)
    image stay a stack of one plane; of a (C, H, W) image, a plane of a stack or the image's
    labels would be a guess, so the checks say so."""
    if labels.ndim != 3 or 1 not in (labels.shape[0], labels.shape[-1]):
        return labels
    if labels.shape[-1] == 1 and labels.shape[:2] in (image.shape[:2], image.shape[-2:]):
        return labels[..., 0]
    if labels.shape[0] == 1 and labels.shape[1:] == image.shape[:2] and image.shape[0] != 1:
        return labels[0]
    return labels
