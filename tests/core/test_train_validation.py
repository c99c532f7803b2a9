"""Validation during training decodes, and makes the masks of, a chunk of objects at a time:
a patch of many objects no longer holds all their full-size masks at once."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch

from napari_samtune.core.patches import TrainingPatch
from napari_samtune.core.prompts import bounding_box, interior_point
from napari_samtune.core.train_step import decoder_for, prepare_input, to_input_frame
from napari_samtune.core.train_validation import (
    VAL_CHUNK,
    _iou_dice,
    _upsample,
    object_prompts,
    validate_patches,
)


def _grid_labels(side: int, cell: int) -> np.ndarray:
    """(side, side) labels: squares of cell - 2 px on a grid, ids 1..n row by row, and a
    U-shaped object in the first cell (its interior point is not its centre)."""
    labels = np.zeros((side, side), dtype=np.uint32)
    n = side // cell
    for k in range(n * n):
        row, col = divmod(k, n)
        labels[row * cell + 1 : (row + 1) * cell - 1, col * cell + 1 : (col + 1) * cell - 1] = k + 1
    labels[3 : cell - 4, cell // 2 - 1 : cell // 2 + 1] = 0  # the first square's notch
    return labels


def _patch(labels: np.ndarray) -> TrainingPatch:
    rgb = np.repeat(((labels % 7) * 30).astype(np.uint8)[..., None], 3, axis=2)
    ids = np.unique(labels)[1:].astype(np.int64)
    return TrainingPatch((0, 0, 0, 0), rgb, labels, ids)


def test_prompts_from_each_objects_crop_equal_those_of_its_full_mask():
    labels = _grid_labels(96, 12)
    ids = np.array([1, 5, 64, 30])
    boxes, points = object_prompts(labels, ids)
    for k, object_id in enumerate(ids):
        mask = labels == object_id
        np.testing.assert_array_equal(boxes[k], bounding_box(mask))
        np.testing.assert_array_equal(points[k], interior_point(mask))


def _reference_sums(sam, patch: TrainingPatch) -> np.ndarray:
    """The sums computed the straightforward way: every object's full mask at once."""
    inp = prepare_input(sam, patch, patch.object_ids, torch.device("cpu"))
    embedding = sam.image_encoder(inp.pixels[None])
    run, image = decoder_for(sam, embedding, True)
    shape, size = inp.original_size, inp.input_size
    boxes = np.stack([bounding_box(m) for m in inp.masks])
    points = np.stack([interior_point(m) for m in inp.masks])[:, None]
    box = torch.as_tensor(to_input_frame(boxes.reshape(-1, 2, 2), shape, size).reshape(-1, 4))
    point = torch.as_tensor(to_input_frame(points, shape, size), dtype=torch.float32)
    truth = torch.as_tensor(inp.masks)
    logits, _ = run(sam, image, None, None, box.float(), None, False)
    box_iou, box_dice = _iou_dice(_upsample(sam, logits, inp)[:, 0], truth)
    logits, scores = run(
        sam, image, point, torch.ones(point.shape[:2], dtype=torch.int64), None, None, True
    )
    chosen = logits[torch.arange(len(point)), scores.argmax(dim=1)]
    point_iou, point_dice = _iou_dice(_upsample(sam, chosen[:, None], inp)[:, 0], truth)
    return np.array(
        [t.sum().item() for t in (box_iou, point_iou, box_dice, point_dice)] + [len(truth)]
    )


def _validate(sam, patch: TrainingPatch) -> np.ndarray:
    with torch.no_grad():
        return validate_patches(
            sam, [patch], torch.device("cpu"), lambda inputs: None, torch.no_grad
        )


def test_chunked_validation_gives_the_sums_of_all_objects_at_once(sensitive_sam):
    patch = _patch(_grid_labels(64, 8))  # 64 objects: two chunks
    assert len(patch.object_ids) > VAL_CHUNK
    sums = _validate(sensitive_sam, patch)
    with torch.no_grad():
        reference = _reference_sums(sensitive_sam, patch)
    assert sums[4] == 64
    np.testing.assert_allclose(sums, reference, rtol=1e-5, atol=1e-4)
    assert 0 < sums[0] < 64  # the tiny model gets some objects partly: the sums can differ


def test_a_patch_of_many_objects_holds_one_chunk_of_masks(tiny_sam):
    """441 objects of a 256 x 256 patch: all their masks at once were 29 MB."""
    patch = _patch(_grid_labels(256, 12))
    assert len(patch.object_ids) == 441
    tracemalloc.start()
    try:
        _validate(tiny_sam, patch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_chunk = VAL_CHUNK * 256 * 256
    assert peak < 4 * one_chunk, f"validation's numpy peak was {peak / 1e6:.0f} MB"
