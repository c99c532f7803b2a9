"""What propagation made on the planes of an image's preview, kept with the preview layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari_samtune._qt.prompt_layers import PlanePrompts


@dataclass(frozen=True)
class PropagatedPlane:
    """What propagation made on a plane: its mask (uint32 (H, W)), shown while the plane has
    no prompts of its own, and prompts that stand for it (its box and most interior point),
    which a correction there (a negative click) refines instead of replacing the mask."""

    labels: np.ndarray
    prompts: PlanePrompts


class PropagatedPlanes(dict):
    """Plane -> :class:`PropagatedPlane` of the object propagated in an image's preview, and
    ``starts``: the planes its propagation runs started from, whose prompts are the object's
    own (another run from a plane of the object goes through them)."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: set[int] = set()

    def clear(self) -> None:
        super().clear()
        self.starts.clear()
