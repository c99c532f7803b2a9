"""Writing new objects into an instance-label array, and undoing it. Qt-free (numpy only).

Labels are uint32 arrays, (H, W) or (Z, H, W), 0 = background. A *plane* is an int
index into the first axis of a stack, or None for a 2D array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

Plane = int | None


def plane_view(labels: np.ndarray, plane: Plane) -> np.ndarray:
    """The (H, W) view of ``plane`` (the array itself when it is 2D and ``plane`` is None)."""
    return labels if plane is None else labels[plane]


@dataclass
class UndoEntry:
    """What one edit changed: the previous content of every plane it wrote."""

    snapshots: dict[Plane, np.ndarray] = field(default_factory=dict)  # plane -> copy before
    n_records: int = 0  # object records the edit appended (removed again on undo)

    def remember(self, labels: np.ndarray, plane: Plane) -> None:
        """Keep a copy of ``plane`` unless this edit already did."""
        if plane not in self.snapshots:
            self.snapshots[plane] = plane_view(labels, plane).copy()

    def restore(self, labels: np.ndarray) -> None:
        """Put every remembered plane back into ``labels`` (in place)."""
        for plane, before in self.snapshots.items():
            plane_view(labels, plane)[...] = before


class UndoStack:
    """The last ``depth`` edits, newest last."""

    def __init__(self, depth: int = 20) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth!r} must be >= 1")
        self.depth = depth
        self._entries: list[UndoEntry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, entry: UndoEntry) -> None:
        self._entries.append(entry)
        del self._entries[: -self.depth]

    def pop(self) -> UndoEntry | None:
        return self._entries.pop() if self._entries else None

    def peek(self) -> UndoEntry | None:
        return self._entries[-1] if self._entries else None

    def clear(self) -> None:
        self._entries.clear()


def write_objects(
    labels: np.ndarray,
    objects_by_plane: Mapping[Plane, np.ndarray],
    overwrite: bool = False,
    entry: UndoEntry | None = None,
) -> list[int]:
    """Write objects into ``labels`` (in place) as new ids ``max + 1, max + 2, ...``.

    Args:
        labels: uint32 (H, W) or (Z, H, W) instance labels.
        objects_by_plane: per plane, uint32 (H, W) object ids (0 = nothing). The same
            object id on several planes becomes the same new id (a 3D object); ids are
            numbered in increasing order of their object id.
        overwrite: whether objects may replace pixels of existing objects; if not,
            they only fill background.
        entry: undo entry that remembers the planes before they change.

    Returns:
        The new ids that received at least one pixel, ascending.
    """
    present = [np.unique(objects) for objects in objects_by_plane.values()]
    ids = np.unique(np.concatenate(present or [np.zeros(0, np.uint32)]))
    ids = ids[ids != 0]
    if len(ids) == 0:
        return []
    first_id = int(labels.max(initial=0)) + 1
    lut = np.zeros(int(ids.max()) + 1, dtype=labels.dtype)
    lut[ids] = np.arange(first_id, first_id + len(ids), dtype=labels.dtype)
    written: set[int] = set()
    for plane, objects in objects_by_plane.items():
        target = plane_view(labels, plane)
        where = objects > 0
        if not overwrite:
            where &= target == 0
        if not where.any():
            continue
        if entry is not None:
            entry.remember(labels, plane)
        new = lut[objects[where]]
        target[where] = new
        written.update(int(i) for i in np.unique(new))
    return sorted(written)
