"""How the annotation widget reads an image layer: 2D, RGB, channels, stacks of planes.

Qt-free. Supported layouts of a layer's data (napari axis order):

* ``(H, W)`` grayscale, ``(H, W, 3|4)`` RGB(A) (the layer's ``rgb`` flag is set);
* ``(Z, H, W)`` and ``(Z, H, W, 3|4)``: a stack or time series, the first axis is the plane;
* channels on the first axis: ``(C, H, W)`` or ``(C, Z, H, W)``, with one channel used
  as grayscale or three as RGB. (This is the only channel position for which the
  annotation labels, of shape ``(H, W)`` / ``(Z, H, W)``, stay aligned with the image in
  napari, which aligns layers of different dimensionality from the last axis.)

Every plane goes to SAM through :func:`napari_samtune.core.images.to_sam_rgb` (inside the
Segmenter), so this module only picks the plane and tells the Segmenter where channels are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageAxes:
    """The layout of one image layer's data, validated by :func:`describe_image`."""

    shape: tuple[int, ...]  # the layer's data shape
    rgb: bool  # last axis holds RGB(A) colour
    channels_first: bool  # first axis holds channels (mutually exclusive with rgb)
    channels: tuple[int, ...] | None = None  # channels used: one (grayscale) or three (RGB)

    @property
    def is_stack(self) -> bool:
        """Whether the image has planes (a 3D stack or a time series)."""
        return len(self.spatial_shape) == 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the annotation labels: ``(H, W)`` or ``(Z, H, W)``."""
        shape = self.shape[1:] if self.channels_first else self.shape
        return shape[:-1] if self.rgb else shape

    @property
    def n_planes(self) -> int:
        """Number of planes (1 for a 2D image)."""
        return self.spatial_shape[0] if self.is_stack else 1

    @property
    def n_channels(self) -> int:
        """Number of channels on the channel axis (3 or 4 for RGB, 1 for grayscale)."""
        if self.channels_first:
            return self.shape[0]
        return self.shape[-1] if self.rgb else 1

    def plane(self, data, index: int) -> np.ndarray:
        """Plane ``index`` of ``data`` as an in-memory array: (H, W), (H, W, C) or (C, H, W)."""
        if not 0 <= index < self.n_planes:
            raise ValueError(f"plane index={index!r} is outside 0..{self.n_planes - 1}")
        if not self.is_stack:
            return np.asarray(data)
        return np.asarray(data[:, index] if self.channels_first else data[index])

    def segmenter_channel_args(self) -> dict:
        """Keyword arguments ``channel_axis`` and ``channels`` for ``Segmenter.set_image``."""
        if self.channels_first:
            return {"channel_axis": 0, "channels": list(self.channels or (0,))}
        if self.rgb:
            return {"channel_axis": -1, "channels": None}
        return {"channel_axis": None, "channels": None}


def describe_image(
    shape: tuple[int, ...],
    rgb: bool = False,
    channels_first: bool = False,
    channels: tuple[int, ...] | None = None,
) -> ImageAxes:
    """Validate a layer's data layout; raises ``ValueError`` naming the problem and the fix."""
    shape = tuple(int(s) for s in shape)
    if rgb and channels_first:
        raise ValueError(
            "an RGB layer has its colours on the last axis; untick 'channels on first axis'"
        )
    ndim = len(shape)
    if rgb and ndim not in (3, 4):
        raise ValueError(f"RGB image of shape {shape!r}: expected (H, W, 3|4) or (Z, H, W, 3|4)")
    if channels_first and ndim not in (3, 4):
        raise ValueError(
            f"image of shape {shape!r} with channels first: expected (C, H, W) or (C, Z, H, W); "
            "untick 'channels on first axis' for a 2D image"
        )
    if not (rgb or channels_first) and ndim not in (2, 3):
        second = (
            " If the second axis holds them (Z, C, H, W), open the image with its channels as "
            "layers (viewer.add_image(data, channel_axis=1)), or with them first "
            "(np.moveaxis(data, 1, 0)) and tick 'channels on first axis'."
            if ndim == 4
            else ""
        )
        raise ValueError(
            f"image of shape {shape!r} has {ndim} dimensions; expected (H, W) or a stack "
            "(Z, H, W). If the first axis holds channels, tick 'channels on first axis'."
            f"{second} For a time series of stacks, open one time point as its own layer"
        )
    if not (rgb or channels_first) and ndim == 3 and _channels_last(shape):
        raise ValueError(
            f"image of shape {shape!r} seems to hold {shape[-1]} channels on its last axis, "
            f"which napari shows as {shape[0]} planes of {shape[1]} x {shape[2]} pixels; open "
            "it with its channels as layers (viewer.add_image(data, channel_axis=-1)), or "
            "with them first (np.moveaxis(data, -1, 0)) and tick 'channels on first axis'"
        )
    if channels_first:
        channels = tuple(channels) if channels is not None else (0,)
        if len(channels) not in (1, 3) or any(not 0 <= c < shape[0] for c in channels):
            raise ValueError(
                f"channels={channels!r} is invalid for {shape[0]} channels on the first axis; "
                f"pick one channel or three (as RGB) in 0..{shape[0] - 1}"
            )
    elif channels is not None:
        raise ValueError(f"channels={channels!r} needs 'channels on first axis'")
    axes = ImageAxes(shape, rgb, channels_first, channels)
    if min(axes.spatial_shape[-2:]) < 2:
        ones = [axis for axis in range(ndim) if shape[axis] == 1]
        squeezed = tuple(size for size in shape if size != 1)
        hint = (
            f": its axis {ones[-1]} has length 1 (a channel or plane of one, as some exports "
            f"save a 2D image); open it without that axis, of shape {squeezed!r} (in napari's "
            "console: viewer.add_image(data.squeeze()))"
            if ones and len(squeezed) >= 2 and min(squeezed[-2:]) >= 2
            else ": its planes need at least 2 rows and 2 columns (a line of pixels holds no "
            "object to outline); pick an image layer of a 2D image or a stack"
        )
        raise ValueError(f"image of shape {shape!r} has no 2D planes to segment{hint}")
    return axes


def _channels_last(shape: tuple[int, ...]) -> bool:
    """A non-RGB (H, W, C) layout: a last axis short enough for channels (as the core reads
    files: :data:`~napari_samtune.core.images.MAX_GUESSED_CHANNELS`) beside two at least 4x
    longer. Such an image was annotated as H planes of W x C pixels, without a word."""
    from napari_samtune.core.images import MAX_GUESSED_CHANNELS

    return 2 <= shape[-1] <= MAX_GUESSED_CHANNELS and 4 * shape[-1] <= min(shape[0], shape[1])


def channels_first_refusal(layer) -> str:
    """Why image ``layer`` cannot have channels on its first axis ('' when it can): a 2D
    (H, W) image has none (its first axis is its rows), an RGB one has its colours last."""
    shape = tuple(layer.data.shape)
    ask = "'channels on first axis' is for (C, H, W) or (C, Z, H, W) images, so it stays unticked"
    if layer.rgb:
        return (
            f"image {layer.name!r} of shape {shape!r} has its colours on the last axis (RGB): {ask}"
        )
    if len(shape) < 3:
        return f"image {layer.name!r} of shape {shape!r} has no channel axis (it is 2D): {ask}"
    return ""
