"""An object's clicks are answered as SAM learns them: each click with the mask of the clicks
before it as mask_input, kept so that a new click costs one decoder pass."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.click_chain import ClickChain
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image

POINTS = np.array([[40.0, 30.0], [60.0, 52.0], [25.0, 70.0], [80.0, 20.0]])  # (x, y)
LABELS = np.array([1, 0, 1, 0])


@pytest.fixture
def segmenter(sensitive_sam):
    segmenter = Segmenter(sensitive_sam, model_id="s", use_disk_cache=False, precision="fp32")
    segmenter.set_image(make_image((96, 112), seed=4)[0])
    return segmenter


class _Counting:
    """Counts the Segmenter's predict calls."""

    def __init__(self, segmenter, monkeypatch):
        self.calls = 0
        predict = segmenter.predict

        def counted(*args, **kwargs):
            self.calls += 1
            return predict(*args, **kwargs)

        monkeypatch.setattr(segmenter, "predict", counted)


def _by_hand(segmenter, points, labels, box=None):
    previous = None
    if box is not None:
        previous = segmenter.predict(box_xyxy=box)
    for k in range(1, len(points) + 1):
        previous = segmenter.predict(
            points[:k],
            labels[:k],
            box,
            mask_input=previous,
            multimask=None if previous is None else False,
        )
    return previous


def test_negative_clicks_before_the_first_positive_come_after_it(segmenter):
    """A negative click alone marks only background: its made-up mask, fed back to every
    later click, took nano's IoU on two clicks from 0.59 to 0.24 in the panel."""
    negative_first = np.array([[60.0, 52.0], [40.0, 30.0], [80.0, 20.0], [25.0, 70.0]])
    labels = np.array([0, 1, 0, 1])
    chained = ClickChain().predict(segmenter, negative_first, labels)
    order = [1, 0, 2, 3]  # the first positive, then the others as clicked
    expected = _by_hand(segmenter, negative_first[order], labels[order])
    np.testing.assert_array_equal(chained.low_res_logits, expected.low_res_logits)
    as_clicked = _by_hand(segmenter, negative_first, labels)  # the negative click first
    assert not np.array_equal(as_clicked.low_res_logits, expected.low_res_logits)
    box = np.array([10.0, 12.0, 90.0, 80.0])  # after a box, clicks stay in their order
    with_box = ClickChain().predict(segmenter, negative_first[:2], labels[:2], box)
    by_hand = _by_hand(segmenter, negative_first[:2], labels[:2], box)
    np.testing.assert_array_equal(with_box.low_res_logits, by_hand.low_res_logits)


def test_each_click_refines_the_mask_of_the_clicks_before_it(segmenter):
    chained = ClickChain().predict(segmenter, POINTS, LABELS)
    expected = _by_hand(segmenter, POINTS, LABELS)
    np.testing.assert_array_equal(chained.mask, expected.mask)
    np.testing.assert_array_equal(chained.low_res_logits, expected.low_res_logits)
    at_once = segmenter.predict(POINTS, LABELS, multimask=False)  # the widget's old answer
    assert not np.array_equal(chained.low_res_logits, at_once.low_res_logits)
    box = np.array([10.0, 12.0, 90.0, 80.0])
    with_box = ClickChain().predict(segmenter, POINTS[:2], LABELS[:2], box)
    np.testing.assert_array_equal(
        with_box.mask, _by_hand(segmenter, POINTS[:2], LABELS[:2], box).mask
    )


def test_a_new_click_costs_one_pass_and_a_changed_one_recomputes_from_there(segmenter, monkeypatch):
    chain, counter = ClickChain(), _Counting(segmenter, monkeypatch)
    chain.predict(segmenter, POINTS[:3], LABELS[:3])
    assert counter.calls == 3
    chain.predict(segmenter, POINTS, LABELS)  # one click more
    assert counter.calls == 4
    moved = POINTS.copy()
    moved[1] += 5  # the second click moved: clicks 2, 3 and 4 again
    result = chain.predict(segmenter, moved, LABELS)
    assert counter.calls == 7
    np.testing.assert_array_equal(result.mask, _by_hand(segmenter, moved, LABELS).mask)
    counter.calls = 7  # less the calls made by hand
    flipped = LABELS.copy()
    flipped[3] = 1  # T on the last click
    chain.predict(segmenter, moved, flipped)
    assert counter.calls == 8
    result = chain.predict(segmenter, moved[:2], flipped[:2])  # clicks deleted: the new
    assert counter.calls == 9  # last step decoded again, for its mask alone
    counter.calls = 9
    np.testing.assert_array_equal(result.mask, _by_hand(segmenter, moved[:2], flipped[:2]).mask)


def test_only_the_last_step_keeps_its_full_size_mask(segmenter):
    """Each step's (H, W) mask was kept: 16 MB a click for a 4096 x 4096 image."""
    chain = ClickChain()
    chain.predict(segmenter, POINTS, LABELS)
    masks = [prediction.mask.size for _, prediction in chain._steps]
    assert masks[:-1] == [0, 0, 0] and masks[-1] == 96 * 112


def test_another_image_or_model_starts_the_chain_again(segmenter, sensitive_sam, monkeypatch):
    chain = ClickChain()
    first = chain.predict(segmenter, POINTS[:2], LABELS[:2])
    other_image = make_image((96, 112), seed=5)[0]
    segmenter.set_image(other_image)
    again = chain.predict(segmenter, POINTS[:2], LABELS[:2])
    np.testing.assert_array_equal(again.mask, _by_hand(segmenter, POINTS[:2], LABELS[:2]).mask)
    assert again.image_digest != first.image_digest
    other = Segmenter(sensitive_sam, model_id="t", use_disk_cache=False, precision="fp32")
    other.set_image(other_image)
    counter = _Counting(other, monkeypatch)
    chain.predict(other, POINTS[:2], LABELS[:2])  # the same image in another Segmenter
    assert counter.calls == 2


def test_a_chain_needs_a_prompt(segmenter):
    with pytest.raises(ValueError, match="a click chain needs a prompt"):
        ClickChain().predict(segmenter, None, None)


def test_a_mask_input_of_a_made_view_survives_the_image_set_again(sensitive_sam):
    """Made views are numbered anew when an image is set again: the Prediction's view
    number put its logits in another view's frame (a mask 199 px off), or in none
    (IndexError)."""
    first, other = make_image((640, 640), seed=1)[0], make_image((640, 640), seed=2)[0]
    xy = np.array([[128.0, 128.0], [300.0, 128.0], [330.0, 200.0]])

    def fresh():
        made = Segmenter(sensitive_sam, model_id="x", use_disk_cache=False, precision="fp32")
        made.set_image(first)
        return made

    reference = fresh()
    step = reference.predict(xy[:2], np.ones(2, np.int64), multimask=False)
    want = reference.predict(xy, np.ones(3, np.int64), mask_input=step, multimask=False)
    segmenter = fresh()
    kept = segmenter.predict(xy[:2], np.ones(2, np.int64), multimask=False)
    segmenter.set_image(other)
    segmenter.set_image(first)
    got = segmenter.predict(xy, np.ones(3, np.int64), mask_input=kept, multimask=False)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(got.low_res_logits, want.low_res_logits)


class _NeedsAViewOnce:
    """A Segmenter whose third step must wait (its view to be embedded) the first time."""

    def __init__(self, segmenter):
        self.segmenter, self.calls, self.waited = segmenter, 0, False
        self.image_digest = segmenter.image_digest

    def predict(self, **prompt):
        self.calls += 1
        if len(prompt["points_xy"]) == 3 and not self.waited:
            self.waited = True
            raise LookupError("embed the view first")  # as EmbeddingNeeded does
        return self.segmenter.predict(**prompt)


def test_a_step_that_must_wait_keeps_the_steps_before_it(segmenter):
    """The steps were kept only once the chain ended: each view to embed sent it back to its
    first step, whose views were evicted meanwhile on a large image, without end."""
    waiting = _NeedsAViewOnce(segmenter)
    chain = ClickChain()
    with pytest.raises(LookupError):
        chain.predict(waiting, POINTS, LABELS)
    assert waiting.calls == 3
    result = chain.predict(waiting, POINTS, LABELS)  # once the view is there
    assert waiting.calls == 5  # steps 3 and 4 only
    np.testing.assert_array_equal(result.mask, _by_hand(segmenter, POINTS, LABELS).mask)
