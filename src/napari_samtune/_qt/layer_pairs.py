"""(image layer, labels layer) pairs: their training samples, their problems, and which
labels layer pairs with an image.

A stack (labels with one more axis than a 2D image) becomes one pair per plane that has
objects (:func:`napari_samtune.core.data.split_planes`, as for TIFF files). Of a multiscale
layer (an image pyramid) the full-resolution level is used: ``np.asarray`` on its data
gives the coarsest level.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
from napari.layers import Image, Labels

from napari_samtune._qt.layer_names import (
    ANNOTATIONS,
    OWN_IMAGE_KEY,
    OWN_LAYER_KEY,
    PREVIEW,
    ImageMark,
    strip_taken_number,
)
from napari_samtune.core.data import check_pair, split_planes
from napari_samtune.core.data_checks import MAX_CHANNELS, NonIntegerLabelsError
from napari_samtune.core.label_files import image_fingerprint
from napari_samtune.core.tiff_files import float_labels_problem


def layer_pairs(
    image_layer: Image,
    labels_layer: Labels,
    copy: bool = False,
    empty_planes: list[str] | None = None,
) -> list:
    """The :class:`ImageLabelPair` s of two layers; stacks give one pair per plane with objects
    (the planes left out are counted in ``empty_planes``, see ``split_planes``).

    Args:
        image_layer: (H, W), (H, W, 3|4) when ``rgb``, or a stack (N, H, W[, 3|4]).
        labels_layer: (H, W) or (N, H, W) integer instance labels.
        copy: :func:`copied` pairs; else they view the layers' arrays (a lazily read image,
            dask, stays lazy).
    """
    image, labels = layer_array(image_layer, lazy=True), layer_array(labels_layer)
    name = f"{image_layer.name} / {labels_layer.name}"
    pairs = split_planes(image, labels, name, rgb=bool(image_layer.rgb), left_out=empty_planes)
    return copied(pairs) if copy else pairs


def copied(pairs) -> list:
    """``pairs`` with arrays of their own, which later edits of the layers cannot change: only
    the planes with objects, read from a lazy image only then (the whole stack was copied
    first: 40 x 2048 x 2048 px froze the viewer for 15 s at Start, a stack read lazily was
    read whole). The training worker calls it: the planes with objects alone took 1.3-7.9 s
    for that stack annotated on every plane, the viewer frozen meanwhile."""
    return [replace(p, image=np.array(p.image), labels=np.array(p.labels)) for p in pairs]


def layer_array(layer, lazy: bool = False) -> np.ndarray:
    """The layer's pixels as an array: of a multiscale layer its full-resolution level (the
    pixels annotated), where ``np.asarray(layer.data)`` gives the coarsest. ``lazy``: an
    array read on demand (dask, zarr) stays one, so that only the planes used are read."""
    data = layer.data[0] if layer.multiscale else layer.data
    return data if lazy and hasattr(data, "shape") and hasattr(data, "ndim") else np.asarray(data)


def pair_problem(pair: tuple[Image, Labels]) -> str:
    """The core's complaint about a layer pair, or "". An image with axes the labels lack,
    and an Image layer of whole-number floats chosen as labels, get what to do in napari
    instead: the core's advice (``channel_axis`` and ``channels``; ``.astype``) is for
    scripts. Cheap enough for the main thread (:func:`~napari_samtune.core.data.check_pair`:
    nothing is normalised; the training worker prepares the data)."""
    image, labels = pair
    if labels == image:  # (== sees through the proxies napari hands a plugin)
        return (
            f"{image.name!r} is chosen as both the image and its labels; choose the layer "
            "holding its annotations (a Labels layer of instance ids) as labels"
        )
    try:
        for sample in layer_pairs(*pair):
            check_pair(sample)
    except (ValueError, TypeError) as err:
        image, labels = pair
        extra = image.data.ndim - (1 if image.rgb else 0) - labels.data.ndim
        if extra > 0:
            return _extra_axes_problem(image, labels, extra)
        return _image_as_labels_problem(labels, err) or str(err)
    return ""


def _image_as_labels_problem(labels, err: Exception) -> str:
    """What to do about an Image layer of floats that are whole numbers (a mask file opened
    by drag and drop) chosen as labels: napari's Convert to Labels keeps those ids. "" for
    other layers, and for floats with fractions or NaN, which that would truncate (the
    core's message, ``err``, says what they look like)."""
    data = layer_array(labels)
    if isinstance(labels, Labels) or not np.issubdtype(data.dtype, np.floating):
        return ""
    if _float_problem(data, err):
        return ""
    return (
        f"{labels.name!r} is an Image layer of {data.dtype.name} values; training needs a "
        "Labels layer of integer instance ids (0 = background, one id per object): "
        f"right-click {labels.name!r} in the layer list and choose Convert to Labels, then "
        "choose the new Labels layer here"
    )


def _float_problem(data: np.ndarray, err: Exception) -> str:
    """:func:`float_labels_problem` of a layer's float ``data``, taken from the core's
    error where it tells (a pass over the labels, 15 ms for 4096 x 4096, not made twice):
    a 2D layer's labels are the pair's, and a plane's problem is its stack's."""
    known = err.float_problem if isinstance(err, NonIntegerLabelsError) else None
    if known is not None and (data.ndim == 2 or known):
        return known
    return float_labels_problem(data)


def _extra_axes_problem(image: Image, labels, extra: int) -> str:
    """What to do about an image layer with ``extra`` axes more than its labels layer: a
    stack (of RGB planes, or of more planes than RGBA has channels, as the core tells them
    apart) needs labels with as many planes; one other axis holds channels, and more than
    one (time and z, say) are more than a pair holds."""
    shape, labels_shape = tuple(image.data.shape), tuple(labels.data.shape)
    if extra > 1:
        return (
            f"image layer {image.name!r} has shape {shape!r}, with {extra} more axes than "
            f"labels layer {labels.name!r} {labels_shape!r}: a pair is one plane, or a stack "
            "along one axis with a labels plane for each image plane; right-click the image "
            "layer and choose Split Stack to split it along its first axis (one stack per "
            "time point, say), then pair a part with labels painted on it"
        )
    beside = [i for i in range(len(shape)) if shape[:i] + shape[i + 1 :] == labels_shape]
    if extra == 1 and not image.rgb and beside and 0 not in beside:
        axis = beside[-1]
        return (
            f"image layer {image.name!r} {shape!r} has {shape[axis]} channels on axis {axis} "
            f"beside labels layer {labels.name!r} {labels_shape!r}: a pair takes an image of "
            "the labels' shape; give one channel a layer of its own (in the console: "
            f"viewer.add_image(viewer.layers[{image.name!r}].data.take(1, axis={axis}))), or "
            "train from the files in TIFF folders with their channels field"
        )
    if extra == 1 and (image.rgb or shape[0] > MAX_CHANNELS):
        return (
            f"image layer {image.name!r} is a stack of {shape[0]} planes {shape!r}, and labels "
            f"layer {labels.name!r} {labels_shape!r} is one plane: pair the stack with labels "
            f"of shape {(shape[0], *labels_shape)!r}, one plane per image plane (planes "
            "without objects are left out), e.g. a new labels layer painted on the stack"
        )
    return (
        f"image layer {image.name!r} has shape {shape!r}, with {extra} more "
        f"{'axis' if extra == 1 else 'axes'} than labels layer {labels.name!r} "
        f"{labels_shape!r}: channels, which training takes as RGB or one at a time; "
        "right-click the image layer and choose Split Stack to pair one channel, or Merge "
        "to RGB on three of them"
    )


def is_preview_layer(layer) -> bool:
    """Whether ``layer`` is the annotation widget's uncommitted preview of an image (its
    "<image> current object" layer, or one so named): never annotations to train on."""
    marked = layer.metadata.get(OWN_LAYER_KEY) == PREVIEW
    return marked or _annotation_layer_owner(layer.name)[1] == PREVIEW


def best_labels_for(image: Image, candidates: list, viewer):
    """The layer of ``candidates`` (Labels or Image layers of ``viewer``) that pairs best with
    ``image``, the first of equals; None when there are none. The criteria, in turn: of its
    (spatial) shape, not the annotation widget's layer of another image (its objects outline
    that image), a Labels layer, holding objects, named after the image.

    Each criterion is read only for the layers best by those before it: whether a layer
    holds objects is a pass over its pixels and the image's fingerprint one over the image's
    (picking an image with the Train panel open ranked every layer for both sources: 0.36 s
    beside a 30 x 2048 x 2048 stack and a 4096 x 4096 image).
    """
    spatial = {image.data.shape, image.data.shape[:-1], image.data.shape[1:]}
    fingerprint = functools.cache(lambda: image_fingerprint(image.data))
    criteria = (
        lambda layer: layer.data.shape in spatial,
        lambda layer: not _another_image_s(layer, image, viewer, fingerprint),
        lambda layer: isinstance(layer, Labels),
        lambda layer: bool(np.any(layer.data)),
        lambda layer: _name_rank(image.name, layer.name),
    )
    best = list(candidates)
    for criterion in criteria:
        if len(best) <= 1:
            break
        ranks = [criterion(layer) for layer in best]
        top = max(ranks)
        best = [layer for layer, rank in zip(best, ranks, strict=True) if rank == top]
    return best[0] if best else None


def _name_rank(image_name: str, labels_name: str) -> tuple[bool, bool, bool, bool]:
    """(begins with the image's name, named after the image less napari's " [n]", that
    name then a separator, the same " [n]"):
    napari's copies "cells [1]" and "cells labels [1]" pair with each other, not with
    "cells labels", which "cells [1]" was offered (both start with "cells", neither with
    "cells [1]"); "cells labels" goes before "cells2 labels" for "cells"."""
    image_base, labels_base = strip_taken_number(image_name), strip_taken_number(labels_name)
    named = labels_base.startswith(image_base)
    rest = labels_base[len(image_base) :]
    whole = named and (rest == "" or not rest[0].isalnum())
    same_number = image_name[len(image_base) :] == labels_name[len(labels_base) :]
    return labels_name.startswith(image_name), named, whole, named and same_number


def _another_image_s(layer, image: Image, viewer, fingerprint) -> bool:
    """Whether ``layer`` is the annotation widget's layer of an image other than ``image``:
    marked for another (see :class:`ImageMark`), or, unmarked, named after another as the
    widget names its annotations and preview ("<image> annotations", "... [1]"). The
    image's fingerprint (9 ms for 4096 x 4096; ``fingerprint()`` gives it) is taken for
    marked layers only: this runs for candidate pairs whenever the layer list changes."""
    if isinstance(layer.metadata.get(OWN_IMAGE_KEY), dict):
        return not ImageMark.of(image, fingerprint()).owns(layer, viewer)
    owner, _ = _annotation_layer_owner(layer.name)
    return owner is not None and owner != image.name


def _annotation_layer_owner(name: str) -> tuple[str | None, str | None]:
    """(image name, suffix) of a layer named as the annotation widget names the
    annotations and the preview of an image (also with the " [n]" napari adds where the
    name is taken); (None, None) for other names."""
    name = strip_taken_number(name)
    for suffix in (ANNOTATIONS, PREVIEW):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name.removesuffix(suffix), suffix
    return None, None
