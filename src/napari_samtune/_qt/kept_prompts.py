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


@dataclass(frozen=True)
class KeptPrompts:
    """The points (N, ndim) in layer coordinates with their features, and the boxes (each
    (V, ndim) vertices) with their shape types, of one image's prompt layers."""

    points: np.ndarray
    point_features: pd.DataFrame
    boxes: tuple[np.ndarray, ...]
    box_types: tuple[str, ...]
    propagated: dict = field(default_factory=dict)  # plane -> PropagatedPlane
    previews: dict = field(default_factory=dict)  # plane -> its preview then, uint32 (H, W)
    starts: frozenset[int] = frozenset()  # the planes propagation started from

    @property
    def n_prompts(self) -> int:
        return len(self.points) + len(self.boxes)

    def put_back(self, layers) -> None:
        """Make them the prompts of ``layers`` (a :class:`~.prompt_layers.PromptLayers`),
        replacing any there, and the planes a propagation had reached; the widget recomputes
        the preview from them."""
        for plane, propagated in self.propagated.items():  # before the prompts, which the
            layers.propagated[plane] = propagated  # preview of the plane in view refines
        if self.propagated:
            layers.set_previews({plane: self.previews[plane] for plane in self.propagated})
        layers.propagated.starts |= self.starts
        layers.clear_prompts()
        if len(self.points):
            layers.points.data = self.points
            layers.points.features = self.point_features
            layers.points.refresh_colors()
        if self.boxes:
            layers.boxes.add(list(self.boxes), shape_type=list(self.box_types))


def snapshot_prompts(layers) -> KeptPrompts | None:
    """The points and boxes of ``layers`` (a :class:`~.prompt_layers.PromptLayers`) as they
    are now; None when there are none."""
    points = np.array(layers.points.data, dtype=np.float64).reshape(-1, layers.ndim)
    boxes = tuple(np.array(vertices, dtype=np.float64) for vertices in layers.boxes.data)
    propagated = dict(layers.propagated)
    if not len(points) and not boxes and not propagated:
        return None
    return KeptPrompts(
        points=points,
        point_features=layers.points.features.copy(),
        boxes=boxes,
        box_types=tuple(layers.boxes.shape_type),
        propagated=propagated,
        previews={plane: _preview_of(layers, plane, made) for plane, made in propagated.items()},
        starts=frozenset(layers.propagated.starts),
    )


def _preview_of(layers, plane: int, made) -> np.ndarray:
    """What the preview of ``plane`` shows now, where propagation ``made`` it: a plane not
    corrected since shows ``made.labels``, which is kept instead of a copy (an object through
    29 planes of 2048 x 2048: 1 s at each commit, and 0.5 GB per undo step)."""
    shown = layers.preview_plane(plane)
    return made.labels if np.array_equal(shown, made.labels) else shown.copy()


def has_prompts(layers) -> bool:
    return bool(len(layers.points.data) or len(layers.boxes.data))
