"""Prompt segmentation with Segment Anything: embeddings once per image, then prompt -> mask.

:class:`Segmenter` normalises an image with :func:`~napari_samtune.core.images.to_sam_rgb`,
embeds it once (tiled when larger than the model input, see
:mod:`napari_samtune.core.embeddings`; cached on disk), and answers prompts with
the prompt encoder and mask decoder only. For an image that fits the model
input the masks are those of ``segment_anything.SamPredictor`` on the same
uint8 RGB image.

Coordinates are SAM's: (x, y) = (column, row) pixels of the original image,
pixel centres at integers; boxes are XYXY. Convert napari (row, col) data with
:func:`napari_samtune.core.coords.napari_to_sam` first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from napari_samtune.core.accelerate import autocast_dtype, use_fast_paths
from napari_samtune.core.devices import resolve_device
from napari_samtune.core.embeddings import (
    OVERVIEW,
    EmbeddingCache,
    ProgressCallback,
    Tile,
    TileGrid,
    TilingConfig,
    embed_tiles,
    embedding_key,
    image_digest,
)
from napari_samtune.core.fast_decoder import DecoderImage, decode_until_masks, decoder_image
from napari_samtune.core.heap import keep_freed_memory, tune_cpu_allocator
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.mask_windows import (
    LabelPainter,
    Window,
    reproject_logits,
    upscaled_window,
)
from napari_samtune.core.models import state_dict_digest
from napari_samtune.core.prompt_checks import (
    check_boxes,
    check_mask_input,
    check_point_labels,
    check_points,
)

if TYPE_CHECKING:
    from napari_samtune.core.automatic import AutoSegmentConfig

DECODER_VIEWS_KEPT = 4  # views whose decoder tokens stay in memory between prompts


@dataclass(frozen=True)
class Prediction:
    """One object predicted from one prompt."""

    mask: np.ndarray  # bool (H, W) at the original image resolution
    score: float  # the decoder's predicted IoU of ``mask``
    low_res_logits: np.ndarray  # float32 (1, L, L), L = img_size / 4; feed back as mask_input
    tile: int  # view that answered: tile index, or -1 for the whole-image overview


class Segmenter:
    """Segment one image at a time from point and box prompts.

    Args:
        model: a ``segment_anything.modeling.Sam`` (moved to ``device``, set to eval).
            Its weights must not change while this Segmenter is used.
        model_id: a stable id of the weights, part of the embedding cache key;
            None computes a content hash of the state dict once.
        device: "cpu", "cuda", a ``torch.device`` or "auto".
        cache_dir: embedding cache folder; default ``registry.cache_dir() / "embeddings"``.
        tiling: tile overlap for images larger than the model input (default 1/4 tile).
        use_disk_cache: False keeps embeddings in memory only.
        precision: compute precision of the image encoder: "auto" (bf16 where the
            hardware runs it fast: AVX-512 BF16/AMX CPUs, Ampere+ GPUs), "bf16", "fp16" or
            "fp32"; embeddings are stored in float32. Prompts are decoded in float32
            (cheap, and keeps masks closest to the reference) by
            :func:`~napari_samtune.core.fast_decoder.decode_prompts`. The encoder's
            attention always runs through the fused paths of ``core.fast_encoder`` (same
            math; the model's modules are switched in place). On CPU this also tunes the
            process's allocator once (``heap.tune_cpu_allocator``).
    """

    batch_size = 16  # prompts decoded (and upscaled) at once in batched calls

    def __init__(
        self,
        model: Sam,
        model_id: str | None = None,
        device: str | torch.device = "cpu",
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
        self.model = use_fast_paths(model.to(resolve_device(device)).eval())
        self.compute_dtype = autocast_dtype(self.model.device, precision)
        if self.model.device.type == "cpu":
            tune_cpu_allocator()
        self.tiling = tiling if tiling is not None else TilingConfig()
        self.cache = EmbeddingCache(cache_dir) if use_disk_cache else None
        self._model_id = model_id
        self._rgb: np.ndarray | None = None
        self._image_hash: str | None = None
        self._grid: TileGrid | None = None
        self._features: torch.Tensor | None = None
        self._overview: torch.Tensor | None = None
        self._last_view = 0
        self._decoder_images: dict[int, DecoderImage] = {}

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            # the id load_model gives user weights, so both paths share cache entries
            self._model_id = "weights-sha256-" + state_dict_digest(self.model.state_dict())
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
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        return self.grid.image_shape

    def set_image(
        self,
        image: np.ndarray,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Normalise and embed an image (or load its embeddings from the cache).

        Args:
            image: (H, W) or channelled image, any numeric dtype; see ``to_sam_rgb``.
            channel_axis, channels: passed to ``to_sam_rgb``.
            progress: called as ``progress(tiles_done, n_tiles)`` while embedding.
        """
        rgb = to_sam_rgb(image, channel_axis, channels)
        grid = TileGrid.for_image(rgb.shape[:2], self.img_size, self.tiling)
        digest = image_digest(rgb)
        if digest == self._image_hash and grid == self._grid:
            return  # the same image again: its embeddings are already in memory
        key = embedding_key(digest, self._embedding_id, grid, "tiles")
        features = self._load_or_embed(key, rgb, grid.tiles, progress)
        self._rgb, self._image_hash, self._grid = rgb, digest, grid
        self._features, self._overview, self._last_view = features, None, 0
        self._decoder_images = {}

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
        encoder = self.model.prompt_encoder
        expected = (len(tiles), encoder.embed_dim, *encoder.image_embedding_size)
        cached = self.cache.load(key, expected) if self.cache is not None else None
        if cached is not None:
            if progress is not None:
                progress(len(tiles), len(tiles))
            return cached.to(self.model.device)
        features = embed_tiles(self.model, rgb, tiles, progress, self.compute_dtype)
        if self.cache is not None:
            self.cache.save(key, features)
        return features

    def features(self, view: int) -> torch.Tensor:
        """(1, C, E, E) embedding of tile ``view``, or of the overview (-1, computed on demand)."""
        if view != OVERVIEW:
            return self._require_features()[view : view + 1]
        if self._overview is None:
            key = embedding_key(self._image_hash, self._embedding_id, self.grid, "overview")
            self._overview = self._load_or_embed(key, self._rgb, (self.grid.overview,), None)
        return self._overview

    def _require_features(self) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError("no image is set; call Segmenter.set_image(image) first")
        return self._features

    def decode(
        self,
        view: int,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes_xyxy: np.ndarray | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on one view for a batch of B prompts.

        Args:
            view: tile index, or -1 for the overview.
            points_xy: (B, N, 2) image (x, y); point_labels: (B, N), 1 = positive, 0 = negative.
            boxes_xyxy: (B, 4) image XYXY boxes.
            mask_input: (B, 1, L, L) logits in this view's frame.
            multimask: three candidates per prompt instead of one.
            min_iou: return only the prompts with a mask whose predicted IoU reaches this
                (their masks alone are upscaled: most of a pass's work).

        Returns:
            low-res logits (B, M, L, L) float32 and predicted IoU (B, M), M = 3 or 1; with
            ``min_iou``, of the prompts that pass it, in their order.
        """
        tile, device = self.grid.view(view), self.model.device
        coords = labels = boxes = None
        if points_xy is not None:
            coords = torch.as_tensor(
                tile.to_input_frame(points_xy), dtype=torch.float, device=device
            )
            labels = torch.as_tensor(point_labels, dtype=torch.int64, device=device)
        if boxes_xyxy is not None:
            corners = tile.to_input_frame(np.reshape(boxes_xyxy, (-1, 2, 2))).reshape(-1, 4)
            boxes = torch.as_tensor(corners, dtype=torch.float, device=device)
        with torch.inference_mode():
            image = self._decoder_image(view)
            decoded = decode_until_masks(
                self.model, image, coords, labels, boxes, mask_input, multimask
            )
            iou = decoded.iou.float()
            if min_iou is None:
                return decoded.logits().float(), iou
            rows = torch.nonzero((iou >= min_iou).any(dim=1))[:, 0]
            return decoded.logits(rows).float(), iou[rows]

    def _decoder_image(self, view: int) -> DecoderImage:
        """The view's embedding as decoder tokens; the last few views' are kept (41 MiB each).

        They hold projections by the decoder's weights, which a Segmenter never changes.
        """
        if view not in self._decoder_images:
            if len(self._decoder_images) >= DECODER_VIEWS_KEPT:  # a large image has many tiles
                self._decoder_images.pop(next(iter(self._decoder_images)))
            with torch.inference_mode():
                self._decoder_images[view] = decoder_image(
                    self.model, self.features(view), project_first_layer=True
                )
        return self._decoder_images[view]

    def upscale(self, view: int, lowres: torch.Tensor) -> torch.Tensor:
        """Low-res logits (B, L, L) -> logits (B, h, w) over the view's pixels.

        Equals ``Sam.postprocess_masks`` (skipping its second resize when it is the identity).
        """
        tile = self.grid.view(view)
        in_h, in_w = tile.input_size
        with torch.inference_mode():
            size = (self.img_size, self.img_size)
            logits = F.interpolate(lowres[:, None], size, mode="bilinear", align_corners=False)
            logits = logits[..., :in_h, :in_w]
            if (in_h, in_w) != (tile.height, tile.width):
                logits = F.interpolate(
                    logits, (tile.height, tile.width), mode="bilinear", align_corners=False
                )
        return logits[:, 0]

    def upscale_windows(self, view: int, lowres: torch.Tensor) -> list[Window]:
        """Per object of low-res logits (B, L, L): its upscaled logits over a window of the
        image outside of which no pixel is above the mask threshold.

        The same values as :meth:`upscale` inside the window, for less work (see
        :func:`~napari_samtune.core.mask_windows.upscaled_window`). Where the view's input
        frame is resized once more to the view (its size is not the model's input size),
        the whole view is upscaled and the window is the bounding box of the pixels above
        the threshold.
        """
        tile, threshold = self.grid.view(view), self.model.mask_threshold
        if tile.input_size != (tile.height, tile.width):
            full = self.upscale(view, lowres)
            return [Window(tile.y0, tile.x0, logits).trimmed(threshold) for logits in full]
        with torch.inference_mode():
            return [upscaled_window(logits, tile, self.img_size, threshold) for logits in lowres]

    def predict(
        self,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_input: np.ndarray | Prediction | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """One object from points and/or a box.

        Args:
            points_xy: (N, 2) image (x, y) points.
            point_labels: (N,) 1 = positive, 0 = negative; default all positive.
            box_xyxy: (4,) XYXY box; clipped to the image.
            mask_input: a previous :class:`Prediction` (or its ``low_res_logits``; a bare
                array is taken to come from the previous ``predict`` call) to refine.
            multimask: decode three candidates and return the one with the highest
                predicted IoU (good for a single click).
        """
        shape = self.image_shape
        points = None if points_xy is None else check_points(points_xy, shape)
        labels = None if points is None else check_point_labels(point_labels, len(points))
        box = None if box_xyxy is None else check_boxes(box_xyxy, shape, "box_xyxy", single=True)
        if points is None and box is None:
            raise ValueError("predict needs a prompt: pass points_xy and/or box_xyxy")
        corners = [c for c in (points, None if box is None else box.reshape(2, 2)) if c is not None]
        view = self.grid.choose_tile(np.concatenate(corners))
        low, iou = self.decode(
            view,
            None if points is None else points[None],
            None if labels is None else labels[None],
            box,
            self._mask_input_for(view, mask_input),
            multimask,
        )
        best = int(torch.argmax(iou[0]))
        logits = low[0, best : best + 1]
        (window,) = self.upscale_windows(view, logits)
        mask = np.zeros(shape, dtype=bool)
        window.above(self.model.mask_threshold, out=mask[window.region])
        self._last_view = view
        return Prediction(mask, float(iou[0, best]), logits.float().cpu().numpy(), view)

    def _mask_input_for(
        self, view: int, mask_input: np.ndarray | Prediction | None
    ) -> torch.Tensor | None:
        """(1, 1, L, L) mask input in ``view``'s frame, re-projected if it came from another."""
        if mask_input is None:
            return None
        if isinstance(mask_input, Prediction):
            source, logits = mask_input.tile, mask_input.low_res_logits
        else:
            source, logits = self._last_view, mask_input
        side = self.grid.view(view).lowres_size
        logits = torch.as_tensor(check_mask_input(logits, side), device=self.model.device)[None]
        if source == view:
            return logits
        return reproject_logits(logits, self.grid.view(source), self.grid.view(view))

    def predict_boxes(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """One object per box; returns uint32 (H, W) labels, box ``i`` -> id ``i + 1``.

        Where objects overlap, the pixel goes to the object with the larger logit.
        An object whose mask comes out empty leaves its id unused.
        """
        boxes = check_boxes(boxes_xyxy, self.image_shape, "boxes_xyxy")
        views = np.array([self.grid.choose_tile(b.reshape(2, 2)) for b in boxes])
        painter = LabelPainter(self.image_shape, self.model.mask_threshold)
        for view, chunk in self._batches_by_view(views):
            low, _ = self.decode(view, boxes_xyxy=boxes[chunk])
            painter.paint(self.upscale_windows(view, low[:, 0]), chunk + 1)
        return painter.labels

    def predict_points_batched(self, points_xy: np.ndarray, multimask: bool = True) -> np.ndarray:
        """One object per positive point; returns uint32 (H, W) labels, point ``i`` -> id ``i + 1``.

        Each point is decoded on its own (multimask: best predicted IoU of three).
        """
        points = check_points(points_xy, self.image_shape)
        views = np.array([self.grid.choose_tile(p) for p in points])
        painter = LabelPainter(self.image_shape, self.model.mask_threshold)
        for view, chunk in self._batches_by_view(views):
            labels = np.ones((len(chunk), 1), dtype=np.int64)
            low, iou = self.decode(view, points[chunk][:, None], labels, multimask=multimask)
            best = low[torch.arange(len(chunk)), torch.argmax(iou, dim=1)]
            painter.paint(self.upscale_windows(view, best), chunk + 1)
        return painter.labels

    def _batches_by_view(self, views: np.ndarray):
        """Yield (view, prompt indices) in chunks of ``batch_size``, grouped by view; with the
        allocator set for batch work meanwhile where there is more than one chunk (for one,
        the settings' switch and the final trim cost more than they save: 2 boxes took 43
        instead of 28 ms, and the next prompt 20 instead of 14 ms)."""
        with self.batch_memory() if len(views) > self.batch_size else nullcontext():
            for view in np.unique(views):
                indices = np.flatnonzero(views == view)
                for start in range(0, len(indices), self.batch_size):
                    yield int(view), indices[start : start + self.batch_size]

    def batch_memory(self) -> AbstractContextManager:
        """Allocator settings for batched decoding: :func:`.heap.keep_freed_memory` on the CPU.

        200 boxes on a 1024 px image with vit_t: 4.1-4.2 s and 1.2M page faults before, 3.1-3.2
        s and 49k with it.
        """
        return keep_freed_memory() if self.model.device.type == "cpu" else nullcontext()

    def segment_all(
        self,
        config: AutoSegmentConfig | None = None,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Automatic segmentation of the current image; uint32 (H, W) labels, ids 1..N.

        See :func:`napari_samtune.core.automatic.segment_automatic`.
        """
        from napari_samtune.core.automatic import AutoSegmentConfig, segment_automatic

        return segment_automatic(self, config or AutoSegmentConfig(), progress)
