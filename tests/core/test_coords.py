import numpy as np
import pytest

from napari_samtune.core.coords import napari_to_sam, sam_to_napari


def test_point_row_col_becomes_x_y():
    assert napari_to_sam(np.array([[10.0, 30.0]])).tolist() == [[30.0, 10.0]]


def test_box_corners_become_xyxy():
    corners = np.array([[5, 7], [50, 70]])  # (row_min, col_min), (row_max, col_max)
    assert napari_to_sam(corners).reshape(-1).tolist() == [7, 5, 70, 50]


def test_round_trip_is_identity(rng):
    points = rng.uniform(0, 100, size=(17, 2))
    np.testing.assert_array_equal(sam_to_napari(napari_to_sam(points)), points)


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((4, 3)), np.float64(1.0)])
def test_wrong_shape_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="shape"):
        napari_to_sam(bad)
