"""Training patches: seeded sampling, fixed patches for a frozen encoder, validation tiles."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.data import ImageLabelPair, as_pairs, prepare_pairs
from napari_samtune.core.patches import PatchSampler, augment, tile_patches
from napari_samtune.core.synthetic import make_dataset


@pytest.fixture
def prepared():
    return prepare_pairs(as_pairs(make_dataset(3, shape=(160, 200), seed=4)))


def test_patches_contain_objects_and_are_seeded(prepared):
    sampler = PatchSampler(prepared, 96, min_object_area=30, min_samples_per_epoch=20, seed=1)
    assert sampler.n_samples == 20  # oversampled from 3 images
    for index in range(20):
        patch = sampler.patch(index, epoch=0)
        assert patch.rgb.shape[:2] == patch.labels.shape and max(patch.labels.shape) == 96
        assert patch.key[0] == index % 3
        assert patch.object_ids.size > 0
        for object_id in patch.object_ids:
            assert np.count_nonzero(patch.labels == object_id) >= 30
    again = PatchSampler(prepared, 96, 30, 20, seed=1).patch(5, epoch=0)
    assert again.key == sampler.patch(5, 0).key and np.array_equal(
        again.rgb, sampler.patch(5, 0).rgb
    )
    assert sorted(sampler.epoch_order(0)) == list(range(20))
    assert not np.array_equal(sampler.epoch_order(0), sampler.epoch_order(1))


def test_fixed_patches_for_a_frozen_encoder_vary_otherwise(prepared):
    fixed = PatchSampler(prepared, 96, 30, 10, seed=0, vary_per_epoch=False)
    varying = PatchSampler(prepared, 96, 30, 10, seed=0, vary_per_epoch=True)
    assert all(fixed.patch(i, 0).key == fixed.patch(i, 7).key for i in range(10))
    assert any(varying.patch(i, 0).key != varying.patch(i, 7).key for i in range(10))
    ids_by_epoch = [tuple(fixed.sample_objects(fixed.patch(0, 0), 2, 0, e)) for e in range(6)]
    assert len(set(ids_by_epoch)) > 1  # objects (and prompts) still change every epoch


def test_small_images_give_smaller_patches_and_objects_are_capped(prepared):
    small = prepare_pairs(as_pairs(make_dataset(1, shape=(40, 70), seed=0)))
    sampler = PatchSampler(small, 96, 1, 4, seed=0)
    patch = sampler.patch(0, 0)
    assert sorted(patch.labels.shape) == [40, 70]  # whole image, possibly rotated
    n = patch.object_ids.size
    picked = sampler.sample_objects(patch, n + 5, 0, 0)
    assert sorted(picked) == sorted(patch.object_ids)
    two = sampler.sample_objects(patch, 2, 0, 0)
    assert len(set(two.tolist())) == min(2, n)


def test_tiny_objects_are_not_trained_on():
    labels = np.zeros((64, 64), np.uint16)
    labels[5:25, 5:25] = 1  # 400 pixels
    labels[40:43, 40:43] = 2  # 9 pixels
    images = prepare_pairs([ImageLabelPair(np.zeros((64, 64), np.uint8), labels, "a")])
    sampler = PatchSampler(images, 64, min_object_area=16, min_samples_per_epoch=5, seed=0)
    assert all(sampler.patch(i, 0).object_ids.tolist() == [1] for i in range(5))


def test_augmentations_are_the_eight_symmetries_of_the_square():
    array = np.arange(12).reshape(3, 4)
    results = [augment(array, aug) for aug in range(8)]
    assert np.array_equal(results[0], array)
    assert len({r.tobytes() + bytes(r.shape) for r in results}) == 8
    rgb = np.stack([array] * 3, axis=-1)
    assert all(np.array_equal(augment(rgb, a)[..., 1], results[a]) for a in range(8))


def test_validation_tiles_score_each_object_once_where_most_of_it_is(prepared):
    """Scored in every tile it reached, a 300 px image's 20 objects counted as 67, 19 of
    them cut pieces."""
    labels = prepared[0].labels
    patches = tile_patches(prepared[:1], 96, min_object_area=1)
    scored = np.concatenate([patch.object_ids for patch in patches])
    assert sorted(scored) == list(range(1, int(labels.max()) + 1))  # each once
    for patch in patches:
        _, row, col, aug = patch.key
        assert aug == 0 and patch.labels.shape == (96, 96)
        assert np.array_equal(patch.labels, labels[row : row + 96, col : col + 96])
        for object_id in patch.object_ids:  # no other tile holds more of it
            here = np.count_nonzero(patch.labels == object_id)
            for other in patches:
                assert np.count_nonzero(other.labels == object_id) <= here


def test_an_image_with_only_small_objects_is_still_validated(prepared):
    """As training trains on them: else the best epoch silently falls back to train loss."""
    labels = np.zeros((160, 200), np.int32)
    for index, (row, col) in enumerate([(20, 20), (100, 100), (140, 50)], start=1):
        labels[row : row + 3, col : col + 3] = index
    small = prepare_pairs([ImageLabelPair(prepared[0].rgb, labels, "small")])
    patches = tile_patches([*prepared[:1], *small], 96, min_object_area=30)
    from_small = [p for p in patches if p.key[0] == 1]
    assert sorted(np.concatenate([p.object_ids for p in from_small])) == [1, 2, 3]
    assert all(p.object_ids.size for p in from_small)
    big_only = tile_patches(prepared[:1], 96, min_object_area=30)
    assert [p.key for p in patches if p.key[0] == 0] == [p.key for p in big_only]
    for patch in big_only:  # images with large objects keep the threshold
        assert all(np.count_nonzero(patch.labels == i) >= 30 for i in patch.object_ids)


@pytest.mark.parametrize("min_area", [0, 1, 16, 400])
def test_objects_in_a_crop_are_the_ids_with_enough_pixels(min_area):
    """The per-id count gives what np.unique's counts give, on crops (views) of labels
    with absent ids, a missing background and objects of every size."""
    from napari_samtune.core.patches import _objects_in

    rng = np.random.default_rng(min_area)
    labels = rng.integers(0, 40, size=(300, 280)).astype(np.uint32) ** 2 % 1500  # gaps
    labels[:100, :100] = 7  # one large object
    for crop in (labels, labels[50:250, 30:90], labels[120:, 200:], labels[:100, :100]):
        ids, counts = np.unique(crop, return_counts=True)
        expected = ids[(ids != 0) & (counts >= min_area)]
        got = _objects_in(crop, min_area)
        assert got.dtype == np.uint32 and np.array_equal(got, expected)


def test_a_patch_rotates_its_pixels_on_first_use_as_its_labels():
    prepared = prepare_pairs(as_pairs(make_dataset(1, shape=(120, 96), seed=3)))
    sampler = PatchSampler(prepared, 64, 1, 8, seed=0)
    for index in range(8):
        patch = sampler.patch(index, 0)
        assert set(vars(patch)) == {"key", "crop_rgb", "labels", "object_ids"}  # none rotated
        _, row, col, aug = patch.key
        crop = prepared[0].rgb[row : row + 64, col : col + 64]
        assert np.array_equal(patch.rgb, augment(crop, aug))
        crop_labels = prepared[0].labels[row : row + 64, col : col + 64]
        assert np.array_equal(patch.labels, augment(crop_labels, aug))


def test_validation_tiles_keep_no_copy_of_their_pixels():
    """A run keeps its validation tiles: each held a copy of its pixels once they were
    read (9.6 MB for three 1200 x 1600 images)."""
    prepared = prepare_pairs(as_pairs(make_dataset(1, shape=(200, 300), seed=3)))
    tiles = tile_patches(prepared, 128, 1)
    assert len(tiles) > 1
    for tile in tiles:
        _, row, col, _ = tile.key
        assert np.shares_memory(tile.rgb, prepared[0].rgb)
        assert np.array_equal(tile.rgb, prepared[0].rgb[row : row + 128, col : col + 128])
        assert set(vars(tile)) == {"key", "crop_rgb", "labels", "object_ids"}
