"""Image embeddings: tiling geometry, encoder passes and the on-disk cache.

An image whose sides both fit the model input (``img_size``, 1024 for the
official models) is embedded exactly as ``segment_anything.SamPredictor`` does:
longest side resized to ``img_size``, padded, normalised by the pixel mean/std.

A larger image is cut into a grid of ``img_size`` x ``img_size`` tiles that
overlap by ``TilingConfig.overlap_fraction`` of a tile; each tile is embedded at
full resolution (scale 1). A prompt that fits in no tile gets a view of its own, embedded
on demand: centred on the prompt, ``img_size`` wide (scale 1) or, for a prompt larger
than that, :data:`VIEW_CONTEXT` times its extent (see :func:`centred_view`). Only a prompt
that needs (nearly) the whole image is answered on the whole-image "overview" (the image
downscaled to ``img_size``), which is much coarser for a large image with small tiles.

Coordinates: image pixels, (x, y) = (column, row), pixel centres at integers.
Embeddings are cached on disk under a key that hashes the normalised image, its
shape, the model id and the tile geometry, so opening the same image with the
same model again costs no encoder pass. The cache keeps at most
``$SAMTUNE_EMBEDDING_CACHE_GB`` (default 10 GB): past that, the least recently used
files go (ViT-B: 4 MB per 1024 px image or tile); see :mod:`.embedding_cache`.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.transforms.functional import resize, to_pil_image

from napari_samtune.core.accelerate import autocast
from napari_samtune.core.architectures import PATCH_SIZE
from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.embedding_cache import CACHE_FORMAT, CACHE_FORMAT_VERSION
from napari_samtune.core.fast_encoder import encode

LOWRES_FACTOR = 4  # the mask decoder's low-res logits are 4x the embedding grid
OVERVIEW = -1  # view index of the whole-image overview embedding
VIEW_CONTEXT = 1.25  # a view made for a prompt larger than a tile: this times its extent

ProgressCallback = Callable[[int, int], None]  # (tiles done, tiles in total)


@dataclass(frozen=True)
class TilingConfig:
    """How images larger than the model input are cut into tiles."""

    overlap_fraction: float = 0.25  # overlap of neighbouring tiles, as a fraction of a tile side

    def __post_init__(self) -> None:
        fraction = self.overlap_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):  # np.float32 too
            raise TypeError(
                f"overlap_fraction={fraction!r} is {kind_of(fraction)}; pass a number "
                "between 0 and 0.75 (e.g. 0.25)"
            )
        if not 0.0 <= self.overlap_fraction <= 0.75:
            raise ValueError(
                f"overlap_fraction={self.overlap_fraction!r}; use a fraction of the tile side "
                "between 0 and 0.75 (e.g. 0.25)"
            )


@dataclass(frozen=True)
class Tile:
    """A rectangle of the image that the encoder sees on its own.

    ``y0, x0`` is the top-left pixel, ``height, width`` the extent in pixels. The
    crop is resized so its longest side is ``img_size`` (a no-op for full tiles).
    """

    y0: int
    x0: int
    height: int
    width: int
    img_size: int

    @property
    def input_size(self) -> tuple[int, int]:
        """(rows, cols) of the resized crop inside the padded model input.

        At least one of each: ``ResizeLongestSide`` rounds the short side of a view more
        than ``2 * img_size`` times longer than wide (the overview of a 3 x 2000 image for
        nano) to 0 rows, and the resize failed deep inside ('height and width must be > 0')."""
        rows, cols = ResizeLongestSide.get_preprocess_shape(self.height, self.width, self.img_size)
        return max(rows, 1), max(cols, 1)

    @property
    def lowres_size(self) -> int:
        """Side of the decoder's square low-res logits (256 for 1024 models)."""
        return self.img_size // PATCH_SIZE * LOWRES_FACTOR

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The tile's pixels of an (H, W, ...) array."""
        return image[self.y0 : self.y0 + self.height, self.x0 : self.x0 + self.width]

    def to_input_frame(self, coords_xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) image (x, y) coordinates into the model-input frame of this tile.

        The scaling is ``ResizeLongestSide.apply_coords`` applied to the crop, so a
        whole-image tile reproduces ``SamPredictor`` exactly.
        """
        in_h, in_w = self.input_size
        shifted = np.asarray(coords_xy, dtype=np.float64) - (self.x0, self.y0)
        return shifted * (in_w / self.width, in_h / self.height)

    def from_input_frame(self, coords_xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_input_frame`."""
        in_h, in_w = self.input_size
        scaled = np.asarray(coords_xy, dtype=np.float64) / (in_w / self.width, in_h / self.height)
        return scaled + (self.x0, self.y0)


def _axis_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Evenly spread tile starts covering ``length``; neighbours overlap by >= ``overlap``."""
    if length <= tile:
        return (0,)
    n_tiles = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (n_tiles - 1)
    # floor keeps every step <= tile - overlap, so no overlap shrinks below the requested one
    return tuple(int(math.floor(i * step)) for i in range(n_tiles - 1)) + (length - tile,)


def _inner_edges(starts: tuple[int, ...], tile: int) -> np.ndarray:
    """Boundaries between the inner regions of consecutive tiles along one axis.

    The boundary of tiles i and i + 1 is the middle of their overlap (pixel-index
    coordinates), so the inner regions partition the axis.
    """
    middles = [(starts[i + 1] + starts[i] + tile - 1) / 2 for i in range(len(starts) - 1)]
    return np.array([-np.inf, *middles, np.inf])


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one image, row-major: tile ``i`` is (row i // n_x, column i % n_x)."""

    image_shape: tuple[int, int]  # (H, W) of the image
    img_size: int  # model input side, also the tile side
    y_starts: tuple[int, ...]  # first row of each tile row
    x_starts: tuple[int, ...]  # first column of each tile column

    @classmethod
    def for_image(
        cls, image_shape: tuple[int, int], img_size: int, tiling: TilingConfig
    ) -> TileGrid:
        """Tile an (H, W) image; one tile when both sides are <= ``img_size``."""
        height, width = (int(s) for s in image_shape[:2])
        if height <= img_size and width <= img_size:
            return cls((height, width), img_size, (0,), (0,))
        overlap = round(tiling.overlap_fraction * img_size)
        ys = _axis_starts(height, img_size, overlap)
        xs = _axis_starts(width, img_size, overlap)
        return cls((height, width), img_size, ys, xs)

    @property
    def is_tiled(self) -> bool:
        return len(self.tiles) > 1

    @cached_property
    def tiles(self) -> tuple[Tile, ...]:
        height, width = self.image_shape
        size = self.img_size
        return tuple(
            Tile(y0, x0, min(size, height), min(size, width), size)
            for y0 in self.y_starts
            for x0 in self.x_starts
        )

    @property
    def overview(self) -> Tile:
        """The whole image as one tile, downscaled to the model input."""
        return Tile(0, 0, self.image_shape[0], self.image_shape[1], self.img_size)

    def view(self, index: int) -> Tile:
        """Tile ``index``, or the overview for ``OVERVIEW`` (-1)."""
        return self.overview if index == OVERVIEW else self.tiles[index]

    def inner_bounds(self, index: int) -> tuple[float, float, float, float]:
        """(y_lo, y_hi, x_lo, x_hi): a point belongs to tile ``index`` if lo <= p < hi.

        Inner regions (a tile minus half the overlap on each interior side)
        partition the image, so every object centre has exactly one owner.
        """
        row, col = divmod(index, len(self.x_starts))
        y_edges = _inner_edges(self.y_starts, min(self.img_size, self.image_shape[0]))
        x_edges = _inner_edges(self.x_starts, min(self.img_size, self.image_shape[1]))
        return y_edges[row], y_edges[row + 1], x_edges[col], x_edges[col + 1]

    def margins(self, coords_xy: np.ndarray) -> np.ndarray:
        """Smallest distance of the coordinates to each tile's interior borders.

        Tile sides that lie on the image border do not count (nothing is cut
        there). Negative when a coordinate lies outside the tile. Shape (n_tiles,).
        """
        return np.array([tile_margin(t, self.image_shape, coords_xy) for t in self.tiles])

    def choose_tile(self, coords_xy: np.ndarray) -> int:
        """The tile where the prompt coordinates (points, box corners) are most central.

        Returns ``OVERVIEW`` when no single tile contains them all (e.g. a box across
        tiles): :meth:`.ViewPredictor.view_for` then gives them a view of their own.
        """
        margins = self.margins(coords_xy)
        best = int(np.argmax(margins))
        return best if margins[best] >= 0 else OVERVIEW

    def describe(self) -> str:
        """A stable text form of the geometry, part of the cache key."""
        return f"{self.image_shape}|{self.img_size}|y{self.y_starts}|x{self.x_starts}"


def tile_margin(tile: Tile, image_shape: tuple[int, int], coords_xy: np.ndarray) -> float:
    """Smallest distance of (..., 2) image (x, y) coordinates to ``tile``'s interior borders.

    Sides on the border of the (H, W) image do not count (nothing is cut there); negative
    when a coordinate lies outside the tile, inf when it has no interior border.
    """
    coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    height, width = image_shape
    lo_x = tile.x0 - 0.5 if tile.x0 > 0 else -np.inf
    hi_x = tile.x0 + tile.width - 0.5 if tile.x0 + tile.width < width else np.inf
    lo_y = tile.y0 - 0.5 if tile.y0 > 0 else -np.inf
    hi_y = tile.y0 + tile.height - 0.5 if tile.y0 + tile.height < height else np.inf
    x, y = coords[:, 0], coords[:, 1]
    return float(np.minimum.reduce([x - lo_x, hi_x - x, y - lo_y, hi_y - y]).min(initial=np.inf))


def centred_view(coords_xy: np.ndarray, image_shape: tuple[int, int], img_size: int) -> Tile:
    """A view of the (H, W) image for prompt coordinates that fit in no tile.

    Centred on the coordinates' bounding box (shifted inside the image), ``img_size``
    pixels wide where the box is smaller than that (full resolution, as a tile), else
    :data:`VIEW_CONTEXT` times the box's longer side (downscaled to ``img_size``), and no
    larger than the image. Where it covers the whole image it is the overview.

    Its start is rounded to 1/8 of ``img_size`` and its side up to 1/4: prompts close to
    each other share a view (one encoder pass), and a prompt's view does not depend on the
    prompts before it. The box stays over 1/30 of the side away from the view's edges.
    """
    coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    (x_lo, y_lo), (x_hi, y_hi) = coords.min(axis=0), coords.max(axis=0)
    step = max(img_size // 8, 1)
    extent = max(x_hi - x_lo, y_hi - y_lo) + 1
    side = max(img_size, math.ceil(extent * VIEW_CONTEXT / (2 * step)) * 2 * step)
    height, width = (int(s) for s in image_shape)
    rows, cols = min(side, height), min(side, width)
    y0 = _start_around((y_lo + y_hi) / 2, rows, height, step)
    x0 = _start_around((x_lo + x_hi) / 2, cols, width, step)
    return Tile(y0, x0, rows, cols, img_size)


def reaches_inner_edge(
    tile: Tile, image_shape: tuple[int, int], logits: torch.Tensor, threshold: float
) -> bool:
    """Whether the mask of (L, L) low-res ``logits`` decoded on ``tile`` reaches one of the
    tile's edges that lie inside the (H, W) image: the object may go on past it, into the
    next tile, where this tile's mask cannot follow."""
    cell = tile.img_size // tile.lowres_size  # input pixels per low-res pixel
    rows, cols = (-(-side // cell) for side in tile.input_size)
    inside = logits[:rows, :cols] > threshold
    height, width = image_shape
    edges = (
        (tile.y0 > 0, inside[0]),
        (tile.y0 + tile.height < height, inside[-1]),
        (tile.x0 > 0, inside[:, 0]),
        (tile.x0 + tile.width < width, inside[:, -1]),
    )
    return any(inner and bool(line.any()) for inner, line in edges)


def _start_around(centre: float, size: int, length: int, step: int) -> int:
    """First pixel of ``size`` pixels centred on ``centre`` (to a multiple of ``step``),
    kept inside ``length`` pixels."""
    start = round((centre - (size - 1) / 2) / step) * step
    return int(min(max(start, 0), length - size))


def embed_view(
    sam: Sam, image_rgb: np.ndarray, tile: Tile, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Run the image encoder on one tile of a uint8 (H, W, 3) image.

    ``dtype`` (e.g. ``torch.bfloat16``) runs the encoder under autocast; None is fp32.
    Returns float32 (1, C, E, E) features on the model's device.
    """
    crop = tile.crop(image_rgb)
    if tile.input_size != crop.shape[:2]:  # ResizeLongestSide.apply_image, at least 1 x 1
        crop = np.array(resize(to_pil_image(crop), tile.input_size))
    with torch.inference_mode(), autocast(sam.device, dtype):
        return encode(sam, encoder_pixels(sam, crop), cuda_graph=True).float()


def encoder_pixels(sam: Sam, crop: np.ndarray) -> torch.Tensor:
    """``sam.preprocess`` of a uint8 (h, w, 3) ``crop`` (h, w <= the encoder's size S):
    float32 (1, 3, S, S), normalised by SAM's pixel mean and std and zero-padded right and
    bottom, channels-last as :func:`.fast_encoder.encode` takes it.

    One multiply-add per value, reading the crop's (h, w, 3) memory as a channels-last map,
    where the stock way made a channels-first copy, subtracted, divided, padded and was
    copied to channels-last (1024 x 1024 on a 2-core CPU: 5.3 -> 1.6 ms). Equal to
    ``sam.preprocess`` up to float32 rounding (x / std - mean / std).
    """
    size = sam.image_encoder.img_size
    height, width = crop.shape[:2]
    pixels = torch.as_tensor(np.ascontiguousarray(crop), device=sam.device)
    pixels = pixels.permute(2, 0, 1)[None]  # (1, 3, h, w), channels-last in memory
    scale, shift = 1 / sam.pixel_std, -sam.pixel_mean / sam.pixel_std  # (3, 1, 1)
    if (height, width) == (size, size):
        return torch.addcmul(shift, pixels, scale)
    out = pixels.new_zeros(1, 3, size, size, dtype=torch.float32)
    out = out.contiguous(memory_format=torch.channels_last)
    torch.addcmul(shift, pixels, scale, out=out[:, :, :height, :width])
    return out


def embed_tiles(
    sam: Sam,
    image_rgb: np.ndarray,
    tiles: tuple[Tile, ...],
    progress: ProgressCallback | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Embed every tile (autocast to ``dtype`` if given); float32 (n_tiles, C, E, E)."""
    features = []
    for i, tile in enumerate(tiles):
        features.append(embed_view(sam, image_rgb, tile, dtype))
        if progress is not None:
            progress(i + 1, len(tiles))
    return torch.cat(features)


def image_digest(image_rgb: np.ndarray) -> str:
    """Content hash of a normalised (H, W, 3) uint8 image (or any array: the trainer's float32
    encoder inputs), shape and dtype included."""
    digest = hashlib.sha256(repr((image_rgb.shape, str(image_rgb.dtype))).encode())
    digest.update(np.ascontiguousarray(image_rgb).data)
    return digest.hexdigest()


def embedding_key(image_hash: str, model_id: str, grid: TileGrid, view: str) -> str:
    """Cache key of one image's embeddings; ``view`` is "tiles", "overview" or a view made
    for a prompt (:func:`view_name`)."""
    text = f"{CACHE_FORMAT}|{CACHE_FORMAT_VERSION}|{image_hash}|{model_id}|{grid.describe()}|{view}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def view_name(tile: Tile) -> str:
    """The cache key's name of a view made for a prompt: its place and size."""
    return f"view|{tile.y0}|{tile.x0}|{tile.height}|{tile.width}"
