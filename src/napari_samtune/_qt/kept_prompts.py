"""An image's prompts kept for U (undo) to put back.

Clearing (Shift+C) takes every point (with its positive / negative label) and box of an
image at once, and so does a commit: a slip of the key lost many clicks, and U reverted a
commit's pixels without its prompts, so a wrong object had to be clicked again from the
start. The prompts a commit used are kept in its undo entry, those a clear took by the
widget until a prompt is added or removed. With them go the planes a propagation reached
(their masks and prompts): U after committing a propagated object brought back its start
plane only, and C then wrote a one-plane object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from napari_samtune._qt import preview_basis


@dataclass(frozen=True)
class KeptPrompts:
    """The points (N, ndim) in layer coordinates with their features, and the boxes (each
    (V, ndim) vertices) with their shape types, of one image's prompt layers."""

    points: np.ndarray
    point_features: pd.DataFrame
    boxes: tuple[np.ndarray, ...]
    box_types: tuple[str, ...]
    propagated: dict = field(default_factory=dict)  # plane -> PropagatedPlane
    previews: dict = field(default_factory=dict)  # plane shown -> its preview (_preview_of)
    starts: frozenset[int] = frozenset()  # the planes propagation started from
    made_under: tuple | None = None  # what the previews were made under (preview_basis)

    @property
    def n_prompts(self) -> int:
        return len(self.points) + len(self.boxes)

    def put_back(self, layers) -> None:
        """Make them the prompts of ``layers`` (a :class:`~.prompt_layers.PromptLayers`),
        replacing any there, with the planes a propagation had reached and the preview of
        every plane that showed one; the widget recomputes the plane in view from them."""
        # the previews of planes it holds nothing for go: out of view, they stayed (another
        # object's, a second U put back), and the next commit merged them into this object
        stale = {plane: None for plane in layers.preview_planes() if plane not in self.previews}
        layers.propagated.clear()
        for plane, propagated in self.propagated.items():  # before the prompts, which the
            layers.propagated[plane] = propagated  # preview of the plane in view refines
        if self.previews or stale:  # the planes out of view: only the one in view is redone
            shape = layers.axes.spatial_shape[-2:]
            previews = {plane: whole_plane(kept, shape) for plane, kept in self.previews.items()}
            layers.set_previews({**stale, **previews})
        layers.propagated.starts |= self.starts
        layers.clear_prompts()
        if len(self.points):
            layers.points.data = self.points
            layers.points.features = self.point_features
            layers.points.refresh_colors()
        if self.boxes:
            layers.boxes.add(list(self.boxes), shape_type=list(self.box_types))


def snapshot_prompts(layers, shown: list | None = None) -> KeptPrompts | None:
    """The points and boxes of ``layers`` (a :class:`~.prompt_layers.PromptLayers`) as they
    are now, with the preview of each plane that shows one (``shown``, where the caller has
    them: :meth:`~.prompt_layers.PromptLayers.preview_planes`); None when there are none.

    Of a stack prompted on several planes only the plane in view got its preview back: a
    commit after U wrote the object without the others, and cleared their prompts."""
    points = np.array(layers.points.data, dtype=np.float64).reshape(-1, layers.ndim)
    boxes = tuple(np.array(vertices, dtype=np.float64) for vertices in layers.boxes.data)
    propagated = dict(layers.propagated)
    if not len(points) and not boxes and not propagated:
        return None
    shown = layers.preview_planes() if shown is None else shown
    return KeptPrompts(
        points=points,
        point_features=layers.points.features.copy(),
        boxes=boxes,
        box_types=tuple(layers.boxes.shape_type),
        propagated=propagated,
        previews={  # a 2D image's only plane is the one in view, which U recomputes
            plane: _preview_of(layers, plane, propagated.get(plane))
            for plane in shown
            if plane is not None
        },
        starts=frozenset(layers.propagated.starts),
        made_under=preview_basis.made_under(layers.preview),
    )


def _preview_of(layers, plane: int | None, made) -> np.ndarray | Crop:
    """What the preview of ``plane`` shows now: where propagation ``made`` it and it was not
    corrected since, ``made.labels``, kept instead of a copy (an object through 29 planes of
    2048 x 2048: 1 s at each commit, and 0.5 GB per undo step); else its :class:`Crop`."""
    shown = layers.preview_plane(plane)
    if made is not None and np.array_equal(shown, made.labels):
        return made.labels
    return Crop.of(shown)


@dataclass(frozen=True)
class Crop:
    """The part of a preview plane around its objects: a whole 4096 x 4096 plane kept per
    commit took 64 MB of each of the 20 undo steps, where a cell's mask takes kilobytes."""

    rows: slice
    cols: slice
    pixels: np.ndarray  # uint32, a copy

    @classmethod
    def of(cls, plane: np.ndarray) -> Crop:
        rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        if not len(rows):
            return cls(slice(0, 0), slice(0, 0), plane[:0, :0].copy())
        rows, cols = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        return cls(rows, cols, plane[rows, cols].copy())


def whole_plane(kept: np.ndarray | Crop, shape: tuple[int, int]) -> np.ndarray:
    """A kept preview (:func:`_preview_of`) as a whole (H, W) plane."""
    if not isinstance(kept, Crop):
        return kept
    plane = np.zeros(shape, np.uint32)
    plane[kept.rows, kept.cols] = kept.pixels
    return plane


def has_prompts(layers) -> bool:
    return bool(len(layers.points.data) or len(layers.boxes.data))
