"""Validation during training: box- and point-prompt IoU / Dice of every object of the
validation patches, at the patch's own resolution (logits upsampled as inference does).

Objects are decoded, and their masks made, :data:`VAL_CHUNK` at a time: a patch of
thousands of nuclei used to get all its full-size masks (and low-res targets, which
validation does not use) at once, 13 GB for 2,000 objects of a 1024 x 1024 patch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch
from scipy import ndimage
from segment_anything.modeling import Sam

from napari_samtune.core.fast_encoder import encode
from napari_samtune.core.patches import TrainingPatch
from napari_samtune.core.prompts import bounding_box, interior_point
from napari_samtune.core.train_step import (
    PatchInput,
    decoder_for,
    masks_of,
    prepare_input,
    to_input_frame,
)

VAL_CHUNK = 32  # objects decoded at once during validation
# How validation scores, kept in checkpoints: 2 scores each object once, in the tile with
# most of it, and leaves out objects a single image's split cuts (1, before 2026-12-07:
# each piece in every tile). A run resumed from a checkpoint scored otherwise chooses its
# best epoch anew: its new scores were compared with old ones (0.897 against 0.835 for
# the same weights), and called better.
VALIDATION_SCORING = 2


def object_prompts(
    labels: np.ndarray, object_ids: np.ndarray, found: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact XYXY boxes (n, 4) and interior (x, y) points (n, 2), float64, patch frame, of
    the objects ``object_ids`` of (h, w) ``labels``; each from the object's own crop
    (``found``: ``ndimage.find_objects(labels)``, where the caller has it already)."""
    boxes, points = np.zeros((len(object_ids), 4)), np.zeros((len(object_ids), 2))
    if found is None:
        found = ndimage.find_objects(labels, max_label=int(np.max(object_ids, initial=0)))
    for k, object_id in enumerate(np.asarray(object_ids).tolist()):
        crop = found[object_id - 1]
        if crop is None:
            raise ValueError(f"object {object_id} is not in the patch; validation needs it")
        offset = np.array([crop[1].start, crop[0].start], dtype=np.float64)
        mask = labels[crop] == object_id
        boxes[k] = bounding_box(mask) + np.tile(offset, 2)
        points[k] = interior_point(mask) + offset
    return boxes, points


@torch.no_grad()
def validation_sums(
    sam: Sam,
    embedding: torch.Tensor,
    inp: PatchInput,
    labels: np.ndarray,
    object_ids: np.ndarray,
    fast: bool = True,
) -> np.ndarray:
    """Box- and point-prompt quality of the objects ``object_ids`` of a validation patch
    (``inp``: its frame and sizes; ``labels``: its (h, w) instance labels).

    Box prompts are the objects' exact boxes (single mask output); point prompts
    one positive click at each object's interior centre, answered with three
    candidates of which the one with the highest predicted IoU is kept (how a
    single click is answered at inference).

    Returns:
        float64 (5,): sums of IoU (box), IoU (point), Dice (box), Dice (point), and
        the number of objects; sums, so they add up across patches and ranks.
    """
    shape, size = inp.original_size, inp.input_size
    sums = np.zeros(5)
    device = embedding.device
    run, image = decoder_for(sam, embedding, fast)
    found = ndimage.find_objects(labels, max_label=int(np.max(object_ids, initial=0)))
    for start in range(0, len(object_ids), VAL_CHUNK):
        ids = object_ids[start : start + VAL_CHUNK]
        boxes, points = object_prompts(labels, ids, found)
        boxes = to_input_frame(boxes.reshape(-1, 2, 2), shape, size).reshape(-1, 4)
        points = to_input_frame(points[:, None], shape, size)
        truth = torch.as_tensor(masks_of(labels, ids), device=device)
        box = torch.as_tensor(boxes, dtype=torch.float32, device=device)
        logits, _ = run(sam, image, None, None, box, None, False)
        box_iou, box_dice = _iou_dice(_upsample(sam, logits, inp)[:, 0], truth)
        point = torch.as_tensor(points, dtype=torch.float32, device=device)
        ones = torch.ones(point.shape[:2], dtype=torch.int64, device=device)
        logits, scores = run(sam, image, point, ones, None, None, True)
        chosen = logits[torch.arange(len(point), device=device), scores.argmax(dim=1)]
        point_iou, point_dice = _iou_dice(_upsample(sam, chosen[:, None], inp)[:, 0], truth)
        sums += [t.sum().item() for t in (box_iou, point_iou, box_dice, point_dice)] + [len(truth)]
    return sums


def validate_patches(
    sam: Sam,
    patches: Sequence[TrainingPatch],
    device: torch.device,
    frozen_embeddings: Callable[[list[PatchInput]], torch.Tensor | None],
    autocast: Callable[[], AbstractContextManager],
    fast: bool = True,
    is_cached: Callable[[tuple], bool] = lambda key: False,
    stop: Callable[[], bool] | None = None,
) -> np.ndarray | None:
    """:func:`validation_sums` over ``patches``, every object of each (model in eval mode).

    ``frozen_embeddings(inputs)`` returns cached embeddings, or None to run the encoder;
    ``is_cached(patch.key)`` says whether it has the patch's embedding (no pixels needed).
    ``stop()``, asked before each patch, ends the validation: then None is returned.
    """
    sums = np.zeros(5)
    no_objects = np.zeros(0, dtype=np.int64)
    with torch.no_grad():
        for patch in patches:
            if stop is not None and stop():
                return None
            pixels = not is_cached(patch.key)
            inp = prepare_input(sam, patch, no_objects, device, with_pixels=pixels)
            with autocast():
                embedding = frozen_embeddings([inp])
                if embedding is None:
                    embedding = encode(sam, inp.pixels[None])
                sums += validation_sums(sam, embedding, inp, patch.labels, patch.object_ids, fast)
    return sums


def metrics_from_sums(sums: np.ndarray) -> dict[str, float]:
    """Mean IoU / Dice per prompt kind from :func:`validation_sums` totals; val_iou averages
    the box and point IoU (the number that picks the best epoch)."""
    iou_box, iou_point, dice_box, dice_point, n = (float(v) for v in sums)
    n = max(n, 1.0)
    metrics = {
        "val_iou_box": iou_box / n,
        "val_iou_point": iou_point / n,
        "val_dice_box": dice_box / n,
        "val_dice_point": dice_point / n,
    }
    metrics["val_iou"] = (metrics["val_iou_box"] + metrics["val_iou_point"]) / 2
    return metrics


def _iou_dice(masks: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object IoU and Dice of bool (n, h, w) masks against bool (n, h, w) truth."""
    intersection, predicted, actual = map(_pixel_counts, (masks & truth, masks, truth))
    total = predicted + actual
    return intersection / (total - intersection).clamp(min=1), 2 * intersection / total.clamp(min=1)


def _pixel_counts(masks: torch.Tensor) -> torch.Tensor:
    """float32 (n,): the True pixels of each bool (n, h, w) mask. On the CPU through numpy's
    count_nonzero, mask by mask: 5 ms where torch's sum of bools took 85 ms for 18 masks of
    1024 x 1024 (a third of a validation patch's time)."""
    if masks.device.type != "cpu":
        return masks.sum(dim=(-2, -1)).float()
    return torch.tensor([np.count_nonzero(m) for m in masks.numpy()], dtype=torch.float32)


def _upsample(sam: Sam, logits: torch.Tensor, inp: PatchInput) -> torch.Tensor:
    """Low-res logits -> bool masks at the patch's resolution (``Sam.postprocess_masks``)."""
    return sam.postprocess_masks(logits.float(), inp.input_size, inp.original_size) > 0
