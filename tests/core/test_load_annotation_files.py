"""Labels files that are not instance labels are refused naming what is wrong with them,
not their data type (an int8 or float32 file of whole ids loads)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune.core.annotation_files import load_annotations


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (np.array([[0, 1], [-1, 2]], np.int8), "they hold negative ids (the lowest is -1)"),
        (np.array([[0, 2**24 + 2], [1, 2]], np.float32), "they hold values outside 0..16777216"),
        (np.array([[0, 0.5], [1, 2]], np.float32), "these values have fractions"),
    ],
)
def test_a_file_of_other_values_says_what_they_are(tmp_path, labels, problem):
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, labels)
    with pytest.raises(ValueError) as refused:
        load_annotations(path)
    assert f"that are not instance labels: {problem}" in str(refused.value)


def test_whole_ids_of_a_small_or_float_type_load(tmp_path):
    for dtype in (np.int8, np.float32):
        tifffile.imwrite(tmp_path / "l.tif", np.array([[0, 1], [2, 2]], dtype))
        labels, _ = load_annotations(tmp_path / "l.tif")
        assert labels.dtype == np.uint32 and labels.tolist() == [[0, 1], [2, 2]]
