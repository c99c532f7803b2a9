"""Fixes found by scripting with the documented Python API as a first-time user would."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_samtune.core.data import ImageLabelPair, as_pairs, check_pair, split_planes
from napari_samtune.core.data_checks import ChannelError, check_channels
from napari_samtune.core.evaluate import evaluate_prompts
from napari_samtune.core.images import to_sam_rgb
from napari_samtune.core.metrics import evaluate_instances
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.presets import TrainConfig, config_from_preset
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.train import iter_train, train


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint16)
    labels[..., 4:12, 4:12] = 1
    return labels


@pytest.mark.parametrize(
    ("image_shape", "labels_shape"),
    [
        ((3, 2, 32, 32), (3, 2, 32, 32)),  # time series of z-stacks, labelled alike
        ((3, 2, 32, 32), (32, 32)),  # a 4D image with one plane of labels
        ((2, 2, 2, 32, 32), (2, 32, 32)),  # 5D
    ],
)
def test_image_of_too_many_axes_is_refused_for_every_caller(image_shape, labels_shape):
    # A script, `samtune train/evaluate` (which add "(options --channel-axis, --channels)" to
    # a ChannelError) and the widget's layers and folders all check pairs here: no channel
    # choice fixes such a pair, and none of them can "pass one plane at a time".
    image = np.zeros(image_shape, dtype=np.uint8)
    for pair in split_planes(image, _labels(labels_shape), "a.tif / a.tif"):
        with pytest.raises(ValueError) as raised:
            check_channels(pair)
        assert not isinstance(raised.value, ChannelError)
        message = str(raised.value)
        assert "one plane at a time" not in message
        assert f"{image_shape!r}" in message and "one axis of planes" in message
        with pytest.raises(ValueError, match="one axis of planes"):
            check_pair(pair)


def _one_epoch_frozen(tiny_checkpoint, **overrides) -> TrainConfig:
    """One epoch of two patches of the tiny model, its image encoder frozen."""
    return TrainConfig(
        model=str(tiny_checkpoint),
        epochs=1,
        n_objects_per_batch=1,
        min_samples_per_epoch=2,
        n_iterative_prompts=0,
        freeze=("image_encoder",),
        **overrides,
    )


def test_stacks_that_training_takes_still_pass():
    stack, labels = np.zeros((3, 32, 32), dtype=np.uint8), _labels((3, 32, 32))
    assert len(as_pairs([(stack, labels)])) == 3
    rgb_stack = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    for pair in as_pairs([(rgb_stack, labels)]):
        check_pair(pair)
    single_axes = ImageLabelPair(np.zeros((1, 1, 32, 32), dtype=np.uint8), _labels((32, 32)))
    check_pair(single_axes)


def test_stack_given_to_sam_does_not_contradict_the_commands_hint():
    # `samtune segment` adds "For a z-stack or time series (planes first) pass --stack" to
    # this message: "for a stack, pass one plane at a time" told the opposite.
    with pytest.raises(ValueError, match="SAM segments a stack one plane at a time") as raised:
        to_sam_rgb(np.zeros((3, 4, 8, 8), dtype=np.uint8))
    assert "pass one plane" not in str(raised.value)


def _incomplete_weights(tmp_path, tiny_sam, prefix: str) -> str:
    state = {k: v for k, v in tiny_sam.state_dict().items() if not k.startswith(prefix)}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize(
    "prefix",
    [
        "image_encoder.blocks.0.",
        "image_encoder.blocks.",
        "mask_decoder.transformer.",
        "image_encoder.",
    ],
)
def test_incomplete_sam_weights_are_refused_naming_the_file_and_the_missing_tensor(
    tmp_path, tiny_sam, prefix
):
    # Reading the architecture off such a file raised a bare KeyError (a traceback from
    # config_from_preset and `samtune train --model partial.pth`; load_model said only
    # "partial.pth: 'image_encoder.blocks.0.attn.rel_pos_h'").
    path = _incomplete_weights(tmp_path, tiny_sam, prefix)
    for call in (lambda: load_model(path), lambda: config_from_preset("cpu-8gb", path)):
        with pytest.raises(ValueError, match=r"partial\.pth: .*incomplete: '.*' is missing"):
            call()


def test_resuming_with_new_scheduler_settings_uses_them(tmp_path, tiny_checkpoint):
    # The scheduler's saved state held the patience and factor the run started with, and
    # loading it replaced the new ones: config.json said patience 0, the run used 3.
    image, labels = make_image((48, 48), seed=1)
    config = _one_epoch_frozen(tiny_checkpoint)
    run = tmp_path / "run"
    train(config, [(image, labels)], [(image, labels)], out_dir=run)
    changed = replace(config, epochs=2, scheduler_patience=0, scheduler_factor=0.1)
    train(changed, [(image, labels)], [(image, labels)], out_dir=run, resume_from=run)
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["scheduler_state"]
    assert (saved["patience"], saved["factor"]) == (0, 0.1)


def test_one_label_image_given_for_the_set_is_refused_not_scored_row_by_row():
    # evaluate_instances(labels, prediction) of one (H, W) image each took every row as an
    # image: no error, and mSA 0.37 where the image scores 0.18.
    labels = make_image((48, 48), seed=1)[1]
    prediction = np.roll(labels, 3, axis=0)
    with pytest.raises(ValueError, match=r"shape \(48, 48\).*\[labels\], \[prediction\]"):
        evaluate_instances(labels, prediction)
    with pytest.raises(ValueError, match="predictions is an array"):
        evaluate_instances([labels], prediction)
    stacked = evaluate_instances(labels[None], prediction[None]).summary()
    assert stacked == evaluate_instances([labels], [prediction]).summary()
    # as a torch tensor (dask is alike) it was still scored row by row, unsaid
    as_tensor = torch.from_numpy(labels.astype(np.int64))
    with pytest.raises(ValueError, match=r"labels is an array of shape \(48, 48\)"):
        evaluate_instances(as_tensor, torch.from_numpy(prediction.astype(np.int64)))


def test_a_weights_file_as_a_path_is_a_model_to_finetune(tmp_path, tiny_checkpoint):
    # load_model takes a pathlib.Path; config_from_preset raised AttributeError ('PosixPath'
    # object has no attribute 'startswith') and TrainConfig said "give a model name or a
    # weights file path" for one.
    config = config_from_preset("cpu-8gb", tiny_checkpoint)
    assert config.model == str(tiny_checkpoint)
    assert TrainConfig(model=tiny_checkpoint).model == str(tiny_checkpoint)
    assert replace(config, model=tiny_checkpoint).model == str(tiny_checkpoint)


def test_resuming_without_the_validation_data_the_run_had_chooses_the_best_anew(
    tmp_path, tiny_checkpoint
):
    # The run's best validation IoU stayed the best to beat by negative training losses
    # (always below it): TrainingFinished said best_metric 0.3 "negative train loss", and
    # no epoch of the resumed session could become best.pt.
    image, labels = make_image((48, 48), seed=1)
    config = _one_epoch_frozen(tiny_checkpoint, early_stopping=None)
    run = tmp_path / "run"
    first = train(config, [(image, labels)], [(image, labels)], out_dir=run)
    assert first.metric_name == "val_iou" and first.best_metric >= 0
    events = list(
        iter_train(
            replace(config, epochs=2, val_fraction=0.0), [(image, labels)], None, run,
            resume_from=run,
        )
    )  # fmt: skip
    started, finished = events[0], events[-1]
    assert any("chosen anew" in note for note in started.notes)
    assert finished.metric_name == "negative train loss"
    assert finished.best_epoch == 1 and finished.best_metric < 0


def test_one_image_given_to_evaluate_prompts_is_refused_saying_to_pass_lists(tiny_sam):
    # evaluate_prompts(segmenter, image, labels) said "labels[0] has shape (48,)".
    image, labels = make_image((48, 48), seed=1)
    segmenter = Segmenter(tiny_sam)
    with pytest.raises(ValueError, match=r"labels is an array of shape \(48, 48\).*\[labels\]"):
        evaluate_prompts(segmenter, [image], labels)
    with pytest.raises(ValueError, match=r"images is an array of shape \(48, 48\).*\[image\]"):
        evaluate_prompts(segmenter, image, [labels])
