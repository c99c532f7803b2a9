"""TIFF files: reading their pixels, with errors that name the file, and reading
instance labels from them, with float labels checked to be ids
(:func:`float_labels_problem`)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")


def read_tiff(path: Path) -> np.ndarray:
    """The pixels of a TIFF file; ``ValueError`` naming the file when it cannot be read."""
    return read_tiff_with_axes(path)[0]


def read_tiff_with_axes(path: Path) -> tuple[np.ndarray, str]:
    """:func:`read_tiff`, and the axes the file names for those pixels (tifffile's: e.g.
    "ZCYX" for an ImageJ hyperstack, "YX" for a plain plane), read from the same opening."""
    import tifffile

    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"file {str(path)!r} is not a TIFF file; save images as .tif")
    pixels, axes, shapes, dtype = None, "", [], None
    with _tifffile_log() as logged:
        try:
            with tifffile.TiffFile(path) as tif:  # as tifffile.imread reads it
                shapes = [tuple(series.shape) for series in tif.series]
                if len(shapes) == 1:
                    dtype = np.dtype(tif.series[0].dtype)
                    # every core: tifffile's default is half of them (one on a 2-core
                    # machine, where a zlib-compressed 60 x 2048 x 2048 labels stack took
                    # 2.8-3.4 s instead of 1.4-1.6)
                    pixels = tif.asarray(maxworkers=os.cpu_count() or 1)
                    axes = tif.series[0].axes
        except PermissionError as err:  # was told "damaged ...: save it again"
            raise ValueError(
                f"cannot read {str(path)!r}: no permission to read it ({err.strerror}); "
                "give yourself read access (e.g. chmod u+r, or ask its owner), or move it out "
                "of the folder"
            ) from None
        except MemoryError:  # was told "it may be damaged: save it again"
            raise ValueError(too_large_problem(path, shapes, dtype)) from None
        except Exception as err:  # tifffile raises several types for files it cannot parse
            logged.append(str(err))
            pixels = None
    if len(shapes) > 1:
        raise ValueError(several_series_problem(path, shapes))
    if pixels is None or not pixels.size:  # a damaged file may read as no pixels at all
        why = "; ".join(logged) or "it holds no pixels"
        if "requires the 'imagecodecs' package" in why:  # a sound file: not "damaged"
            raise ValueError(
                f"cannot read {str(path)!r}: its compression needs the package imagecodecs "
                f"({why}); install it (pip install imagecodecs) or save the file uncompressed"
            )
        raise ValueError(
            f"cannot read {str(path)!r} as a TIFF image ({why}); it may be truncated, damaged "
            "or still being written: save it again, or move it out of the folder"
        )
    return pixels, axes


def too_large_problem(path: Path, shapes: list[tuple[int, ...]], dtype: np.dtype | None) -> str:
    """Why a sound TIFF file whose pixels do not fit in this machine's free memory is not
    read, and what to do (``shapes``: its series' shapes, where they were read)."""
    size = ""
    if len(shapes) == 1 and dtype is not None:
        gib = math.prod(shapes[0]) * dtype.itemsize / 2**30
        size = f" ({' x '.join(map(str, shapes[0]))} {dtype.name}, {gib:.1f} GiB)"
    return (
        f"cannot read {str(path)!r}: its pixels{size} do not fit in the memory this machine "
        "has free; crop, bin or split the image (in Fiji, say) into parts that fit, or use a "
        "machine with more memory"
    )


def several_series_problem(path: Path, shapes: list[tuple[int, ...]]) -> str:
    """Why a TIFF file of several series (``shapes``: stage positions of an OME-TIFF, pages
    of different sizes) is refused: only the first used to be read, the others were
    dropped without a word."""
    listed = ", ".join("x".join(map(str, shape)) for shape in shapes[:4])
    more = f" and {len(shapes) - 4} more" if len(shapes) > 4 else ""
    return (
        f"{str(path)!r} holds {len(shapes)} images of their own (series: {listed}{more}), "
        "e.g. the stage positions of a multi-position acquisition; save each as its own "
        "file, e.g. in Python: for i, s in enumerate(tifffile.TiffFile(path).series): "
        "tifffile.imwrite(f'position{i}.tif', s.asarray())"
    )


def channel_axis_named(axes: str, ndim: int) -> int | None:
    """The channel axis that a file's ``axes`` (:func:`read_tiff_with_axes`) name for its
    ``ndim``-dimensional pixels: the one axis ``C`` (ImageJ hyperstacks, OME-TIFF,
    tifffile's ``axes`` metadata), else None. Samples (``S``) do not count: tifffile saves
    any (3, H, W) array, a stack of 3 planes too, as planar RGB, and (H, W, 3) is taken as
    RGB anyway."""
    if len(axes) != ndim or axes.count("C") != 1 or "S" in axes:
        return None  # with samples, they are the colours: ImageJ's C of an RGB stack its planes
    return axes.index("C")


def channel_axis_for(axes: str, ndim: int, given: int | None, name: str) -> int | None:
    """The channel axis of a file's ``ndim``-dimensional pixels: ``given`` (the caller's
    choice), else the one its ``axes`` name (:func:`channel_axis_named`). A given axis other
    than the one the file names is used, with a warning naming both: the file's metadata may
    be wrong, but more often the axis was guessed (a (Z, C, H, W) stack read as (C, Z, ...)
    trained on each plane's channels as if they were planes, without a word)."""
    if given is None:
        return channel_axis_named(axes, ndim)
    named = named_otherwise(axes, ndim, given)
    if named is not None:
        warnings.warn(given_axis_note(given, [(name, named, axes)]), UserWarning, stacklevel=2)
    return given


def named_otherwise(axes: str, ndim: int, given: int | None) -> int | None:
    """The channel axis a file's ``axes`` name where it is not the ``given`` one, else None."""
    named = channel_axis_named(axes, ndim)
    if named is None or not isinstance(given, int) or not -ndim <= given < ndim:
        return None
    return named if given % ndim != named else None


def planes_named_channels_note(names: list[str]) -> str:
    """What is said of stacks whose files name their first axis C (channels) while their
    labels have a plane for each: read as stacks of planes. tifffile's ``imwrite(...,
    imagej=True)`` names the first axis of any 3D array so; such stacks were refused, with
    advice about a channel axis nobody had given."""
    files = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"{files}: the file names its first axis C (channels), but its labels have a plane "
        "for each: read as a stack of planes (tifffile.imwrite(..., imagej=True) calls the "
        "planes of any 3D array channels; save with metadata={'axes': 'ZYX'} to name them "
        "planes)"
    )


def given_axis_note(given: int, files: list[tuple[str, int, str]]) -> str:
    """The warning for ``files`` ((name, axis named, axes) each) whose metadata name another
    channel axis than ``given``, one line for a folder of them."""
    name, named, axes = files[0]
    more = f" (and {len(files) - 1} more files)" if len(files) > 1 else ""
    return (
        f"{name}{more}: channel axis {given} is used as given, but the file names axis {named} "
        f"as its channels (its axes are {axes}); leave out the channel axis to use the file's"
    )


@contextlib.contextmanager
def _tifffile_log():
    """Collect what tifffile logs while reading (e.g. 'invalid offset to first page') for
    the error message, instead of letting Python print it without the file's name."""
    logger, logged = logging.getLogger("tifffile"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield logged
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def max_float_label(dtype: np.dtype) -> int:
    """The largest id float labels of ``dtype`` hold exactly, as uint32 takes them: 2^24
    for float32 (float64 labels were held to it too, refused above it as if inexact), 2048
    for float16, 2^32 - 1 for float64."""
    return min(1 << (np.finfo(dtype).nmant + 1), int(np.iinfo(np.uint32).max))


def read_label_tiff(path: Path) -> np.ndarray:
    """The instance labels of a TIFF file (:func:`read_tiff`): floats holding only whole
    numbers their type holds exactly (:func:`max_float_label`; ImageJ saves some label
    images as 32-bit) come as uint32; anything else as saved, for the checks to name
    (:func:`float_labels_problem`)."""
    labels = read_tiff(path)
    if np.issubdtype(labels.dtype, np.floating) and not float_labels_problem(labels):
        return labels.astype(np.uint32)
    return labels


def float_labels_problem(labels: np.ndarray) -> str:
    """Why float ``labels`` (any shape) are not instance ids (whole numbers 0 up to
    :func:`max_float_label`), for a message; "" when they are (an empty array included).

    Two reductions and a pass in chunks that stops at the first fraction, without a
    temporary of the array's size: 15 ms for 4096 x 4096 float32 labels, where np.mod took
    0.25 s."""
    if labels.size == 0:
        return ""
    low, high = labels.min(), labels.max()  # NaN comes out of either; -inf, inf as ends
    if not (np.isfinite(low) and np.isfinite(high)):
        return "they hold NaN or infinite values: an image or a measurement, not labels?"
    if _has_fraction(labels):
        return "these values have fractions: a probability map or an image, not labels?"
    bound = max_float_label(labels.dtype)
    if low < 0 or float(high) > bound:
        return (
            f"they hold values outside 0..{bound}, the ids read from {labels.dtype} labels "
            "(whole numbers it holds exactly, as uint32 takes them); save the labels as "
            "whole numbers (e.g. labels.astype('uint32'))"
        )
    return ""


FRACTION_CHUNK = 1 << 18  # values compared with their floor at a time (1 MiB of float32)


def _has_fraction(labels: np.ndarray) -> bool:
    """Whether any of the (finite, float) ``labels`` is not a whole number; stops at the
    first chunk that holds one."""
    flat = labels.reshape(-1)  # a view of a contiguous array
    whole = np.empty(min(flat.size, FRACTION_CHUNK), dtype=flat.dtype)
    for start in range(0, flat.size, FRACTION_CHUNK):
        chunk = flat[start : start + FRACTION_CHUNK]
        floor = np.floor(chunk, out=whole[: chunk.size])
        if not np.array_equal(floor, chunk):
            return True
    return False
