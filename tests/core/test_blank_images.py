"""An image of one value everywhere (an empty channel, a black frame) is trained on with a
warning that names it: its objects cannot be seen, so the model learns masks on nothing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.data import ImageLabelPair
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import iter_train, train


@pytest.fixture(scope="module")
def pairs():
    return make_dataset(2, shape=(96, 112), seed=3)


@pytest.fixture
def started(short_tiny_config, tmp_path):
    """``started(train_pairs, val_pairs)``: the TrainingStarted event of a run on them."""

    def first_event(train_pairs, val_pairs):
        events = iter_train(short_tiny_config(), train_pairs, val_pairs, tmp_path / "run")
        event = next(events)
        events.close()
        return event

    return first_event


def test_a_black_frame_and_an_empty_channel_are_named(started, pairs):
    (image, labels), (other, other_labels) = pairs
    black = ImageLabelPair(np.zeros_like(image), labels, "black.tif")
    two_channels = np.stack([other, np.full_like(other, 7)], axis=-1)  # channel 1 is flat
    empty_channel = ImageLabelPair(two_channels, other_labels, "c1.tif", -1, (1,))
    event = started([black, ImageLabelPair(image, labels, "ok.tif")], [empty_channel])
    assert event.blank == ("black.tif",) and event.blank_validation == ("c1.tif",)
    message = event.blank_message()
    assert message.startswith(
        "1 training pair(s) have an image of one value everywhere (blank): black.tif; SAM "
        "sees none of their objects"
    )  # a validation image is not trained on: it was said to teach masks on nothing
    assert "1 of 1 validation pair(s) have a blank image: c1.tif; no model can segment" in message
    assert "ok.tif" not in message and "check that the right image (and channel)" in message
    assert message in event.data_warnings()


def test_a_blank_image_split_in_two_is_named_once_per_part(started, pairs):
    """One image, its last rows held out: its two parts were counted as 2 blank pairs."""
    image, labels = pairs[0]
    event = started([ImageLabelPair(np.zeros_like(image), labels, "black.tif")], None)
    assert event.n_val == 1 and event.blank == event.blank_validation == ("black.tif",)


def test_images_with_any_contrast_are_not_warned_about(started, pairs):
    image, labels = pairs[0]
    faint = np.zeros_like(image)
    faint[labels > 0] = 1  # the objects one grey level above a black background
    event = started([ImageLabelPair(faint, labels, "faint.tif"), pairs[1]], None)
    assert event.blank == () and event.blank_message() == ""
    assert event.data_warnings() == []


def test_train_warns_a_script_about_a_blank_image(tmp_path, pairs, short_tiny_config):
    image, labels = pairs[0]
    blank = ImageLabelPair(np.full_like(image, 200), labels, "flat.tif")
    config = short_tiny_config(val_fraction=0.0)
    with pytest.warns(UserWarning, match=r"flat\.tif; SAM sees none of their objects"):
        train(config, [blank, pairs[1]], None, tmp_path / "run")
