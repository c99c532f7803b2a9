"""Load annotations… of a foreground-mask stack: judged and split as training takes stacks,
plane by plane."""

import numpy as np
import tifffile

from napari_samtune._qt.annotate_file_jobs import read_to_load
from napari_samtune.core.metrics import check_not_a_mask


def _squares(plane: np.ndarray, starts: list[int], width: int = 12) -> None:
    for x in starts:
        plane[10:30, x : x + width] = 255


def test_a_mask_stack_whose_cells_touch_across_planes_loads_one_object_per_region(tmp_path):
    """Moving cells touch from plane to plane: the mask is one region in 3D, so it loaded
    as one object on every plane, and training then refused each plane as a mask."""
    stack = np.zeros((3, 40, 90), np.uint8)
    _squares(stack[0], [0, 24, 48])
    _squares(stack[1], [8, 32, 56], width=20)  # each overlaps two of the plane before
    _squares(stack[2], [20, 44, 68])
    tifffile.imwrite(tmp_path / "mask.tif", stack)
    labels, _, n_objects, was_mask = read_to_load(tmp_path / "mask.tif", stack.shape)
    assert was_mask and n_objects == 9
    assert sorted(np.unique(labels))[1:] == list(range(1, 10))
    for z, plane in enumerate(labels):
        check_not_a_mask(plane, f"plane {z}")  # training takes each plane
        assert len(np.unique(plane)) == 4
    assert np.array_equal(labels > 0, stack > 0)


def test_a_mask_stack_of_cells_apart_keeps_one_id_per_cell_through_the_planes(tmp_path):
    stack = np.zeros((3, 40, 90), np.uint8)
    for plane in stack:
        _squares(plane, [0, 30, 60])  # the same cells on every plane: 3 objects in 3D
    tifffile.imwrite(tmp_path / "mask.tif", stack)
    labels, _, n_objects, was_mask = read_to_load(tmp_path / "mask.tif", stack.shape)
    assert was_mask and n_objects == 3
    assert all(np.array_equal(plane, labels[0]) for plane in labels)
