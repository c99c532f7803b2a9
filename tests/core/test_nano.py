"""The packaged "nano" generalist: ships, loads offline, and clearly learned to segment."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import torch

from napari_samtune.core.architectures import NANO
from napari_samtune.core.download import file_digest
from napari_samtune.core.evaluate import evaluate_prompts
from napari_samtune.core.model_lookup import get_model_spec, list_models
from napari_samtune.core.model_source import load_base_model
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.registry import parse_hash
from napari_samtune.core.synthetic import make_varied_dataset

# Measured on the 6 held-out generated images of the test below: nano 0.79 box-prompt IoU,
# the same architecture with random weights 0.01. The thresholds leave a wide safety margin.
MIN_GAIN_OVER_RANDOM = 0.5
MIN_NANO_BOX_IOU = 0.6


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("nano must load without network access")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_nano_ships_inside_the_package_with_its_hash():
    spec = get_model_spec("nano")
    assert spec.packaged and spec.url is None and spec.architecture == "nano"
    path = spec.local_path()
    assert path.is_file() and path.parent.name == "weights"
    assert path.stat().st_size <= 10_000_000
    algorithm, digest = parse_hash(spec.file_hash)
    assert file_digest(path, algorithm) == digest
    assert "nano" in [s.name for s in list_models()]


@pytest.mark.parametrize("download", [False, True])
def test_load_model_nano_works_offline(offline, download):
    loaded = load_model("nano", download=download)
    assert loaded.architecture == NANO
    assert loaded.model_id == "file-" + "-".join(parse_hash(get_model_spec("nano").file_hash))
    dtypes = {p.dtype for p in loaded.sam.parameters()}
    assert dtypes == {torch.float32}  # stored as fp16, computed in fp32


def _box_iou(sam, pairs) -> float:
    segmenter = Segmenter(sam, use_disk_cache=False)
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    result = evaluate_prompts(segmenter, images, labels, 0, max_objects_per_image=8)
    return result.summary()["box_iou"]


def test_nano_beats_random_weights_on_held_out_images():
    pairs = make_varied_dataset(6, seed=31_337)  # seeds the training never used
    nano = _box_iou(load_model("nano").sam, pairs)
    random_sam, _, _ = load_base_model("random:nano", seed=0)
    random = _box_iou(random_sam, pairs)
    assert nano >= random + MIN_GAIN_OVER_RANDOM, (nano, random)
    assert nano >= MIN_NANO_BOX_IOU, nano


def test_corrective_clicks_improve_nano_s_masks_on_held_out_images():
    """The first packaged weights, trained with one corrective click, got worse with more
    (IoU 0.543 after 3 clicks against 0.642 from one point on 8 held-out varied images);
    the packaged ones went on training with three. Here (6 other images, 8 objects each):
    0.80 from one point, 0.84 after 3 clicks; the first weights gave 0.76 and 0.72."""
    pairs = make_varied_dataset(6, seed=31_337)
    segmenter = Segmenter(load_model("nano").sam, use_disk_cache=False)
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    summary = evaluate_prompts(segmenter, images, labels, 3, max_objects_per_image=8).summary()
    assert summary["iou_after_3_clicks"] >= summary["point_iou"] + 0.01, summary


def test_a_packaged_spec_refuses_a_url_and_lives_in_the_package():
    from napari_samtune.core.registry import ModelSpec, packaged_weights_dir

    with pytest.raises(ValueError, match="packaged weights need url=None"):
        ModelSpec("x", "nano", "x.pth", "https://example.org/x.pth", source="demo", packaged=True)
    spec = ModelSpec("x", "nano", "x.pth", None, source="demo", packaged=True)
    assert spec.local_path() == packaged_weights_dir() / "x.pth"


def test_varied_training_data_is_reproducible_varied_and_never_dark():
    first, again = (
        make_varied_dataset(6, (96, 96), seed=5),
        make_varied_dataset(6, (96, 96), seed=5),
    )
    for (image, labels), (image2, labels2) in zip(first, again, strict=True):
        assert np.array_equal(image, image2) and np.array_equal(labels, labels2)
        ids = np.unique(labels)
        assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
        # bright objects: the object pixels are brighter than the background on average
        assert image[labels > 0].mean() > image[labels == 0].mean()
    assert [image.dtype for image, _ in first] == [np.uint8, np.uint8, np.uint16] * 2
    counts = [int(labels.max()) for _, labels in first]
    assert len(set(counts)) > 1  # styles differ in density
    other = make_varied_dataset(1, (96, 96), seed=6)[0][0]
    assert not np.array_equal(other, first[0][0])


def test_damaged_packaged_weights_are_refused(tmp_path, monkeypatch):
    from napari_samtune.core import registry
    from napari_samtune.core.download import ensure_model_file

    spec = get_model_spec("nano")
    assert ensure_model_file(spec) == spec.local_path()  # the shipped file matches its hash
    damaged = tmp_path / spec.filename
    damaged.write_bytes(spec.local_path().read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(registry, "packaged_weights_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match="do not match their recorded sha256"):
        ensure_model_file(spec)


def test_bf16_fast_path_masks_match_fp32_masks_with_trained_weights(offline):
    """The issue's mask target (box IoU >= 0.98 against fp32) on weights that learned something:
    random weights give near-zero logits everywhere, where any rounding flips pixels."""
    image, labels = make_varied_dataset(1, seed=4242)[0]
    masks = {}
    for precision in ("fp32", "bf16"):
        segmenter = Segmenter(load_model("nano").sam, use_disk_cache=False, precision=precision)
        segmenter.set_image(image)
        ids = np.unique(labels)[1:9]
        boxes = [np.argwhere(labels == i) for i in ids]
        boxes = [np.r_[p.min(0)[::-1], p.max(0)[::-1]] for p in boxes]  # (row, col) -> XYXY
        masks[precision] = [segmenter.predict(box_xyxy=b).mask for b in boxes]
    ious = [
        (a & b).sum() / max((a | b).sum(), 1)
        for a, b in zip(masks["fp32"], masks["bf16"], strict=True)
    ]
    assert len(ious) >= 5 and min(ious) >= 0.98


def test_the_package_s_weights_folder_given_as_a_model_names_nano_pth():
    """It named the earlier weights kept beside nano.pth (sorted first)."""
    from napari_samtune.core.registry import packaged_weights_dir

    folder = packaged_weights_dir()
    assert (folder / "nano-0f2c709a.pth").is_file()
    with pytest.raises(ValueError, match=r"e\.g\. .*[/\\]nano\.pth$"):
        load_model(folder)
