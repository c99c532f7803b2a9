"""Where the Annotate panel's layers of an image sit in the world, and their colours when
set again: set only what differs, as each change redraws a layer."""

from __future__ import annotations

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

# the events of a layer that move it in the world
PLACEMENT_EVENTS = ("scale", "translate", "rotate", "shear", "affine", "units")


def follow_placement(layer, callback, connect: bool) -> None:
    """Connect ``callback`` to (or disconnect it from) ``layer``'s moves, scalings and
    rotations: each of :data:`PLACEMENT_EVENTS` it has (no "units" before napari 0.6). A
    stand-in for a removed image has none."""
    for name in PLACEMENT_EVENTS:
        emitter = getattr(getattr(layer, "events", None), name, None)
        if emitter is not None:
            (emitter.connect if connect else emitter.disconnect)(callback)


def _data_to_world_matrix(layer) -> np.ndarray:
    """``layer``'s data -> world transform as an ``(ndim + 1, ndim + 1)`` matrix: scale,
    translate, rotate, shear and affine together. Measured through the public
    ``data_to_world`` (the transform is affine)."""
    full = layer.ndim  # without the colour axis of an RGB image
    origin = np.asarray(layer.data_to_world(np.zeros(full)), dtype=float)
    axes = [np.asarray(layer.data_to_world(unit), dtype=float) for unit in np.eye(full)]
    matrix = np.eye(full + 1)
    matrix[:full, :full] = np.stack(axes, axis=1) - origin[:, None]
    matrix[:full, full] = origin
    return matrix


def spatial_affine(image_layer, ndim: int) -> np.ndarray:
    """The image's data -> world transform on its last ``ndim`` (spatial) axes, as an
    ``(ndim + 1, ndim + 1)`` matrix."""
    full = _data_to_world_matrix(image_layer)
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = full[-ndim - 1 : -1, -ndim - 1 : -1]
    matrix[:ndim, ndim] = full[-ndim - 1 : -1, -1]
    return matrix


def sliced_point(layer, world_point) -> np.ndarray:
    """Where napari's view of ``layer``'s rows and columns (its last two axes) slices it at
    ``world_point`` (``viewer.dims.point``): the data coordinates on its other axes, e.g.
    ``[plane]``. napari slices with the world -> data transform restricted to those axes, and
    draws the rows and columns without what a shear or rotation adds across them; the
    whole transform names another plane where the stack is sheared. With the rows and
    columns set to 0 the whole transform gives the restricted one's numbers exactly: a plane
    measured from a matrix of our own was 1.5 where napari's was 1.4999999999999998 (a
    stack moved by half a plane), and the panel acted on the plane after the one shown."""
    ndim, sliced = layer.ndim, layer.ndim - 2
    point = np.asarray(world_point, dtype=float)[-ndim:]
    point = np.concatenate([np.zeros(ndim - len(point)), point])
    point[sliced:] = 0.0
    return np.asarray(layer.world_to_data(point), dtype=float)[:sliced]


def plane_view_affine(affine: np.ndarray) -> np.ndarray:
    """Where the Annotate panel's layers of a stack placed by ``affine`` go: where napari's
    2D view shows its planes. napari's clicks and brush strokes land through a layer's whole
    transform, so where the plane axis is sheared or rotated into the rows and columns (a
    deskewed light-sheet stack) a click or stroke on the plane shown would land on another
    plane, or off the stack, and off the rows and columns under it. So the layers keep the
    rows and columns part of ``affine`` and put each plane where napari's slider shows it
    (see :func:`sliced_point`); only the 3D view shows them without that shear. Unchanged
    for a 2D image or a stack without such terms."""
    if not sheared_across_planes(affine):
        return affine
    ndim = len(affine) - 1
    inverse = np.linalg.inv(affine)
    placed = np.eye(ndim + 1)
    placed[1:, 1:] = affine[1:, 1:]
    placed[0, 0] = 1 / inverse[0, 0]  # the plane at world w: inverse[0, 0] * w + inverse[0, -1]
    placed[0, ndim] = -inverse[0, ndim] / inverse[0, 0]
    return placed


def sheared_across_planes(affine: np.ndarray) -> bool:
    """Whether a stack placed by ``affine`` is sheared or rotated across its planes and
    rows or columns (so that :func:`plane_view_affine` moves its layers). False for 2D and
    where napari's slider would show one plane only, or nearly (a stack seen edge on: then
    nothing is gained)."""
    ndim = len(affine) - 1
    if ndim != 3:
        return False
    linear = affine[:ndim, :ndim]
    tolerance = 1e-9 * np.abs(linear).max()  # napari's cos(90 degrees) is 6e-17, not 0
    across = np.concatenate([linear[0, 1:], linear[1:, 0]])
    # napari's slider puts planes 1 / inverse[0, 0] apart: ~1 / cos of a rotation out of
    # them (rotated 90 degrees, 4.5e15 apart, and napari's slider overflowed)
    facing = np.abs(np.linalg.inv(linear)[0, 0]) * np.abs(linear).max()
    return bool((np.abs(across) > tolerance).any()) and facing > 1e-6


def spatial_units(image_layer, ndim: int) -> tuple | None:
    """The units of the image's last ``ndim`` (spatial) axes; None where napari has no
    layer units (before 0.6)."""
    units = getattr(image_layer, "units", None)
    return None if units is None else tuple(units)[-ndim:]


def plain_placement(image_layer, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The scale and translation of the image's last ``ndim`` (spatial) axes where it is
    only scaled and moved (no rotation, shear or affine), else None. Its layers placed by
    the same numbers slice as it does: placed by a matrix measured from it, they showed
    the plane after the image's where a stack was moved by half a plane (0.35 at 0.7 per
    plane: napari's 1.4999999999999998 against 1.5)."""
    full = image_layer.ndim
    plain = (
        np.array_equal(image_layer.rotate, np.eye(full))
        and not np.any(image_layer.shear)
        and np.array_equal(image_layer.affine.affine_matrix, np.eye(full + 1))
    )
    if not plain:
        return None
    scale = np.asarray(image_layer.scale, dtype=float)[-ndim:]
    return scale, np.asarray(image_layer.translate, dtype=float)[-ndim:]


def place_layer(
    layer,
    ndim: int,
    affine: np.ndarray,
    units: tuple | None = None,
    plain: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Give ``layer`` the ``(ndim + 1, ndim + 1)`` ``affine`` and a plain scale, translation,
    rotation and shear, or (``plain``, see :func:`plain_placement`) that scale and
    translation and no affine, setting only what differs: each change redraws the layer (for
    a 4096 x 4096 labels layer 30-50 ms), and picking an image again used to set all five on
    each of its four layers (0.7 s with the viewer frozen). ``units`` (the image's, e.g.
    micrometres): else napari warns that the layers' units are inconsistent and ignores
    them all."""
    if units is not None and tuple(layer.units) != units:
        layer.units = units
    scale, translate = plain if plain is not None else (np.ones(ndim), np.zeros(ndim))
    wanted = {
        "scale": scale,
        "translate": translate,
        "rotate": np.eye(ndim),
        "shear": np.zeros(ndim * (ndim - 1) // 2),
    }
    for name, value in wanted.items():
        if not np.array_equal(getattr(layer, name), value):
            setattr(layer, name, value)
    affine = np.eye(ndim + 1) if plain is not None else affine
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
