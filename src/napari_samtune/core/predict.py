"""Prompt segmentation with Segment Anything: embeddings once per image, then prompt -> mask.

:class:`Segmenter` normalises an image with :func:`~napari_samtune.core.images.to_sam_rgb`,
embeds it once (tiled when larger than the model input, see
:mod:`napari_samtune.core.embeddings`; cached on disk), and answers prompts with
the prompt encoder and mask decoder only. For an image that fits the model
input the masks are those of ``segment_anything.SamPredictor`` on the same
uint8 RGB image. The work on one view (tile or overview) of the image is in
:class:`~napari_samtune.core.view_predictor.ViewPredictor`; here each prompt is given the
view that sees it best, and the views' masks become objects and label images.

Coordinates are SAM's: (x, y) = (column, row) pixels of the original image,
pixel centres at integers; boxes are XYXY. Convert napari (row, col) data with
:func:`napari_samtune.core.coords.napari_to_sam` first.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from napari_samtune.core.embeddings import ProgressCallback, Tile
from napari_samtune.core.heap import keep_freed_memory
from napari_samtune.core.mask_windows import LabelPainter, reproject_logits
from napari_samtune.core.prompt_checks import (
    check_boxes,
    check_mask_input,
    check_point_labels,
    check_points,
)
from napari_samtune.core.view_predictor import ViewPredictor

if TYPE_CHECKING:
    from napari_samtune.core.automatic import AutoSegmentConfig


@dataclass(frozen=True)
class Prediction:
    """One object predicted from one prompt."""

    mask: np.ndarray  # bool (H, W) at the original image resolution
    score: float  # the decoder's predicted IoU of ``mask``
    low_res_logits: np.ndarray  # float32 (1, L, L), L = img_size / 4; feed back as mask_input
    tile: int  # view that answered: tile index, view made for the prompt, or -1 (overview)
    image_digest: str = ""  # of the image it was predicted on; a mask_input must match
    # the rectangle that view saw: the made views are numbered anew when an image is set
    # again, so the number alone put a mask_input in another view's frame, or none
    view: Tile | None = None


def _check_multimask(multimask: object, allowed: str) -> None:
    """``TypeError`` for a multimask that is no bool: "no" would be read as True."""
    if not isinstance(multimask, (bool, np.bool_)):
        raise TypeError(f"multimask={multimask!r}; pass {allowed}")


def _no_prompts(prompts: object, width: int) -> bool:
    """``prompts`` is None or an empty (0, ``width``) array or list: a batch of nothing to
    segment, which was refused as not of shape (N, ``width``), e.g. for an image where a
    detector found nothing (None, :meth:`Segmenter.predict`'s "none", was called NaN)."""
    if prompts is None:
        return True
    try:
        shape = np.shape(prompts)
    except (TypeError, ValueError):  # ragged lists: for the checks to name
        return False
    return shape in ((0,), (0, width))


class Segmenter(ViewPredictor):
    """Segment one image at a time from point and box prompts.

    It holds one current image (as ``SamPredictor`` does): threads that segment different
    images at once need a Segmenter each (they may share the model); one shared Segmenter
    answers a thread's prompts on whichever image another thread set last.

    Args:
        model: a ``segment_anything.modeling.Sam`` (moved to ``device``, set to eval).
            Its weights must not change while this Segmenter is used.
        model_id: a stable id of the weights, part of the embedding cache key;
            None computes a content hash of the state dict once.
        device: "cpu", "cuda", a ``torch.device`` or "auto" (CUDA when available, else
            Apple's MPS, else the CPU); None (default): the device ``model`` is on, e.g. the
            one ``load_model(..., device=...)`` put it on (it used to be moved to the CPU).
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

    def predict(
        self,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_input: np.ndarray | Prediction | None = None,
        multimask: bool | None = None,
    ) -> Prediction:
        """One object from points and/or a box.

        Args:
            points_xy: (N, 2) image (x, y) points; None or empty ((0, 2), []): none.
            point_labels: (N,) 1 = positive, 0 = negative; default all positive.
            box_xyxy: (4,) XYXY box; clipped to the image; None or empty: none.
            mask_input: a previous :class:`Prediction` (or its ``low_res_logits``; a bare
                array is taken to come from the previous ``predict`` call) to refine.
            multimask: decode three candidates and return the one with the highest
                predicted IoU; None (default): for a single point without a box, which is
                ambiguous (a part or the whole?), as the annotation widget and
                ``samtune segment`` do.
        """
        shape = self.image_shape
        if _no_prompts(points_xy, 2) and _no_prompts(point_labels, 1):  # [] beside a box
            points_xy = point_labels = None
        points = None if points_xy is None else check_points(points_xy, shape)
        labels = check_point_labels(point_labels, None if points is None else len(points))
        box_xyxy = None if _no_prompts(box_xyxy, 4) else box_xyxy
        box = None if box_xyxy is None else check_boxes(box_xyxy, shape, "box_xyxy", single=True)
        if points is None and box is None:
            raise ValueError("predict needs a prompt: pass points_xy and/or box_xyxy")
        if multimask is None:
            multimask = box is None and points is not None and len(points) == 1
        _check_multimask(multimask, "True, False or None (SAM's choice per prompt)")
        corners = [c for c in (points, None if box is None else box.reshape(2, 2)) if c is not None]
        coords = np.concatenate(corners)

        def decoded(view: int) -> tuple[torch.Tensor, torch.Tensor]:
            self.require_embedded([view])
            return self.decode(
                view,
                None if points is None else points[None],
                None if labels is None else labels[None],
                box,
                self._mask_input_for(view, mask_input),
                multimask,
                best_only=True,
            )

        view = self.view_for(coords)
        low, iou = decoded(view)
        wider = self.view_past_cut(view, coords, low[0, 0])
        if wider is not None:  # cut at the tile's edge: again, on a view centred on it
            view = wider
            low, iou = decoded(view)
        logits = low[0]
        (window,) = self.upscale_windows(view, logits)
        mask = np.zeros(shape, dtype=bool)
        window.above(self.model.mask_threshold, out=mask[window.region])
        self._last_view = view
        logits = logits.float().cpu().numpy()
        return Prediction(
            mask, float(iou[0, 0]), logits, view, self._image_hash, self.view_tile(view)
        )

    def _mask_input_for(
        self, view: int, mask_input: np.ndarray | Prediction | None
    ) -> torch.Tensor | None:
        """(1, 1, L, L) mask input in ``view``'s frame, re-projected if it came from another."""
        if mask_input is None:
            return None
        if isinstance(mask_input, Prediction):
            if mask_input.image_digest != self._image_hash:
                raise ValueError(
                    "mask_input is a Prediction of another image (set_image was called "
                    "since); refine a Prediction of the current image, or pass None"
                )
            source = mask_input.view or self.view_tile(mask_input.tile)
            logits = mask_input.low_res_logits
        else:
            source, logits = self.view_tile(self._last_view), mask_input
        target = self.view_tile(view)
        logits = torch.as_tensor(
            check_mask_input(logits, target.lowres_size), device=self.model.device
        )[None]
        if source == target:
            return logits
        return reproject_logits(logits, source, target)

    def predict_boxes(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """One object per box; returns uint32 (H, W) labels, box ``i`` -> id ``i + 1``.

        Where objects overlap, the pixel goes to the object with the larger logit.
        An object whose mask comes out empty leaves its id unused. No boxes ((0, 4), e.g. a
        detector's for an image without objects) give labels without an object.
        """
        if _no_prompts(boxes_xyxy, 4):
            return np.zeros(self.image_shape, dtype=np.uint32)
        boxes = check_boxes(boxes_xyxy, self.image_shape, "boxes_xyxy")
        views = np.array([self.view_for(b.reshape(2, 2)) for b in boxes])
        self.require_embedded(views.tolist())
        painter = LabelPainter(self.image_shape, self.model.mask_threshold)
        for view, chunk in self._batches_by_view(views):
            low, _ = self.decode(view, boxes_xyxy=boxes[chunk])
            painter.paint(self.upscale_windows(view, low[:, 0]), chunk + 1)
        return painter.labels

    def predict_points_batched(self, points_xy: np.ndarray, multimask: bool = True) -> np.ndarray:
        """One object per positive point; returns uint32 (H, W) labels, point ``i`` -> id ``i + 1``.

        Each point is decoded on its own (multimask: best predicted IoU of three). No points
        ((0, 2)) give labels without an object.
        """
        _check_multimask(multimask, "True or False")
        if _no_prompts(points_xy, 2):
            return np.zeros(self.image_shape, dtype=np.uint32)
        points = check_points(points_xy, self.image_shape)
        painter = LabelPainter(self.image_shape, self.model.mask_threshold)
        objects = np.arange(len(points))
        views = np.array([self.view_for(p) for p in points])
        for again_on_made_views in (False, True):  # then those cut at a tile's edge
            self.require_embedded(views.tolist())
            again: list[tuple[int, int]] = []  # (object, its view centred on it)
            for view, chunk in self._batches_by_view(views):
                ids, labels = objects[chunk], np.ones((len(chunk), 1), dtype=np.int64)
                low, _ = self.decode(view, points[ids][:, None], labels, multimask=multimask,
                                     best_only=True)  # fmt: skip
                wider = [
                    None if again_on_made_views else self.view_past_cut(view, points[i], low[j, 0])
                    for j, i in enumerate(ids)
                ]
                kept = np.flatnonzero([other is None for other in wider])
                if len(kept):
                    painter.paint(self.upscale_windows(view, low[kept, 0]), ids[kept] + 1)
                again += [(i, v) for i, v in zip(ids, wider, strict=True) if v is not None]
            objects = np.array([i for i, _ in again], dtype=np.int64)
            views = np.array([v for _, v in again], dtype=np.int64)
        return painter.labels

    def predict_with_negatives(
        self, boxes_xyxy: np.ndarray, points_xy: np.ndarray, negatives_xy: np.ndarray
    ) -> np.ndarray:
        """One object per box and per positive point, each prompted with the negative points
        in its view too (they mark background for all; on a large image, those in another
        part of it are not the object's, see :meth:`within_view_of`); uint32 (H, W) labels,
        boxes first: box
        ``i`` -> id ``i + 1``, point ``j`` -> id ``len(boxes) + j + 1``. Where objects
        overlap the larger logit wins, as in :meth:`predict_boxes` (the first prompt took
        every pixel it shared with a later one). Each of the three may be empty ((0, 4),
        (0, 2)): without negatives, boxes give :meth:`predict_boxes`' objects."""
        shape = self.image_shape
        boxes = np.zeros((0, 4)) if _no_prompts(boxes_xyxy, 4) else check_boxes(boxes_xyxy, shape)
        points = np.zeros((0, 2)) if _no_prompts(points_xy, 2) else check_points(points_xy, shape)
        negatives = (
            np.zeros((0, 2))
            if _no_prompts(negatives_xy, 2)
            else check_points(negatives_xy, shape, "negatives_xy")
        )
        objects = [(np.zeros((0, 2)), box) for box in boxes] + [(p[None], None) for p in points]
        painter = LabelPainter(self.image_shape, self.model.mask_threshold)
        for object_id, (positive, box) in enumerate(objects, start=1):
            near = self.within_view_of(positive if box is None else box.reshape(2, 2), negatives)
            prompt_xy = np.vstack([positive, near])
            labels = np.r_[np.ones(len(positive)), np.zeros(len(near))].astype(np.int64)
            corners = prompt_xy if box is None else np.vstack([prompt_xy, box.reshape(2, 2)])
            view = self.view_for(corners)
            self.require_embedded([view])
            points_in, labels_in = (prompt_xy[None], labels[None]) if len(labels) else (None, None)
            # a lone point is ambiguous: the best of three, as predict_points_batched (0.96
            # and 0.67 there, 0.41 and 0.23 as one mask, once a far negative chose this path)
            lone = box is None and len(labels) == 1
            low, _ = self.decode(view, points_in, labels_in, box, multimask=lone, best_only=True)
            painter.paint(self.upscale_windows(view, low[:, 0]), [object_id])
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

        ``config`` defaults to :func:`~napari_samtune.core.automatic.default_auto_config`
        for this model's input size (SAM's settings, or looser ones for nano-sized models,
        with which SAM's keep few objects), as the widget and ``samtune segment --auto`` use.
        See :func:`napari_samtune.core.automatic.segment_automatic`.
        """
        from napari_samtune.core.automatic import default_auto_config, segment_automatic

        return segment_automatic(self, config or default_auto_config(self.img_size), progress)
