"""Fixtures shared by the core tests."""

from __future__ import annotations

import pytest
import tifffile

from napari_samtune.core.synthetic import make_dataset


@pytest.fixture
def tiff_folders(tmp_path):
    """Three synthetic images in images/cell_<i>.tif, their labels in labels/cell_<i>_labels.tif."""
    for i, (image, labels) in enumerate(make_dataset(3, shape=(64, 80), seed=1)):
        for folder, name, array in (("images", "", image), ("labels", "_labels", labels)):
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"cell_{i}{name}.tif", array)
    return tmp_path / "images", tmp_path / "labels"
