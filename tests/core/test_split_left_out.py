"""The held-out part of the only image with objects is empty: the refusal names the pairs
given beside it that were left out for having no object. It called the image "the only
image" of the two given, and training stopped before it said it had left one out."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.data import ImageLabelPair
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train import train
from napari_samtune.core.validation_split import EmptyPartError


def test_the_refusal_names_the_pairs_left_out_for_having_no_object(tmp_path):
    labels = np.zeros((64, 64), np.uint16)
    labels[5:20, 5:20] = 1  # nothing in the last rows, which are held out
    empty = np.zeros((64, 64), np.uint16)
    image = np.zeros((64, 64), np.uint8)
    pairs = [ImageLabelPair(image, labels, "a.tif"), ImageLabelPair(image, empty, "b.tif")]
    config = TrainConfig(model="random:tiny", epochs=1, val_fraction=0.1, mixed_precision="no")
    with pytest.raises(EmptyPartError) as raised:
        train(config, pairs, out_dir=tmp_path / "run")
    message = str(raised.value)
    assert message.startswith(
        "'a.tif' is the only image with objects (the 1 other pair(s) given have none and are "
        "left out: b.tif), so its rows"
    ), message
    assert raised.value.left_out == ("b.tif",)
    with pytest.raises(EmptyPartError, match=r"^'a.tif' is the only image, so its rows"):
        train(config, pairs[:1], out_dir=tmp_path / "run")
