"""Views of one image made for prompts that fit in no tile, and their embeddings.

See :meth:`.ViewPredictor.view_for`: such a prompt gets a view centred on it
(:func:`~napari_samtune.core.embeddings.centred_view`), embedded when first used.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from napari_samtune.core.embeddings import Tile

MADE_VIEWS_KEPT = 8  # made views whose embeddings stay in memory (4 MB each for ViT-B)


class EmbeddingNeeded(Exception):
    """A prompt needs views not embedded yet, inside :meth:`.ViewPredictor.no_encoder_passes`:
    embed them (:meth:`.ViewPredictor.embed_views`, e.g. in a background thread), then ask
    again."""

    def __init__(self, views: tuple[Tile, ...]) -> None:
        super().__init__(f"{len(views)} view(s) of the image need an encoder pass first")
        self.views = views


class MadeViews:
    """The views made for one image's prompts, by number (0, 1, ... in the order they were
    first asked for; kept while the image is), and the embeddings of the last
    :data:`MADE_VIEWS_KEPT` used, or more (:meth:`make_room`); the others are embedded
    again, or read from the disk cache, when asked for."""

    def __init__(self) -> None:
        self.tiles: list[Tile] = []
        self._features: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._room = MADE_VIEWS_KEPT  # embeddings kept

    def make_room(self, n_views: int) -> None:
        """Keep at least ``n_views`` embeddings: the views one request needs at once (more
        than 8 boxes that fit in no tile), which were dropped in turn as the later ones
        were embedded, and asked for again without end by the annotation panel."""
        self._room = max(self._room, n_views)

    def number(self, tile: Tile) -> int:
        """``tile``'s number (a new one for a view not made before)."""
        if tile not in self.tiles:
            self.tiles.append(tile)
        return self.tiles.index(tile)

    def has_features(self, number: int) -> bool:
        return number in self._features

    def features(self, number: int) -> torch.Tensor | None:
        """The view's (1, C, E, E) embedding if it is kept, else None."""
        if number not in self._features:
            return None
        self._features.move_to_end(number)
        return self._features[number]

    def keep(self, number: int, features: torch.Tensor) -> None:
        if len(self._features) >= self._room:
            self._features.popitem(last=False)  # the least recently used
        self._features[number] = features
