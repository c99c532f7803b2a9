"""Intensity rescaling: any real image to uint8 by its 1st..99.8th percentile (an image of
one value at both by the pixels of other values, see :data:`REST_PERCENTILES`).

Segmentation and training rescale the same way (:mod:`.images` applies it to every image
that is not uint8), so 16-bit microscopy data works without being converted first. Integer
images take a histogram path with np.percentile's result; floats sort a finite copy.
"""

from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.8
# an image of one value but for a few pixels is scaled by those few, from their 1st to their
# 99th percentile: a few hot pixels are a larger share of them (see _range_of_the_rest)
REST_PERCENTILES = (1.0, 99.0)


def rescale_to_uint8(image: np.ndarray) -> np.ndarray:
    """Rescale any real image to uint8 by the 1st..99.8th percentile; uint8 passes unchanged.

    Computed in float64 (float32 for float16/float32 images and bool), and 64-bit integers
    less their minimum, so an offset (1e9 + image, 2**40 + image) or a very small or large
    scale (1e-300 * image) keeps the image's contrast."""
    if image.dtype == np.uint8:
        return image
    check_rescalable(image.dtype)
    if np.issubdtype(image.dtype, np.integer) and image.dtype.itemsize <= 4:
        fast = _rescale_integers(image)
        if fast is not None:
            return fast
    data = _as_float(image)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    # finite is a copy already: partitioned in place, without a second one
    low, high = np.percentile(finite, [LOW_PERCENTILE, HIGH_PERCENTILE], overwrite_input=True)
    if high <= low:  # one value but for a few pixels
        low, high = _range_of_the_rest(finite, low)
    return _scale(data, low, high)


def _range_of_the_rest(values: np.ndarray, flat: float) -> tuple[float, float]:
    """The range to scale by for an image that is the value ``flat`` at its 1st and 99.8th
    percentile: :data:`REST_PERCENTILES` of the pixels of other values, widened to hold
    ``flat``. The image's full range, taken before, let 3 hot pixels (65535) of a sparse
    image (cells of 1000-1200 on 0, 0.12% of it) scale its cells to 4 of 255: nothing was
    found in it. An image of one value is ``(flat, flat)`` (it scales to zeros)."""
    rest = values[values != flat]
    if rest.size == 0:
        return flat, flat
    low, high = np.percentile(rest, REST_PERCENTILES)
    return min(flat, low), max(flat, high)


def check_rescalable(dtype: np.dtype) -> None:
    """``TypeError`` for an image dtype without brightness to rescale (complex, not numbers)."""
    if np.issubdtype(dtype, np.complexfloating):
        raise TypeError(
            f"image has dtype {dtype.name}, complex numbers, which have no brightness; "
            "take np.abs(image) (the magnitude) or image.real first"
        )
    if not (np.issubdtype(dtype, np.number) or dtype.kind == "b"):
        raise TypeError(f"image has dtype {dtype!r}; expected an integer or float image")


def _as_float(image: np.ndarray) -> np.ndarray:
    """``image`` as floats that hold its differences: float32 for float16/float32 and bool
    (their own precision), 64-bit integers less their minimum (float64 holds the differences
    exactly up to 2**53, the values themselves only up to there), float64 otherwise."""
    if image.dtype in (np.float16, np.float32, bool):
        return image.astype(np.float32, copy=False)
    if np.issubdtype(image.dtype, np.integer) and image.dtype.itemsize == 8:
        # in uint64, where the subtraction wraps to the exact difference of any two values
        first = image.min().astype(np.uint64)
        return (image.astype(np.uint64) - first).astype(np.float64)
    return image.astype(np.float64, copy=False)


def _scale(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """``data`` (float) from low..high to 0..255 uint8, rounded and clipped (zeros when
    the range is empty)."""
    if not high > low:
        return np.zeros(data.shape, dtype=np.uint8)
    with np.errstate(over="ignore"):  # what overflows is far outside 0..255: clipped
        if not np.isfinite(high - low):  # values near the float limits: halve them all
            data, low, high = data * 0.5, low * 0.5, high * 0.5
        factor = 255.0 / (high - low)
        scaled = np.nan_to_num(data, nan=low)  # a copy, worked on in place from here
        scaled -= low
        if np.isfinite(factor):
            scaled *= factor
        else:  # a range of a subnormal size overflows the factor: divide by the range
            scaled /= high - low
            scaled *= 255.0
    np.rint(scaled, out=scaled)
    return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)


MAX_HISTOGRAM_BINS = 1 << 20  # integer images spanning more values take the sorting path


def _rescale_integers(image: np.ndarray) -> np.ndarray | None:
    """:func:`rescale_to_uint8` of an integer image through its histogram, with the same
    result: the percentiles are np.percentile's (linear) order statistics read from the
    cumulative counts, and each of the image's values is scaled once, into a lookup table.
    O(pixels) instead of a sort of a float copy: a 4096 x 4096 uint16 image took 1.8-3.5 s
    before and 0.13 s now on the 2-core VM. None when the values span more than
    MAX_HISTOGRAM_BINS."""
    flat = image.ravel()
    first = int(flat.min())
    span = int(flat.max()) - first + 1
    if span > MAX_HISTOGRAM_BINS:
        return None
    if first < 0:  # shifted in a wider type, where the subtraction cannot overflow
        offsets = flat.astype(np.int64) - first
    else:
        offsets = flat - image.dtype.type(first) if first else flat
    cumulative = np.cumsum(np.bincount(offsets, minlength=span))
    low, high = (
        _order_statistic_lerp(cumulative, q, first) for q in (LOW_PERCENTILE, HIGH_PERCENTILE)
    )
    values = np.arange(first, first + span, dtype=np.int64).astype(np.float64)
    if high <= low:  # as above: by the pixels of other values
        low, high = _integer_range_of_the_rest(cumulative, first, low)
    table = _scale(values, low, high)
    return table[offsets].reshape(image.shape)


def _integer_range_of_the_rest(
    cumulative: np.ndarray, first: int, flat: np.float64
) -> tuple[np.float64, np.float64]:
    """:func:`_range_of_the_rest` from the cumulative counts of an integer image whose
    smallest value is ``first``."""
    counts = np.diff(cumulative, prepend=0)
    counts[int(flat) - first] = 0
    if not counts.any():
        return flat, flat
    rest = np.cumsum(counts)
    low, high = (_order_statistic_lerp(rest, q, first) for q in REST_PERCENTILES)
    return min(flat, low), max(flat, high)


def _order_statistic_lerp(cumulative: np.ndarray, percentile: float, first: int) -> np.float64:
    """np.percentile (method "linear") of the values counted in ``cumulative``, as float64."""
    n = int(cumulative[-1])
    position = percentile / 100 * (n - 1)
    below = int(np.floor(position))
    fraction = position - below
    a, b = (
        np.float64(np.searchsorted(cumulative, rank, side="right") + first)
        for rank in (below, min(below + 1, n - 1))
    )
    difference = np.subtract(b, a)
    if fraction >= 0.5:  # numpy's symmetric form, for the same rounding
        return np.subtract(b, difference * (1 - np.float64(fraction)))
    return np.add(a, difference * np.float64(fraction))
