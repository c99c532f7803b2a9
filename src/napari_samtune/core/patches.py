"""Training patches: crops of prepared images, sampled for training and tiled for validation.

A training sample is a patch of at most ``patch_size`` x ``patch_size`` pixels that
contains objects, with a random flip / 90-degree rotation. Whether a sample is the same
in every epoch is a choice of the sampler (``vary_per_epoch``): with a frozen image encoder
it must be, so that the patch's embedding can be computed once and cached. The objects
trained on and their prompts are drawn afresh every epoch.

Coordinates: arrays are (row, col); a crop is addressed by its top-left corner
(row, col) in the normalised image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_samtune.core.data import PreparedImage

N_AUGMENTATIONS = 8  # 4 rotations x (flipped or not)
CROP_TRIES = 10


@dataclass(frozen=True)
class TrainingPatch:
    """A cropped, augmented piece of one prepared image."""

    key: tuple[int, int, int, int]  # (image index, crop row, crop col, augmentation 0..7)
    crop_rgb: np.ndarray  # (h, w, 3) uint8 crop before the augmentation, h and w <= patch_size
    labels: np.ndarray  # (h, w) uint32 instance ids as in the source image, augmented
    object_ids: np.ndarray  # (K,) ids whose area in the patch is >= the minimum

    @property
    def rgb(self) -> np.ndarray:
        """(h, w, 3) uint8 augmented pixels, made when asked for: a patch whose
        frozen-encoder embedding is cached never needs them (rotating a 1024 px patch took 4
        ms of each cached training step). Not augmented (validation tiles), the crop itself:
        the tiles a run keeps hold no copies of their images' pixels."""
        aug = self.key[3]
        return self.crop_rgb if aug == 0 else augment(self.crop_rgb, aug)


def augment(array: np.ndarray, aug: int) -> np.ndarray:
    """Rotate by ``aug % 4`` quarter turns, then mirror left-right when ``aug >= 4``."""
    out = np.rot90(array, k=aug % 4, axes=(0, 1))
    if aug >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _objects_in(labels: np.ndarray, min_area: int) -> np.ndarray:
    """The ids (ascending uint32) of the objects with at least ``min_area`` pixels in
    ``labels``, a crop of prepared labels (ids 1..N).

    Counted per id rather than by ``np.unique``, whose sort of every pixel took 7-17 ms of
    each training step for a 1024 x 1024 patch (the count: 1.4 ms).
    """
    counts = np.bincount(labels.ravel(), minlength=1)
    counts[0] = 0  # background
    return np.flatnonzero(counts >= max(min_area, 1)).astype(np.uint32)


class PatchSampler:
    """Deterministic training patches: sample ``i`` of epoch ``e`` depends on (seed, i, e) only.

    Args:
        images: prepared training images.
        patch_size: patch side, pixels; images smaller than this give smaller patches.
        min_object_area: objects with fewer pixels inside a patch are not trained on.
        min_samples_per_epoch: epochs hold at least this many samples (oversampling).
        seed: seeds crops, augmentations and object choice.
        vary_per_epoch: draw new crops/augmentations every epoch; False keeps sample ``i``
            the same patch in every epoch (needed to cache a frozen encoder's embeddings).
    """

    def __init__(
        self,
        images: Sequence[PreparedImage],
        patch_size: int,
        min_object_area: int,
        min_samples_per_epoch: int,
        seed: int,
        vary_per_epoch: bool = True,
    ) -> None:
        if not images:
            raise ValueError("no training images; give at least one annotated image")
        self.images = list(images)
        self.patch_size = patch_size
        self.min_object_area = min_object_area
        self.n_samples = max(min_samples_per_epoch, len(self.images))
        self.seed = seed
        self.vary_per_epoch = vary_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which the samples of ``epoch`` are visited: (n_samples,) int64."""
        return np.random.default_rng([self.seed, 0, epoch]).permutation(self.n_samples)

    def patch(self, index: int, epoch: int) -> TrainingPatch:
        """Sample ``index`` (in 0..n_samples-1) of ``epoch``: a patch containing objects."""
        rng = np.random.default_rng([self.seed, 1, index, epoch if self.vary_per_epoch else 0])
        image_index = index % len(self.images)  # every image equally often
        image = self.images[image_index]
        for _ in range(CROP_TRIES):
            row, col = self._crop_corner(image, rng)
            labels = self._crop(image.labels, row, col)
            object_ids = _objects_in(labels, self.min_object_area)
            if object_ids.size:
                break
        else:  # every object is tiny here: train on what there is
            object_ids = _objects_in(labels, 1)
        aug = int(rng.integers(N_AUGMENTATIONS))
        labels = augment(labels, aug)
        return TrainingPatch(
            (image_index, row, col, aug), self._crop(image.rgb, row, col), labels, object_ids
        )

    def _crop(self, array: np.ndarray, row: int, col: int) -> np.ndarray:
        return array[row : row + self.patch_size, col : col + self.patch_size]

    def _crop_corner(self, image: PreparedImage, rng: np.random.Generator) -> tuple[int, int]:
        """A random corner such that the crop contains a pixel of a random (large) object."""
        usable = np.flatnonzero(image.object_areas >= self.min_object_area)
        if usable.size == 0:
            usable = np.arange(image.object_areas.size)
        index = int(rng.choice(usable))
        rows, cols = image.object_slices[index]
        inside = np.argwhere(image.labels[rows, cols] == index + 1)
        r, c = inside[rng.integers(len(inside))] + (rows.start, cols.start)
        height, width = image.labels.shape
        h, w = min(height, self.patch_size), min(width, self.patch_size)
        row = int(rng.integers(max(0, r - h + 1), min(r, height - h) + 1))
        col = int(rng.integers(max(0, c - w + 1), min(c, width - w) + 1))
        return row, col

    def sample_objects(self, patch: TrainingPatch, n: int, index: int, epoch: int) -> np.ndarray:
        """Up to ``n`` distinct object ids of ``patch`` (all of them when it has fewer)."""
        rng = np.random.default_rng([self.seed, 2, index, epoch])
        n = min(n, patch.object_ids.size)
        return rng.choice(patch.object_ids, size=n, replace=False)


def tile_patches(
    images: Sequence[PreparedImage], patch_size: int, min_object_area: int
) -> list[TrainingPatch]:
    """Cover each image with patches of ``patch_size`` (the last ones flush with the edge).

    Used for validation: a fixed set, no augmentation, every object of at least
    ``min_object_area`` pixels in each patch. Patches without such objects are left out;
    an image whose objects are all smaller is validated on them, as training trains on
    them, rather than left out of validation unsaid.
    """
    patches = []
    for image_index, image in enumerate(images):
        tiles = _image_tiles(image, image_index, patch_size, min_object_area)
        patches += tiles or _image_tiles(image, image_index, patch_size, 1)
    return patches


def _image_tiles(
    image: PreparedImage, image_index: int, patch_size: int, min_object_area: int
) -> list[TrainingPatch]:
    """The image's tiles, each with the objects it holds most of: an object is scored once,
    in the tile with most of it (whole where one holds it whole). Scored in every tile it
    reached, a 300 px image's 20 objects counted as 67, 19 of them cut pieces."""
    height, width = image.labels.shape
    h, w = min(height, patch_size), min(width, patch_size)
    corners = [(row, col) for row in _tile_starts(height, h) for col in _tile_starts(width, w)]
    n_ids = int(image.object_areas.size) + 1
    counts = np.stack([
        np.bincount(image.labels[row : row + h, col : col + w].ravel(), minlength=n_ids)
        for row, col in corners
    ])  # fmt: skip
    counts[:, 0] = 0  # background
    best = counts.argmax(axis=0)  # the tile with most of each object (the first, if tied)
    tiles = []
    for index, (row, col) in enumerate(corners):
        mine = (best == index) & (counts[index] >= max(min_object_area, 1))
        object_ids = np.flatnonzero(mine).astype(np.uint32)
        if object_ids.size:
            labels = image.labels[row : row + h, col : col + w]
            rgb = image.rgb[row : row + h, col : col + w]
            tiles.append(TrainingPatch((image_index, row, col, 0), rgb, labels, object_ids))
    return tiles


def _tile_starts(length: int, tile: int) -> list[int]:
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts
