"""One training or validation pass of SAM over patches: inputs, prompts, iterative correction.

Frames (all (x, y) points / XYXY boxes, as in :mod:`napari_samtune.core.prompts`):

* the *patch* frame: pixels of the (h, w) patch;
* the *input* frame: the patch resized so its longest side is the model's
  ``img_size`` (``ResizeLongestSide``, as ``SamPredictor`` and the Segmenter do
  for an image of that size), padded bottom/right to ``img_size`` squared;
* the *low-res* frame: the decoder's (L, L) logits, L = img_size / 4, covering
  the padded input.

The loss is computed on the low-res grid against the object masks carried into
that frame (resize, pad, 4x4 average: soft borders); validation IoU is computed
at the patch's own resolution, upsampling logits as inference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from napari_samtune.core.fast_decoder import decode_prompts, decoder_image
from napari_samtune.core.fast_encoder import encode
from napari_samtune.core.losses import hard_truth, sam_loss
from napari_samtune.core.patches import TrainingPatch
from napari_samtune.core.prompts import (
    bounding_box,
    corrective_points,
    jitter_box,
    sample_points,
)

LOWRES_FACTOR = 4  # the decoder's low-res logits have 4x the embedding grid's side


@dataclass(frozen=True)
class PatchInput:
    """One patch ready for SAM: pixels, object targets and the first prompts."""

    key: tuple[int, int, int, int]  # TrainingPatch.key
    pixels: torch.Tensor | None  # float32 (3, S, S) as Sam.preprocess; None: embedding cached
    input_size: tuple[int, int]  # (rows, cols) of the resized patch inside the input
    original_size: tuple[int, int]  # (h, w) of the patch
    masks: np.ndarray  # bool (n, h, w): the objects, patch frame
    targets: torch.Tensor  # float32 (n, 1, L, L) in [0, 1], low-res frame
    points: torch.Tensor | None = None  # float32 (n, k, 2) first point prompts, input frame
    point_labels: torch.Tensor | None = None  # int64 (n, k): 1 positive, 0 negative, -1 pad
    boxes: torch.Tensor | None = None  # float32 (n, 4) first box prompts, input frame
    multimask: bool = False  # first pass predicts 3 candidates (ambiguous single point)


def to_input_frame(coords: np.ndarray, original: tuple[int, int], inp: tuple[int, int]):
    """Scale (..., 2) patch-frame (x, y) into the input frame (``apply_coords``)."""
    return np.asarray(coords, dtype=np.float64) * (inp[1] / original[1], inp[0] / original[0])


def prepare_input(
    sam: Sam,
    patch: TrainingPatch,
    object_ids: np.ndarray,
    device: torch.device,
    with_pixels: bool = True,
) -> PatchInput:
    """Pixels and targets of ``patch`` for the objects ``object_ids`` (no prompts yet).

    ``with_pixels=False`` leaves ``pixels`` None: the patch's embedding is known already.
    """
    img_size = sam.image_encoder.img_size
    height, width = patch.labels.shape
    input_size = ResizeLongestSide.get_preprocess_shape(height, width, img_size)
    pixels = _pixels(sam, patch.rgb, input_size, device) if with_pixels else None
    object_ids = np.asarray(object_ids, dtype=patch.labels.dtype)
    masks = masks_of(patch.labels, object_ids)
    if object_ids.size == 0:  # the patch's frame only (validation makes masks chunk by chunk)
        side = img_size // LOWRES_FACTOR
        targets = torch.zeros((0, 1, side, side), device=device)
    else:
        targets = lowres_targets(patch.labels, object_ids, input_size, img_size, device)
    return PatchInput(patch.key, pixels, input_size, (height, width), masks, targets)


def masks_of(labels: np.ndarray, object_ids: np.ndarray) -> np.ndarray:
    """bool (n, h, w): the objects ``object_ids`` of (h, w) ``labels``."""
    return labels[None] == np.asarray(object_ids, dtype=labels.dtype)[:, None, None]


def lowres_targets(
    labels: np.ndarray,
    object_ids: np.ndarray,
    input_size: tuple[int, int],
    img_size: int,
    device: torch.device,
) -> torch.Tensor:
    """The objects' masks in the low-res frame: float32 (n, 1, L, L), L = img_size / 4.

    Each mask is resized to ``input_size`` (bilinear), padded to ``img_size`` and averaged
    over 4 x 4 blocks. Where no resize is needed (patches of the model's input size) only
    the blocks of each object's bounding box are computed, on the host: at 50 objects of a
    1024 x 1024 patch this took 0.3 s as full-size float masks, which a GPU step then also
    waited for and copied (200 MB), and takes a few ms. Else the masks are made on
    ``device`` from the labels. Both give the same values (multiples of 1/16 without
    resizing).
    """
    if (object_ids == 0).any():
        raise ValueError("object id 0 is the background, not an object")
    if input_size != labels.shape:
        ids = torch.as_tensor(object_ids.astype(np.int64), device=device)
        pixels = torch.as_tensor(labels.astype(np.int64), device=device)
        masks = (pixels[None, None] == ids[:, None, None, None]).float()
        masks = F.interpolate(masks, input_size, mode="bilinear", align_corners=False)
        masks = F.pad(masks, (0, img_size - input_size[1], 0, img_size - input_size[0]))
        return F.avg_pool2d(masks, LOWRES_FACTOR)
    side, block = img_size // LOWRES_FACTOR, LOWRES_FACTOR
    targets = np.zeros((len(object_ids), side, side), dtype=np.float32)
    boxes = ndimage.find_objects(labels, max_label=int(object_ids.max(initial=0)))
    for k, object_id in enumerate(object_ids.tolist()):
        box = boxes[object_id - 1]
        if box is None:  # not in the patch: an empty target
            continue
        rows, cols = (range(s.start // block, -(-s.stop // block)) for s in box)
        crop = labels[
            rows.start * block : rows.stop * block, cols.start * block : cols.stop * block
        ]
        inside = np.zeros((len(rows) * block, len(cols) * block), dtype=np.float32)
        inside[: crop.shape[0], : crop.shape[1]] = crop == object_id  # zeros: the padding
        blocks = inside.reshape(len(rows), block, len(cols), block).mean(axis=(1, 3))
        targets[k, rows.start : rows.stop, cols.start : cols.stop] = blocks
    return torch.as_tensor(targets[:, None], device=device)


def _pixels(sam: Sam, rgb: np.ndarray, input_size: tuple[int, int], device) -> torch.Tensor:
    if input_size != rgb.shape[:2]:
        rgb = ResizeLongestSide(sam.image_encoder.img_size).apply_image(rgb)
    pixels = torch.as_tensor(np.ascontiguousarray(rgb), device=device).permute(2, 0, 1)
    return sam.preprocess(pixels.float())


def with_first_prompts(inp: PatchInput, rng: np.random.Generator, box_jitter: float) -> PatchInput:
    """Add the first prompts: jittered boxes, or one positive point each (coin flip)."""
    shape, device = inp.original_size, inp.targets.device
    if rng.random() < 0.5:
        boxes = np.stack([jitter_box(bounding_box(m), rng, box_jitter, shape) for m in inp.masks])
        boxes = to_input_frame(boxes.reshape(-1, 2, 2), shape, inp.input_size).reshape(-1, 4)
        box_tensor = torch.as_tensor(boxes, dtype=torch.float32, device=device)
        return _replace(inp, boxes=box_tensor)
    picked = [sample_points(m, 1, 0, rng) for m in inp.masks]
    points = to_input_frame(np.stack([p for p, _ in picked]), shape, inp.input_size)
    labels = np.stack([lab for _, lab in picked])
    return _replace(
        inp,
        points=torch.as_tensor(points, dtype=torch.float32, device=device),
        point_labels=torch.as_tensor(labels, dtype=torch.int64, device=device),
        multimask=True,
    )


def _replace(inp: PatchInput, **changes) -> PatchInput:
    return PatchInput(**{**inp.__dict__, **changes})


def decode(
    sam: Sam,
    embedding: torch.Tensor,
    points: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for n objects of one (1, C, E, E) embedding.

    Returns low-res logits (n, k, L, L) and predicted IoUs (n, k), k = 3 or 1.
    """
    sparse, dense = sam.prompt_encoder(
        points=None if points is None else (points, point_labels),
        boxes=boxes,
        masks=mask_input,
    )
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _lowres_valid(inp: PatchInput) -> tuple[int, int]:
    """Rows and columns of the low-res grid covered by the (unpadded) patch."""
    return tuple(-(-s // LOWRES_FACTOR) for s in inp.input_size)


def _next_click(logits: torch.Tensor, inp: PatchInput) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrective points (n, 1, 2) in the input frame and labels (n, 1) from low-res errors."""
    rows, cols = _lowres_valid(inp)
    prediction = (logits[:, 0, :rows, :cols] > 0).cpu().numpy()
    truth = hard_truth(inp.targets[:, 0, :rows, :cols]).cpu().numpy()
    points, labels = corrective_points(prediction, truth)
    points = points * LOWRES_FACTOR + (LOWRES_FACTOR - 1) / 2  # low-res pixel -> its centre
    device = logits.device
    return (
        torch.as_tensor(points[:, None], dtype=torch.float32, device=device),
        torch.as_tensor(labels[:, None], dtype=torch.int64, device=device),
    )


def _append(points, labels, new_points, new_labels):
    if points is None:
        return new_points, new_labels
    return torch.cat([points, new_points], dim=1), torch.cat([labels, new_labels], dim=1)


class SamTrainingStep(nn.Module):
    """Loss of a batch of patches, as one module (so DistributedDataParallel can wrap it).

    ``forward`` runs the encoder (unless embeddings are given: frozen encoder),
    then per patch the decoder on the first prompts and ``n_iterative_prompts``
    times more, each time adding a corrective click and feeding back the previous
    low-res logits as mask input. The loss is averaged over passes and patches.
    ``fast`` decodes with :func:`~napari_samtune.core.fast_decoder.decode_prompts`
    (same parameters and result as the stock modules, far less work per pass).
    """

    def __init__(
        self, sam: Sam, n_iterative_prompts: int, mask_loss: str, fast: bool = True
    ) -> None:
        super().__init__()
        self.sam = sam
        self.n_iterative_prompts = n_iterative_prompts
        self.mask_loss = mask_loss
        self.fast = fast

    def forward(
        self, inputs: list[PatchInput], embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        if embeddings is None:
            embeddings = encode(self.sam, torch.stack([i.pixels for i in inputs]))
        losses = [self._patch_loss(embeddings[i : i + 1], inp) for i, inp in enumerate(inputs)]
        return torch.stack(losses).mean()

    def _patch_loss(self, embedding: torch.Tensor, inp: PatchInput) -> torch.Tensor:
        points, labels, mask_input = inp.points, inp.point_labels, None
        multimask, total = inp.multimask, 0.0
        run, image = decoder_for(self.sam, embedding, self.fast)  # image: once for all passes
        for iteration in range(1 + self.n_iterative_prompts):
            logits, iou = run(self.sam, image, points, labels, inp.boxes, mask_input, multimask)
            loss, best = sam_loss(logits, iou, inp.targets, self.mask_loss)
            total = total + loss
            if iteration == self.n_iterative_prompts:
                break
            chosen = logits[torch.arange(len(best), device=logits.device), best][:, None]
            points, labels = _append(points, labels, *_next_click(chosen.detach(), inp))
            mask_input, multimask = chosen.detach(), False
        return total / (1 + self.n_iterative_prompts)


def decoder_for(sam: Sam, embedding: torch.Tensor, fast: bool):
    """The decode function and what it takes as the image: fast tokens or the stock embedding."""
    return (decode_prompts, decoder_image(sam, embedding)) if fast else (decode, embedding)
