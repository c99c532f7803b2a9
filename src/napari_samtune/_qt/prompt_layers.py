"""The layers the annotation widget creates and manages for one image.

* ``<image> points``: Points layer of prompts; the ``label`` feature is ``"positive"``
  (green) or ``"negative"`` (red); new points take the layer's current polarity.
* ``<image> boxes``: Shapes layer of box prompts (rectangles; any shape counts by its
  bounding box).
* ``<image> current object``: Labels layer previewing what a commit would write.
* ``<image> annotations``: Labels layer of committed objects (uint32, 0 = background).

Each is marked as the widget's in ``layer.metadata`` (:mod:`~napari_samtune._qt.layer_names`);
picked again, an image reuses the layers so marked (and a Labels layer ``<image> annotations``
of its shape, however it came: annotations painted or opened elsewhere are continued). A
person's own layer under one of these names is left alone: the widget's goes beside it,
under napari's next free name (``<image> points [1]``, ...), and the person is told.

All four have the image's spatial shape, ``(H, W)`` or ``(Z, H, W)``, and its placement in
the world (scale, translation, rotation, shear, affine: :meth:`PromptLayers.place_like`, which
the widget calls again when they change), so layer data coordinates are image pixel
coordinates: (row, col) or
(plane, row, col). Prompts come back in napari (row, col) order; the widget converts
them for SAM with :func:`napari_samtune.core.coords.napari_to_sam` only.
"""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from napari.layers import Labels, Points, Shapes
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info

from napari_samtune._qt.image_planes import ImageAxes
from napari_samtune._qt.layer_names import (
    ANNOTATIONS,
    BOXES,
    OWN_IMAGE_KEY,
    OWN_LAYER_KEY,
    POINTS,
    PREVIEW,
    ImageMark,
    marked_role,
    rename_layers,
    role_for,
)
from napari_samtune._qt.layer_placement import (
    place_layer,
    plain_placement,
    plane_view_affine,
    same_colormap,
    sheared_across_planes,
    spatial_affine,
    spatial_units,
)
from napari_samtune._qt.preview_tops import PreviewTops
from napari_samtune._qt.propagated_planes import PropagatedPlanes

POSITIVE = "positive"
NEGATIVE = "negative"
POINT_COLORS = {POSITIVE: "#00e000", NEGATIVE: "#ff2020"}
PREVIEW_COLORS = ("#a020ff", "#ff30ff")  # preview ids alternate violet / magenta


def layer_batch(viewer) -> AbstractContextManager:
    """Around removing several layers: napari redraws its canvas (and runs a full garbage
    collection) once at the end, not after each one (``batched_update`` is napari >= 0.6)."""
    batched = getattr(viewer.layers, "batched_update", None)
    return batched() if batched is not None else nullcontext()


@dataclass(frozen=True)
class PlanePrompts:
    """The prompts on one plane, in napari image pixel coordinates."""

    points_rc: np.ndarray  # float (N, 2) point positions, (row, col)
    positive: np.ndarray  # bool (N,) True for positive points
    boxes_rc: np.ndarray  # float (M, 4) boxes as (row_min, col_min, row_max, col_max)
    n_outside: int = 0  # points and boxes on the plane left out: they miss the image

    @property
    def is_empty(self) -> bool:
        return len(self.points_rc) == 0 and len(self.boxes_rc) == 0

    def after(self, earlier: PlanePrompts) -> PlanePrompts:
        """These prompts added to ``earlier`` ones (a box here is the newer box)."""
        return PlanePrompts(
            np.concatenate([earlier.points_rc, self.points_rc]),
            np.concatenate([earlier.positive, self.positive]),
            np.concatenate([earlier.boxes_rc, self.boxes_rc]),
            self.n_outside,
        )


def planes_of(coords: np.ndarray) -> np.ndarray:
    """The plane (int (N,)) of each row of a stack's (N, 3) ``coords``: the nearest."""
    return np.rint(coords[:, 0]).astype(int)


def _on_plane(coords: np.ndarray, plane: int | None) -> np.ndarray:
    """Mask of the rows of ``coords`` (N, ndim) that lie on ``plane`` (all when 2D)."""
    if plane is None or coords.shape[1] == 2:
        return np.ones(len(coords), dtype=bool)
    return planes_of(coords) == plane


def _as_uint32_labels(layer: Labels) -> np.ndarray:
    """The ids of an existing labels layer as uint32, the widget's label type; ``ValueError``
    when they do not fit (negative, or beyond 2**32 - 1)."""
    data = np.asarray(layer.data)
    low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint32).max:
        raise ValueError(
            f"layer {layer.name!r} holds ids {low}..{high}, which do not fit the annotations' "
            "uint32 ids (0..4294967295); rename or delete it"
        )
    return data.astype(np.uint32)


def _preview_colormap() -> DirectLabelColormap:
    """Magenta and violet by turns: a preview never looks like a committed object."""
    colors = {i: PREVIEW_COLORS[i % 2] for i in range(1, 1024)}
    return DirectLabelColormap(color_dict={None: PREVIEW_COLORS[1], 0: "transparent", **colors})


_PROPAGATED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # preview -> planes


def propagated_in(preview) -> dict:
    """The planes propagation reached in preview layer ``preview`` (empty where none)."""
    return _PROPAGATED.get(preview, {})


class PromptLayers:
    """Creates (or reuses: see :func:`role_for`) the prompt, preview and annotation layers of
    one image."""

    def __init__(self, viewer, image_layer, axes: ImageAxes, fingerprint: str) -> None:
        self.viewer = viewer
        self.axes = axes
        self.image = ImageMark.of(image_layer, fingerprint)  # whose layers to reuse, and mark
        self.ndim = len(axes.spatial_shape)
        name = image_layer.name
        # new layers start where the image is (else the view's ranges jump meanwhile)
        affine, units = self._placement_of(image_layer)
        self._placement = {"affine": affine} | ({} if units is None else {"units": units})
        self.annotations_created = False
        self.annotations = self._labels(name, ANNOTATIONS, opacity=0.5)
        self.preview = self._labels(name, PREVIEW, opacity=0.7, colormap=_preview_colormap())
        self._tops = PreviewTops.of(self.preview)  # None: a layer it did not make, read whole
        # per plane propagation reached; kept with the preview (picked again, an image finds
        # its preview layer and what propagated there: a correction refines, not replaces)
        self.propagated = _PROPAGATED.setdefault(self.preview, PropagatedPlanes())
        self.boxes = self._box_layer(name)
        self.points = self._point_layer(name)
        self.place_like(image_layer)  # layers kept from before may sit elsewhere

    def place_like(self, image_layer) -> None:
        """Put the four layers where the image is (its scale, translation, rotation, shear
        and affine on the spatial axes), so that a click or stroke lands on the pixel under
        it (a stack sheared across its planes: the pixel napari's 2D view shows, see
        :func:`plane_view_affine`, and ``sheared`` says so)."""
        affine, units = self._placement_of(image_layer)
        plain = plain_placement(image_layer, self.ndim)
        for layer in self.layers:
            place_layer(layer, self.ndim, affine, units, plain)

    def _placement_of(self, image_layer) -> tuple[np.ndarray, tuple | None]:
        """The affine and units of the four layers of ``image_layer``; sets ``sheared``."""
        affine = spatial_affine(image_layer, self.ndim)
        self.sheared = sheared_across_planes(affine)
        return plane_view_affine(affine), spatial_units(image_layer, self.ndim)

    # -- creation ----------------------------------------------------------------------
    def _existing(self, name: str, suffix: str, kind: type):
        """Image ``name``'s layer for ``suffix`` that the widget may use, if one fits: one
        it made for this image whatever its name (:func:`marked_role`: its layers keep their
        old names where a rename found the new ones taken), else one named after it (see
        :func:`role_for`); of each, the one of the exact name first."""
        layers = list(self.viewer.layers)
        own = [layer for layer in layers if marked_role(layer, self.image) == suffix]
        named = [
            layer
            for layer in layers
            if role_for(layer, name, self.image, self.viewer) == suffix
            and not any(layer is mine for mine in own)
        ]
        candidates = [
            *sorted(own, key=lambda layer: layer.name != name + suffix),
            *sorted(named, key=lambda layer: layer.name != name + suffix),
        ]
        return next((layer for layer in candidates if self._fits(layer, kind)), None)

    def _fits(self, layer, kind: type) -> bool:
        if not isinstance(layer, kind) or layer.ndim != self.ndim:
            return False
        return not isinstance(layer, Labels) or layer.data.shape == self.axes.spatial_shape

    def _added(self, layer, name: str, suffix: str):
        """``layer``, just added as image ``name``'s layer for ``suffix`` (napari names it
        ``<name><suffix> [n]`` where another layer has that name): marked as the widget's,
        for this image, and the person told the name it has."""
        layer.metadata[OWN_LAYER_KEY] = suffix
        layer.metadata[OWN_IMAGE_KEY] = self.image.as_metadata()
        if layer.name != name + suffix:
            show_info(
                f"layer {name + suffix!r} exists already and is not one the Annotate panel "
                f"can use: it is left as it is, and {name!r} is annotated with {layer.name!r}"
            )
        return layer

    def _labels(self, name: str, suffix: str, opacity: float, colormap=None) -> Labels:
        """The image's labels layer for ``suffix``: one found (given ``colormap``, if any),
        else a new one of zeros."""
        layer = self._existing(name, suffix, Labels)
        if layer is None:
            data = np.zeros(self.axes.spatial_shape, dtype=np.uint32)
            style = {"opacity": opacity} | ({} if colormap is None else {"colormap": colormap})
            layer = self.viewer.add_labels(data, name=name + suffix, **style, **self._placement)
            layer = self._added(layer, name, suffix)
            self.annotations_created |= suffix == ANNOTATIONS
            if suffix == PREVIEW:
                PreviewTops.start(layer)
            return layer
        if layer.data.dtype != np.uint32:
            dtype = layer.data.dtype
            layer.data = _as_uint32_labels(layer)  # e.g. uint8: the 256th object would not fit
            show_info(
                f"layer {layer.name!r} held {dtype} ids: the Annotate panel goes on with it as "
                "uint32 (a copy of its ids, with room for more objects), which is how it saves"
            )
        # a person's "<image> annotations" is this image's now: not another's given the name
        layer.metadata[OWN_IMAGE_KEY] = self.image.as_metadata()
        if colormap is not None and not same_colormap(layer.colormap, colormap):
            layer.colormap = colormap  # (it redraws the layer: not when it has these colours)
        return layer

    def _point_layer(self, name: str) -> Points:
        layer = self._existing(name, POINTS, Points)
        if layer is None:
            features = pd.DataFrame({"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])})
            layer = self.viewer.add_points(
                np.zeros((0, self.ndim)),
                ndim=self.ndim,
                name=name + POINTS,
                features=features,
                feature_defaults={"label": POSITIVE},
                face_color="label",
                face_color_cycle=POINT_COLORS,
                border_color="white",
                size=8,
                **self._placement,
            )
            layer = self._added(layer, name, POINTS)
        layer.mode = "add"
        return layer

    def _box_layer(self, name: str) -> Shapes:
        layer = self._existing(name, BOXES, Shapes)
        if layer is None:
            layer = self.viewer.add_shapes(
                ndim=self.ndim,
                name=name + BOXES,
                edge_color="#ffd000",
                face_color="transparent",
                edge_width=2,
                **self._placement,
            )
            layer = self._added(layer, name, BOXES)
        return layer

    def mark_image(self, fingerprint: str) -> None:
        """The image's pixels have ``fingerprint`` now: its layers say so, by which the image
        opened again (a new layer) finds them."""
        self.image = replace(self.image, fingerprint=fingerprint)
        for layer in self.layers:
            layer.metadata[OWN_IMAGE_KEY] = self.image.as_metadata()

    @property
    def layers(self) -> tuple:
        """The four managed layers: points, boxes, preview, annotations."""
        return (self.points, self.boxes, self.preview, self.annotations)

    # -- prompts -------------------------------------------------------------------------
    @property
    def positive_mode(self) -> bool:
        """Whether newly added points are positive."""
        return self.points.feature_defaults["label"].iloc[0] == POSITIVE

    def set_positive_mode(self, positive: bool) -> bool:
        """Set the polarity of new points, and of the selected points in select mode.

        (In add mode napari selects each new point; those keep their polarity.)
        Returns True if any existing point changed.
        """
        label = POSITIVE if positive else NEGATIVE
        self.points.feature_defaults = {"label": label}
        selected = sorted(self.points.selected_data) if self.points.mode == "select" else []
        if not selected or (self.points.features.loc[selected, "label"] == label).all():
            return False
        features = self.points.features.copy()
        features.loc[selected, "label"] = label
        self.points.features = features
        self.points.refresh_colors()
        return True

    def prompts(self, plane: int | None) -> PlanePrompts:
        """The points and boxes on ``plane`` (None for a 2D image) that touch the image."""
        coords = np.asarray(self.points.data, dtype=np.float64).reshape(-1, self.ndim)
        height, width = self.axes.spatial_shape[-2:]
        rows, cols = coords[:, -2], coords[:, -1]
        inside = (rows >= -0.5) & (rows <= height - 0.5) & (cols >= -0.5) & (cols <= width - 0.5)
        on_plane = _on_plane(coords, plane)
        keep = on_plane & inside
        labels = np.asarray(self.points.features["label"]) if len(coords) else np.array([])
        boxes, n_outside = [], int((on_plane & ~inside).sum())
        for vertices in self.boxes.data:
            vertices = np.asarray(vertices, dtype=np.float64)
            low, high = vertices[:, -2:].min(axis=0), vertices[:, -2:].max(axis=0)
            overlaps = (high >= -0.5).all() and low[0] <= height - 0.5 and low[1] <= width - 0.5
            if _on_plane(vertices[:1], plane)[0]:
                boxes += [np.concatenate([low, high])] if overlaps else []
                n_outside += not overlaps
        return PlanePrompts(
            points_rc=coords[keep][:, -2:],
            positive=(labels[keep] == POSITIVE) if len(coords) else np.zeros(0, dtype=bool),
            boxes_rc=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            n_outside=n_outside,
        )

    def prompts_record(self, planes: list[int] | None = None) -> dict:
        """The current prompts (those on ``planes`` of a stack, if given) as JSON-ready lists
        (napari layer coordinates)."""
        points = np.asarray(self.points.data).reshape(-1, self.ndim)
        labels = self.points.features["label"].astype(str) if len(points) else np.array([])
        on_points, on_boxes = self._on_planes(planes)
        return {
            "points": points[on_points].tolist(),
            "point_labels": [str(label) for label in labels[on_points]],
            "boxes": [
                np.asarray(box).tolist()
                for box, on in zip(self.boxes.data, on_boxes, strict=True)
                if on
            ],
        }

    def clear_prompts(self, planes: list[int] | None = None) -> None:
        """Remove every point and box, or those on ``planes`` of a stack."""
        if planes is None:
            if len(self.points.data):
                self.points.data = np.zeros((0, self.ndim))
            if len(self.boxes.data):
                self.boxes.data = []
            return
        for layer, on in zip((self.points, self.boxes), self._on_planes(planes), strict=True):
            if np.any(on):  # removed as napari does: a point's polarity goes with it
                layer.selected_data = set(np.flatnonzero(on).tolist())
                layer.remove_selected()

    def _on_planes(self, planes: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Which points and which boxes lie on ``planes`` (all, for None)."""
        points = np.asarray(self.points.data).reshape(-1, self.ndim)
        if planes is None:
            return np.ones(len(points), bool), np.ones(len(self.boxes.data), bool)
        boxes = [int(planes_of(np.asarray(v)[:1])[0]) in planes for v in self.boxes.data]
        return np.isin(planes_of(points), planes), np.array(boxes, bool)

    # -- preview ------------------------------------------------------------------------------
    def preview_plane(self, plane: int | None) -> np.ndarray:
        """A view (not a copy) of the preview labels of ``plane``: uint32 (H, W)."""
        data = self.preview.data
        return data if plane is None else data[plane]

    def set_preview(
        self, plane: int | None, labels: np.ndarray | None, redraw: bool = True
    ) -> None:
        """Show ``labels`` (uint32 (H, W), or None to empty it) as the preview of ``plane``;
        ``redraw=False`` for a plane out of view (napari reads a plane's pixels when it
        comes into view: propagation redrew the plane in view for each plane it reached,
        30-50 ms each for 2048 x 2048)."""
        self.set_previews({plane: labels}, redraw)

    def set_previews(self, planes: dict, redraw: bool = True) -> None:
        """:meth:`set_preview` of each plane -> labels of ``planes``, redrawn once (an undo
        putting back an object propagated through 30 planes of 2048 x 2048 redrew 31 times:
        0.4 s)."""
        for plane, labels in planes.items():
            target = self.preview_plane(plane)
            target[...] = 0 if labels is None else labels
            self._wrote(plane, labels)
        if redraw:
            self.preview.refresh()

    def _wrote(self, plane: int | None, labels: np.ndarray | None) -> None:
        if self._tops is not None:
            self._tops.wrote(plane, labels)

    def ids_apart_from_other_planes(self, plane: int | None, labels: np.ndarray) -> np.ndarray:
        """``labels`` (uint32 (H, W), the objects of ``plane``) with ids above those of the
        preview on the other planes: a commit makes one 3D object of an id found on several
        planes, and objects of batched mode on different planes are different objects."""
        data = self.preview.data
        if plane is None or len(data) < 2 or not labels.any():
            return labels
        offset = None if self._tops is None else self._tops.highest_apart_from(plane)
        if offset is None:  # not known: read every plane (see preview_tops)
            highest = data.reshape(len(data), -1).max(axis=1)
            highest[plane] = 0
            offset = int(highest.max())
        apart = np.zeros(labels.shape, np.uint32)  # (np.where took 12 ms for 2048 x 2048, this 2)
        return np.add(labels, np.uint32(offset), out=apart, where=labels > 0, casting="unsafe")

    def clear_propagated(self, keep: int) -> None:
        """Empty the preview of the planes an earlier propagation filled, but plane ``keep``
        (where a new one starts): what the new one does not reach is not part of the object."""
        planes = [plane for plane in self.propagated if plane != keep]
        for plane in planes:
            del self.propagated[plane]
            self.preview_plane(plane)[...] = 0
            self._wrote(plane, None)
        if planes:
            self.preview.refresh()

    def clear_preview(self, planes: list | None = None) -> None:
        """Empty the preview on every plane: those that show something, as writing zeros
        over the others (at every commit) got memory for planes never used (napari's new
        labels are zeros the system gives when first written), a second for 60 x 2048 x
        2048, and the writing took longer than finding them. ``planes``: those, where the
        caller knows them."""
        self.propagated.clear()
        for plane in self.preview_planes() if planes is None else planes:
            self.preview_plane(plane)[...] = 0
            self._wrote(plane, None)
        self.preview.refresh()

    def preview_planes(self) -> list[int | None]:
        """The planes where the preview is not empty (``[None]`` for a non-empty 2D preview)."""
        data = self.preview.data
        if not self.axes.is_stack:
            return [None] if data.any() else []
        return [int(z) for z in np.flatnonzero(data.reshape(len(data), -1).any(axis=1))]

    def follow_rename(self, old: str, new: str) -> list[tuple[str, str]]:
        """The image was renamed from ``old`` to ``new``: the layers named after it are
        renamed alike (see :func:`rename_layers`)."""
        return rename_layers(self.viewer, self.layers, old, new)

    def remove_helpers(self) -> None:
        """Remove the prompt and preview layers from the viewer (annotations stay)."""
        for layer in (self.points, self.boxes, self.preview):
            if layer in self.viewer.layers:  # (membership uses ==, which sees through proxies)
                self.viewer.layers.remove(layer)
