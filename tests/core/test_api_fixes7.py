"""Fixes found by scripting the headless core from a notebook, as a first-time user would."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from napari_samtune.core.evaluate import compare_models, evaluate_prompts
from napari_samtune.core.metrics import evaluate_instances
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import iter_train, train
from napari_samtune.core.user_models import list_user_models, register_user_model
from tests.core.test_validation_overlap import CONFIG


def _one_epoch() -> TrainConfig:
    """test_validation_overlap's tiny one-epoch run, with one object and no corrections."""
    return dataclasses.replace(CONFIG, n_objects_per_batch=1, n_iterative_prompts=0)


def test_pairs_given_as_a_generator_or_zip_train_like_a_list(tmp_path):
    # train(config, zip(images, labels)) raised "training data: object of type 'zip' has no
    # len()", and a generator of validation pairs a bare TypeError of the same words;
    # evaluate_prompts reads such iterables into a list, so training now does too.
    pairs, val = make_dataset(3, shape=(48, 48), seed=0), make_dataset(1, (48, 48), seed=50)
    images, labels = zip(*pairs, strict=True)
    listed = train(_one_epoch(), list(pairs), val, out_dir=tmp_path / "listed")
    zipped = train(
        _one_epoch(), zip(images, labels, strict=True), iter(val), out_dir=tmp_path / "zipped"
    )
    assert (zipped.steps_done, zipped.best_metric) == (listed.steps_done, listed.best_metric)


def test_an_empty_generator_of_pairs_is_refused_as_no_training_data(tmp_path):
    with pytest.raises(ValueError, match="training data must be a non-empty list"):
        train(_one_epoch(), (pair for pair in []), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_evaluate_prompts_takes_numpy_counts_and_names_counts_that_are_not_whole():
    # n_corrective_clicks=np.int64(1) (a count taken off an array) was refused as "expected
    # an int"; max_objects_per_image=1.5 raised "slice indices must be integers or None",
    # and "2" raised "'<' not supported between instances of 'str' and 'int'".
    model = load_model("nano")
    segmenter = Segmenter(model.sam, model.model_id, use_disk_cache=False)
    pairs = make_dataset(1, shape=(48, 48), seed=0)
    images, labels = [pairs[0][0]], [pairs[0][1]]
    plain = evaluate_prompts(segmenter, images, labels, 1, max_objects_per_image=2)
    numpy = evaluate_prompts(segmenter, images, labels, np.int64(1), np.uint8(2))
    assert numpy.summary() == plain.summary()
    assert type(numpy.n_corrective_clicks) is int and len(numpy.objects) == 2
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match=rf"max_objects_per_image={bad!r} is not a whole"):
            evaluate_prompts(segmenter, images, labels, 1, max_objects_per_image=bad)
    with pytest.raises(TypeError, match=r"n_corrective_clicks=2\.0 is not a whole number"):
        evaluate_prompts(segmenter, images, labels, 2.0)


def test_a_user_model_registered_with_an_architecture_name_is_registered(tiny_checkpoint):
    # register_user_model(path, "mine", "tiny") wrote mine.pt, then failed on "'str' object
    # has no attribute 'to_dict'" and left that file in the models folder, listed nowhere;
    # load_model(path, architecture="tiny") takes the name.
    weights = register_user_model(tiny_checkpoint, "mine", "tiny")
    assert [spec.name for spec in list_user_models()] == ["mine"]
    assert load_model("mine").architecture.name == "tiny"
    assert weights.is_file()
    for bad, error in (("vit_x", ValueError), (3, TypeError)):
        with pytest.raises(error, match=rf"architecture={bad!r}"):
            register_user_model(tiny_checkpoint, "other", bad)
    assert not list(user_models_dir().glob("other*"))


@pytest.mark.parametrize("stop_event", [True, False, threading.Event, "stop"])
def test_a_stop_event_that_is_no_event_is_refused_before_training(tmp_path, stop_event):
    # stop_event=True (or the class threading.Event) loaded the model and data, trained a
    # step and then failed on "'bool' object has no attribute 'is_set'".
    pairs, run = make_dataset(2, (48, 48), seed=0), tmp_path / "run"
    with pytest.raises(TypeError, match=r"stop_event=.* is not an event; pass stop = threading"):
        next(iter_train(_one_epoch(), pairs, out_dir=run, stop_event=stop_event))
    assert not run.exists()


def test_label_images_as_floats_or_file_names_are_refused_with_the_way_on():
    # Whole-number float labels (a TIFF saved as float32) were refused with "has dtype
    # dtype('float32'); instance metrics need integer label images" and no fix, though
    # training names one; a file name was "has dtype dtype('<U9')".
    labels = make_dataset(1, (48, 48), seed=0)[0][1]
    floats = labels.astype(np.float32)
    with pytest.raises(TypeError, match=r"image 0: prediction .*\.astype\(np\.uint32\)"):
        evaluate_instances([labels], [floats])
    as_ints = evaluate_instances([labels], [floats.astype(np.uint32)])
    assert as_ints.pooled.msa == 1.0
    with pytest.raises(TypeError, match="these values have fractions: a probability map"):
        evaluate_instances([labels], [floats / 2])
    with pytest.raises(TypeError, match=r"image 0: labels is the file name 'gt_01.tif'.*imread"):
        evaluate_instances(["gt_01.tif"], [labels])


def test_batched_points_refuse_a_multimask_that_is_no_bool_as_predict_does():
    # predict_points_batched(points, multimask="no") decoded three candidates per point, as
    # for True, without a word; predict(multimask="no") is refused.
    model = load_model("nano")
    segmenter = Segmenter(model.sam, model.model_id, use_disk_cache=False)
    segmenter.set_image(make_dataset(1, (48, 48), seed=0)[0][0])
    for call in (segmenter.predict_points_batched, segmenter.predict):
        with pytest.raises(TypeError, match=r"multimask='no'; pass True(, | or )False"):
            call([[10, 12]], multimask="no")
    one = segmenter.predict(points_xy=[[10, 12]], multimask=np.bool_(False)).mask
    batched = segmenter.predict_points_batched([[10, 12]], multimask=np.bool_(False))
    np.testing.assert_array_equal(batched == 1, one)


def test_compare_models_takes_pairs_and_a_name_given_with_its_extension(tmp_path):
    # compare_models([("a", evaluation)], ...) raised "'list' object has no attribute
    # 'items'", and name="scores.csv" wrote scores.csv.csv and scores.csv.png.
    labels = make_dataset(1, (48, 48), seed=0)[0][1]
    evaluation = evaluate_instances([labels], [labels])
    files = compare_models([("a", evaluation), ("b", {"msa": 0.5})], tmp_path, name="scores.csv")
    assert (files.csv_path.name, files.png_path.name) == ("scores.csv", "scores.png")
    rows = files.csv_path.read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["a", "b"]
    for bad in (evaluation, ["a", "b"], "a"):
        refused = r"results is (a \w+|text); pass \{model name: metrics\}"
        with pytest.raises(TypeError, match=refused):
            compare_models(bad, tmp_path)


def test_batched_prompts_with_no_prompt_give_labels_without_objects():
    # predict_boxes(np.zeros((0, 4))) (a detector that found nothing in this image) was
    # refused with "boxes_xyxy must have shape (N, 4) ...; got shape (0, 4)", and so were
    # no points; a loop over images stopped at the first without detections.
    model = load_model("nano")
    segmenter = Segmenter(model.sam, model.model_id, use_disk_cache=False)
    segmenter.set_image(make_dataset(1, (40, 48), seed=0)[0][0])
    for labels in (
        segmenter.predict_boxes(np.zeros((0, 4))),
        segmenter.predict_boxes([]),
        segmenter.predict_points_batched(np.empty((0, 2), dtype=np.float32)),
    ):
        assert labels.shape == (40, 48) and labels.dtype == np.uint32 and not labels.any()
    with pytest.raises(ValueError, match=r"got shape \(0, 3\)"):
        segmenter.predict_boxes(np.zeros((0, 3)))


@pytest.mark.parametrize(
    "as_tensor",
    [
        lambda image: torch.from_numpy(image).requires_grad_(),  # an output of a torch model
        lambda image: torch.from_numpy(image).to(torch.bfloat16),
    ],
)
def test_an_image_as_a_tensor_with_gradients_or_of_bfloat16_is_segmented(as_tensor):
    # set_image raised torch's "Can't call numpy() on Tensor that requires grad" or "Got
    # unsupported ScalarType BFloat16"; tensors of other dtypes were taken.
    model = load_model("nano")
    segmenter = Segmenter(model.sam, model.model_id, use_disk_cache=False)
    # uint8 values / 8: multiples of 1/8 below 32, which bfloat16 holds exactly
    image = make_dataset(1, (40, 48), seed=0)[0][0].astype(np.float32) / 8
    segmenter.set_image(image)
    expected = segmenter.predict(points_xy=[[20, 18]]).mask
    segmenter.set_image(as_tensor(image))
    np.testing.assert_array_equal(segmenter.predict(points_xy=[[20, 18]]).mask, expected)


def test_load_model_of_nothing_says_so():
    """``load_model("")`` said "'.' is a folder", and ``load_model(None)`` (the
    registered name of a run stopped before its first step) only that it was no name."""
    from napari_samtune.core.models import load_model

    with pytest.raises(ValueError, match="'' is empty; give a model name or a weights file"):
        load_model("")
    with pytest.raises(TypeError, match="stopped before its first step registered none"):
        load_model(None)
