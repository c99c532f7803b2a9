"""check_pair: what prepare_pair refuses, refused with the same message, without preparing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core import data
from napari_samtune.core.data import ImageLabelPair, check_pair, prepare_pair

LABELS = np.zeros((16, 16), np.uint16)
LABELS[2:6, 2:6] = 3
IMAGE = np.arange(256, dtype=np.uint16).reshape(16, 16)
MASK = np.zeros((16, 16), np.uint8)  # three cells of a foreground mask, 0/255 as Fiji saves it
MASK[1:5, 1:5] = MASK[1:5, 10:14] = MASK[10:14, 5:9] = 255

BAD_PAIRS = {
    "no objects": ImageLabelPair(IMAGE, np.zeros((16, 16), np.uint8)),
    "float labels": ImageLabelPair(IMAGE, LABELS.astype(np.float32) + 0.5),
    "boolean labels": ImageLabelPair(IMAGE, LABELS > 0),
    "negative ids": ImageLabelPair(IMAGE, -LABELS.astype(np.int32)),
    "foreground mask": ImageLabelPair(IMAGE, MASK),
    "other shape": ImageLabelPair(IMAGE[:, :12], LABELS),
    "transposed rgb": ImageLabelPair(np.zeros((3, 16, 12), np.uint8), LABELS),
    "empty image": ImageLabelPair(np.zeros((0, 16), np.uint8), np.zeros((0, 16), np.uint8)),
    "complex image": ImageLabelPair(IMAGE.astype(np.complex64), LABELS),
    "no finite pixel": ImageLabelPair(np.full((16, 16), np.nan, np.float32), LABELS),
    "five channels": ImageLabelPair(np.zeros((16, 16, 5), np.uint8), LABELS),
    "channel out of range": ImageLabelPair(np.zeros((16, 16, 3), np.uint8), LABELS, "x", -1, (5,)),
}


@pytest.mark.parametrize("name", BAD_PAIRS)
def test_check_pair_refuses_what_prepare_pair_refuses_in_its_words(name):
    pair = BAD_PAIRS[name]
    with pytest.raises((ValueError, TypeError)) as prepared:
        prepare_pair(pair)
    with pytest.raises(type(prepared.value)) as checked:
        check_pair(pair)
    assert str(checked.value) == str(prepared.value)


def test_check_pair_accepts_a_good_pair_without_normalising_it(monkeypatch):
    def fail(*args):
        raise AssertionError("check_pair normalised the image")

    monkeypatch.setattr(data, "plane_to_sam_rgb", fail)
    for pair in (ImageLabelPair(IMAGE, LABELS), ImageLabelPair(np.stack([IMAGE] * 3, -1), LABELS)):
        check_pair(pair)  # no error


def test_a_foreground_mask_of_integers_is_refused_and_instance_labels_are_not():
    """0/255 (or 0/1) masks of many cells trained without a word, as one object."""
    with pytest.raises(ValueError, match=r"one id 255 to 3 separate regions: a foreground mask"):
        check_pair(ImageLabelPair(IMAGE, MASK, name="fiji"))
    labelled = MASK.astype(np.uint16)
    labelled[10:14, 5:9] = 7  # the third cell with an id of its own
    check_pair(ImageLabelPair(IMAGE, labelled))
    split = np.zeros((16, 16), np.uint8)  # one object cut in two, and specks: not a mask
    split[1:5, 1:5] = split[1:5, 10:14] = split[10, 5] = split[14, 14] = 1
    check_pair(ImageLabelPair(IMAGE, split))
