"""Where the Annotate panel's layers of an image sit in the world, and their colours when
set again: set only what differs, as each change redraws a layer."""

from __future__ import annotations

import numpy as np
from napari.utils.colormaps import DirectLabelColormap


def spatial_affine(image_layer, ndim: int) -> np.ndarray:
    """The image's data -> world transform on its last ``ndim`` (spatial) axes, as an
    ``(ndim + 1, ndim + 1)`` matrix: scale, translate, rotate, shear and affine together.
    Measured through the public ``data_to_world`` (the transform is affine)."""
    full = image_layer.ndim  # without the colour axis of an RGB image
    origin = np.asarray(image_layer.data_to_world(np.zeros(full)), dtype=float)
    axes = [np.asarray(image_layer.data_to_world(unit), dtype=float) for unit in np.eye(full)]
    linear = np.stack(axes, axis=1) - origin[:, None]
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = linear[-ndim:, -ndim:]
    matrix[:ndim, ndim] = origin[-ndim:]
    return matrix


def spatial_units(image_layer, ndim: int) -> tuple | None:
    """The units of the image's last ``ndim`` (spatial) axes; None where napari has no
    layer units (before 0.6)."""
    units = getattr(image_layer, "units", None)
    return None if units is None else tuple(units)[-ndim:]


def place_layer(layer, ndim: int, affine: np.ndarray, units: tuple | None = None) -> None:
    """Give ``layer`` the ``(ndim + 1, ndim + 1)`` ``affine`` and a plain scale, translation,
    rotation and shear, setting only what differs: each change redraws the layer (for a
    4096 x 4096 labels layer 30-50 ms), and picking an image again used to set all five on
    each of its four layers (0.7 s with the viewer frozen). ``units`` (the image's, e.g.
    micrometres): else napari warns that the layers' units are inconsistent and ignores
    them all."""
    if units is not None and tuple(layer.units) != units:
        layer.units = units
    plain = {
        "scale": np.ones(ndim),
        "translate": np.zeros(ndim),
        "rotate": np.eye(ndim),
        "shear": np.zeros(ndim * (ndim - 1) // 2),
    }
    for name, value in plain.items():
        if not np.array_equal(getattr(layer, name), value):
            setattr(layer, name, value)
    if not np.array_equal(layer.affine.affine_matrix, affine):
        layer.affine = affine


def same_colormap(have, wanted: DirectLabelColormap) -> bool:
    """Whether labels colormap ``have`` gives the colours of ``wanted`` (napari's ``==`` on
    colormaps fails on their colour arrays)."""
    if (
        not isinstance(have, DirectLabelColormap)
        or have.color_dict.keys() != wanted.color_dict.keys()
    ):
        return False
    return all(np.array_equal(have.color_dict[key], c) for key, c in wanted.color_dict.items())
