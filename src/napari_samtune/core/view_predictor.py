"""SAM on one image at a time, view by view: the image's embeddings, and prompts decoded.

A view is one tile of the image's :class:`~napari_samtune.core.embeddings.TileGrid` (index
0 .. n_tiles - 1), a view made for a prompt that fits in no tile (index n_tiles and up, see
:meth:`ViewPredictor.view_for`) or the whole-image overview (-1). :class:`ViewPredictor`
embeds an image's tiles once (cached on disk; with ``set_image(..., embed=False)`` each when
a prompt first needs it), the other views when a prompt needs them,
decodes batches of prompts on a view and upscales the masks to the view's pixels. Turning
masks into objects is up to :class:`~napari_samtune.core.predict.Segmenter`, built on it.

Coordinates are SAM's: (x, y) = (column, row) pixels of the original image, pixel centres at
integers; boxes are XYXY.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from segment_anything.modeling import Sam

from napari_samtune.core.accelerate import autocast_dtype, use_fast_paths
from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.devices import resolve_device
from napari_samtune.core.embedding_cache import EmbeddingCache
from napari_samtune.core.embeddings import (
    OVERVIEW,
    ProgressCallback,
    Tile,
    TileGrid,
    TilingConfig,
    centred_view,
    embed_tiles,
    embedding_key,
    image_digest,
    reaches_inner_edge,
    view_name,
)
from napari_samtune.core.fast_decoder import DecoderImage
from napari_samtune.core.heap import tune_cpu_allocator
from napari_samtune.core.images import as_pixels, check_some_pixel_finite, is_blank, to_sam_rgb
from napari_samtune.core.made_views import EmbeddingNeeded, MadeViews
from napari_samtune.core.models import state_dict_digest
from napari_samtune.core.progress import check_callback
from napari_samtune.core.registry import WEIGHTS_ID_PREFIX
from napari_samtune.core.view_decoding import ViewDecodingMixin
from napari_samtune.core.weight_cache import forget_kept


class ViewPredictor(ViewDecodingMixin):
    """One image's embeddings, and SAM's prompt encoder + mask decoder on its views.

    The per-view half of :class:`~napari_samtune.core.predict.Segmenter` (whose docstring
    lists the arguments): prompts come here already given a view, in image coordinates.
    """

    def __init__(
        self,
        model: Sam,
        model_id: str | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
        tiling: TilingConfig | None = None,
        use_disk_cache: bool = True,
        precision: str = "auto",
    ) -> None:
        if not isinstance(model, Sam):
            raise TypeError(
                f"model is a {type(model).__name__!r}; expected a segment_anything Sam model "
                "(load one with napari_samtune.core.models.load_model(name).sam)"
            )
        if model_id is not None and (not isinstance(model_id, str) or not model_id.strip()):
            raise TypeError(  # it keys the disk cache: 5 or "" would be every model's id
                f"model_id={model_id!r}; pass the weights' id as a non-empty string (e.g. "
                "load_model(...).model_id), or None to take a digest of the weights"
            )
        _check_float32_weights(model)
        target = model.device if device is None else resolve_device(device)
        self.model = use_fast_paths(model.to(target).eval())
        forget_kept(self.model)  # weights changed through .data since would go unseen
        self.compute_dtype = autocast_dtype(self.model.device, precision)
        if self.model.device.type == "cpu":
            tune_cpu_allocator()
        if tiling is not None and not isinstance(tiling, TilingConfig):
            raise TypeError(
                f"tiling={tiling!r} is {kind_of(tiling)}; pass a TilingConfig, e.g. "
                "TilingConfig(overlap_fraction=0.25), or None for the default"
            )
        self.tiling = tiling if tiling is not None else TilingConfig()
        self.cache = EmbeddingCache(cache_dir) if use_disk_cache else None
        self._model_id = model_id
        self._rgb: np.ndarray | None = None
        self._image_hash: str | None = None
        self._grid: TileGrid | None = None
        self._features: torch.Tensor | None = None  # all tiles' (None: see _tile_features)
        self._tile_features: dict[int, torch.Tensor] = {}
        self._overview: torch.Tensor | None = None
        self._last_view = 0
        self._decoder_images: dict[int, DecoderImage] = {}
        self._made_views = MadeViews()  # for prompts in no tile: view n_tiles + their number
        self._encoder_held = False

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            # the id load_model gives user weights, so both paths share cache entries
            self._model_id = WEIGHTS_ID_PREFIX + state_dict_digest(self.model.state_dict())
        return self._model_id

    @property
    def _embedding_id(self) -> str:
        """Model id plus encoder precision: bf16 and fp32 embeddings are cached apart."""
        precision = str(self.compute_dtype).removeprefix("torch.") if self.compute_dtype else "fp32"
        return f"{self.model_id}|{precision}"

    @property
    def img_size(self) -> int:
        return int(self.model.image_encoder.img_size)

    @property
    def grid(self) -> TileGrid:
        """Tile geometry of the current image."""
        if self._grid is None:
            raise RuntimeError("no image is set; call Segmenter.set_image(image) first")
        return self._grid

    @property
    def image_digest(self) -> str | None:
        """Content digest of the current image (None before :meth:`set_image`)."""
        return self._image_hash

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        return self.grid.image_shape

    def set_image(
        self,
        image: np.ndarray,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        progress: ProgressCallback | None = None,
        image_name: str = "image",
        embed: bool = True,
    ) -> None:
        """Normalise and embed an image (or load its embeddings from the cache).

        Args:
            image: (H, W) or channelled image, any numeric dtype; see ``to_sam_rgb``.
            channel_axis, channels: passed to ``to_sam_rgb``.
            progress: called as ``progress(tiles_done, n_tiles)`` while embedding.
            image_name: what errors call the image (e.g. "plane 3/9", "image layer 'x'").
            embed: False embeds no tile now (unless the cache holds them all): each is
                embedded, and cached on its own, when a prompt first needs it, e.g. for a
                few prompts on a large image (see :meth:`embed_views`).

        Raises:
            TypeError: for a file name (str or path) instead of the pixels.
            ValueError: for a float image without a finite pixel (all NaN or infinite),
                which would be embedded as black. Among finite pixels, NaN and -inf ones
                come out black (the low percentile), +inf ones white.
        """
        if isinstance(image, (str, os.PathLike)):  # np.asarray makes it a 0-d array
            raise TypeError(
                f"{image_name} is the file name {str(image)!r}, not its pixels; read the file "
                f"first, e.g. set_image(tifffile.imread({str(image)!r}))"
            )
        check_callback(progress, "progress", "progress(tiles_done, n_tiles)")
        pixels = as_pixels(image)  # read once: a dask or zarr array is not read twice
        check_some_pixel_finite(pixels, image_name)
        rgb = to_sam_rgb(pixels, channel_axis, channels)
        grid = TileGrid.for_image(rgb.shape[:2], self.img_size, self.tiling)
        digest = image_digest(rgb)
        if digest == self._image_hash and grid == self._grid:
            if self._features is not None or not embed:
                return  # the same image again: its embeddings are already in memory
        key = embedding_key(digest, self._embedding_id, grid, "tiles")
        features = self._cached(key, grid.tiles, progress)
        if features is None and embed:
            features = self._embed_tiles_left(key, rgb, digest, grid, progress)
        # kept for the overview, embedded later, so not the caller's memory, which it may
        # reuse: uint8 RGB (an array, or a tensor's memory) passes through to_sam_rgb as it is
        if not isinstance(image, np.ndarray) or np.may_share_memory(rgb, image):
            rgb = rgb.copy()
        self._rgb, self._image_hash, self._grid = rgb, digest, grid
        self._features, self._overview, self._last_view = features, None, 0
        self._tile_features = {}
        self._decoder_images, self._made_views = {}, MadeViews()

    @property
    def image_is_blank(self) -> bool:
        """Whether the image set is one value everywhere as SAM sees it (a black frame, a
        flat channel): any mask of it would be made up."""
        return self._rgb is not None and is_blank(self._rgb)

    def prepare_prompts(self) -> None:
        """Project a single-tile image's decoder tokens now (55-90 ms on 2 cores with the
        low-rank projections) instead of at the first prompt, e.g. in the worker that set
        the image. Tiled images are left as they are: each prompt picks its view."""
        if len(self.grid.tiles) == 1:
            self._decoder_image(0)

    def _load_or_embed(
        self,
        key: str,
        rgb: np.ndarray,
        tiles: tuple[Tile, ...],
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        cached = self._cached(key, tiles, progress)
        if cached is not None:
            return cached
        features = embed_tiles(self.model, rgb, tiles, progress, self.compute_dtype)
        if self.cache is not None:
            self.cache.save(key, features)
        return features

    def _embed_tiles_left(
        self,
        key: str,
        rgb: np.ndarray,
        digest: str,
        grid: TileGrid,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        """Every tile's embedding, cached under ``key``: those :meth:`set_image` with
        ``embed=False`` cached one at a time (``samtune segment --boxes``, say) are read,
        the others embedded; the annotation widget embedded the whole image again. Once the
        whole image's entry is written, the tiles' own entries are deleted: a later
        :meth:`set_image` reads the whole entry, and the tiles took their space twice."""
        tiles = grid.tiles
        lookup = self.cache is not None and len(tiles) > 1  # one tile: its entry is key's
        tile_keys = [embedding_key(digest, self._embedding_id, grid, view_name(t)) for t in tiles]
        parts = [
            self._cached(tile_key, (tile,), None) if lookup else None
            for tile_key, tile in zip(tile_keys, tiles, strict=True)
        ]
        left = [i for i, part in enumerate(parts) if part is None]
        if left:
            new = embed_tiles(
                self.model, rgb, tuple(tiles[i] for i in left), progress, self.compute_dtype
            )
            for i, tile_features in zip(left, new.split(1), strict=True):
                parts[i] = tile_features
        # none cached on its own: the new ones as they are (a large image's, not copied)
        features = new if len(left) == len(tiles) else torch.cat(parts)
        if self.cache is not None and self.cache.save(key, features):
            for i in set(range(len(tiles))).difference(left):
                self.cache.remove(tile_keys[i])
        return features

    def _cached(
        self, key: str, tiles: tuple[Tile, ...], progress: ProgressCallback | None
    ) -> torch.Tensor | None:
        encoder = self.model.prompt_encoder
        expected = (len(tiles), encoder.embed_dim, *encoder.image_embedding_size)
        cached = self.cache.load(key, expected) if self.cache is not None else None
        if cached is None:
            return None
        if progress is not None:
            progress(len(tiles), len(tiles))
        return cached.to(self.model.device)

    def view_tile(self, view: int) -> Tile:
        """The rectangle of the image that ``view`` (tile, made view or overview) sees."""
        n_tiles = len(self.grid.tiles)
        return self.grid.view(view) if view < n_tiles else self._made_views.tiles[view - n_tiles]

    def view_for(self, coords_xy: np.ndarray) -> int:
        """The view that answers a prompt with these (..., 2) image (x, y) coordinates.

        The tile where they are most central; where no tile holds them all, a view made for
        them (:func:`~napari_samtune.core.embeddings.centred_view`, embedded when first
        used). Answering such prompts on the whole-image overview lost the small objects of
        large images: nano on 2000 x 3000 px, boxes across tiles, mean IoU 0.14 there, 0.72
        on views made for them (as on crops around them).
        """
        tile = self.grid.choose_tile(coords_xy)
        return tile if tile != OVERVIEW else self._centred_on(coords_xy)

    def _centred_on(self, coords_xy: np.ndarray) -> int:
        wanted = centred_view(coords_xy, self.image_shape, self.img_size)
        if wanted == self.grid.overview:
            return OVERVIEW
        return len(self.grid.tiles) + self._made_views.number(wanted)

    def view_past_cut(self, view: int, coords_xy: np.ndarray, logits: torch.Tensor) -> int | None:
        """Where the mask of (L, L) ``logits``, decoded on tile ``view`` for a prompt at
        ``coords_xy``, reaches an edge of the tile inside the image, the view centred on the
        prompt, to decode it again; else None. A click 30 px from a seam (in the tile where
        it was most central) gave nano a disc of radius 50 cut at the tile's edge: IoU
        0.75-0.86, 0.97 at a tile's centre."""
        if not 0 <= view < len(self.grid.tiles):  # made for the prompt already, or the overview
            return None
        tile = self.view_tile(view)
        if not reaches_inner_edge(tile, self.image_shape, logits, self.model.mask_threshold):
            return None
        centred = self._centred_on(coords_xy)
        return None if self.view_tile(centred) == tile else centred

    def within_view_of(self, coords_xy: np.ndarray, others_xy: np.ndarray) -> np.ndarray:
        """Those of ``others_xy`` ((n, 2) image x, y) inside the view that answers
        ``coords_xy`` on its own: the negative points that belong in an object's prompt.
        A negative far away (another part of a large image) made the view span both,
        downscaled: nano's IoU of a cell on a 1536 px image fell from 0.84 to 0.32."""
        others = np.asarray(others_xy, dtype=np.float64).reshape(-1, 2)
        tile = self.view_tile(self.view_for(coords_xy))
        x, y = others[:, 0], others[:, 1]
        inside = (x >= tile.x0) & (x <= tile.x0 + tile.width)
        inside &= (y >= tile.y0) & (y <= tile.y0 + tile.height)
        return others[inside]

    @contextmanager
    def no_encoder_passes(self) -> Iterator[None]:
        """Inside it, a prompt that needs a view not embedded yet raises
        :class:`EmbeddingNeeded` instead of running the image encoder (seconds for the
        larger models on a CPU): the annotation widget embeds those views in the background.
        """
        self._encoder_held = True
        try:
            yield
        finally:
            self._encoder_held = False

    def require_embedded(self, views: Sequence[int]) -> None:
        """Raise :class:`EmbeddingNeeded` for those of ``views`` not embedded yet, inside
        :meth:`no_encoder_passes`; outside it, nothing (they are embedded when used)."""
        if not self._encoder_held:
            return
        missing = tuple(self.view_tile(v) for v in dict.fromkeys(views) if not self._has(v))
        if missing:
            raise EmbeddingNeeded(missing)

    def _has(self, view: int) -> bool:
        if view in self._decoder_images:
            return True
        if view == OVERVIEW:
            return self._overview is not None
        n_tiles = len(self.grid.tiles)
        if view < n_tiles:
            return self._features is not None or view in self._tile_features
        return self._made_views.has_features(view - n_tiles)

    def embed_views(self, views: Sequence[Tile], progress: ProgressCallback | None = None) -> None:
        """Embed views of the current image (those an :class:`EmbeddingNeeded` named; cached
        on disk), so that prompts inside :meth:`no_encoder_passes` can use them."""
        check_callback(progress, "progress", "progress(views_done, n_views)")
        made = [tile for tile in views if tile not in self.grid.tiles]
        self._made_views.make_room(len(made))  # all of them are needed at once
        for done, tile in enumerate(views):
            if progress is not None:
                progress(done, len(views))
            if tile in self.grid.tiles:  # one that set_image(..., embed=False) left
                self.features(self.grid.tiles.index(tile))
            elif tile == self.grid.overview:
                self.features(OVERVIEW)
            else:
                self.features(len(self.grid.tiles) + self._made_views.number(tile))
        if progress is not None:
            progress(len(views), len(views))

    def features(self, view: int) -> torch.Tensor:
        """(1, C, E, E) embedding of ``view``: a tile's, or (computed on demand) the overview's
        (-1) or a made view's."""
        n_tiles = len(self.grid.tiles)
        if 0 <= view < n_tiles and self._features is not None:
            return self._features[view : view + 1]
        self.require_embedded([view])
        if 0 <= view < n_tiles:
            if view not in self._tile_features:
                tile = self.grid.tiles[view]
                name = "tiles" if n_tiles == 1 else view_name(tile)  # one: the image's entry
                self._tile_features[view] = self._embed_view(name, tile)
            return self._tile_features[view]
        if view == OVERVIEW:
            if self._overview is None:
                self._overview = self._embed_view("overview", self.grid.overview)
            return self._overview
        features = self._made_views.features(view - n_tiles)
        if features is None:
            tile = self.view_tile(view)
            features = self._embed_view(view_name(tile), tile)
            self._made_views.keep(view - n_tiles, features)
        return features

    def _embed_view(self, name: str, tile: Tile) -> torch.Tensor:
        key = embedding_key(self._image_hash, self._embedding_id, self.grid, name)
        return self._load_or_embed(key, self._rgb, (tile,), None)


def _check_float32_weights(model: Sam) -> None:
    """Refuse a model whose prompt encoder or mask decoder weights were cast
    (``sam.to(torch.bfloat16)``, ``.half()``): its encoder ran, and the first prompt failed in
    the prompt encoder with torch's "expected m1 and m2 to have the same dtype". The
    Segmenter decodes in float32 and computes the image encoder in bf16 where it pays
    (``precision``). An image encoder cast on its own (half the memory of its weights)
    still runs: its embeddings come out float32."""
    decoding = (model.prompt_encoder, model.mask_decoder)
    cast = next((p for m in decoding for p in m.parameters() if p.dtype != torch.float32), None)
    if cast is not None:
        dtype = str(cast.dtype).removeprefix("torch.")
        raise TypeError(
            f"the model's prompt encoder or mask decoder weights are {dtype}; give the model "
            "in float32 (e.g. sam.float()) and choose the computing precision with "
            "precision='bf16' (or 'auto', which picks bf16 where this machine computes it "
            "faster)"
        )
