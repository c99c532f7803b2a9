"""Prompts decoded on one view of an image, and their masks upscaled to its pixels.

A mixin of :class:`~napari_samtune.core.view_predictor.ViewPredictor` (it uses its
``model``, ``img_size``, ``view_tile``, ``features`` and ``_decoder_images``); views are
explained there. Coordinates are SAM's: (x, y) image pixels, boxes XYXY.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_samtune.core.fast_decoder import DecoderImage, decode_until_masks, decoder_image
from napari_samtune.core.mask_windows import Window, upscaled_window

DECODER_VIEWS_KEPT = 4  # views whose decoder tokens stay in memory between prompts


class ViewDecodingMixin:
    """:meth:`decode` a batch of prompts on a view; :meth:`upscale` or
    :meth:`upscale_windows` its low-res logits."""

    def decode(
        self,
        view: int,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes_xyxy: np.ndarray | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
        min_iou: float | None = None,
        best_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on one view for a batch of B prompts.

        Args:
            view: a view index (:meth:`view_for`; -1 for the overview).
            points_xy: (B, N, 2) image (x, y); point_labels: (B, N), 1 = positive, 0 = negative.
            boxes_xyxy: (B, 4) image XYXY boxes.
            mask_input: (B, 1, L, L) logits in this view's frame.
            multimask: three candidates per prompt instead of one.
            min_iou: return only the prompts with a mask whose predicted IoU reaches this
                (their masks alone are upscaled: most of a pass's work).
            best_only: of the candidates, only the one with the highest predicted IoU per
                prompt (M = 1; only its mask is made).

        Returns:
            low-res logits (B, M, L, L) float32 and predicted IoU (B, M), M = 3 or 1; with
            ``min_iou``, of the prompts that pass it, in their order.
        """
        tile, device = self.view_tile(view), self.model.device
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
            if best_only:
                decoded = decoded.best()
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
        tile = self.view_tile(view)
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
        tile, threshold = self.view_tile(view), self.model.mask_threshold
        if tile.input_size != (tile.height, tile.width):
            full = self.upscale(view, lowres)
            return [Window(tile.y0, tile.x0, logits).trimmed(threshold) for logits in full]
        with torch.inference_mode():
            return [upscaled_window(logits, tile, self.img_size, threshold) for logits in lowres]
