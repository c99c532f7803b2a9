"""Python API mistakes found by trying bad input on each public function: each was once told
with torch's, numpy's or matplotlib's words, too late, or not at all."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib import cbook

from napari_samtune.core import view_predictor
from napari_samtune.core.comparison import _legend_text, compare_models
from napari_samtune.core.embeddings import TilingConfig
from napari_samtune.core.evaluate import evaluate_prompts
from napari_samtune.core.metrics import evaluate_instances
from napari_samtune.core.model_lookup import list_models
from napari_samtune.core.models import export_sam_state_dict, folder_not_weights, load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.presets import (
    TrainConfig,
    config_from_preset,
    get_preset,
    resolve_preset,
)
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.train import train
from napari_samtune.core.user_models import register_user_model


@pytest.fixture
def image_and_labels():
    image, labels = make_image((128, 128), seed=0)
    return image, labels.astype(np.uint32)


@pytest.fixture
def segmenter(tiny_sam, image_and_labels):
    seg = Segmenter(tiny_sam, model_id="tiny", precision="fp32", use_disk_cache=False)
    seg.set_image(image_and_labels[0])
    return seg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused_naming_the_tensor(tmp_path, tiny_sam, bad):
    """They loaded and registered without a word, segmented nothing, and training on them
    blamed the learning rate (lower it to 1e-10)."""
    with torch.no_grad():
        tiny_sam.mask_decoder.output_upscaling[0].weight[0, 0, 0, 0] = bad
    path = tmp_path / "diverged.pth"
    torch.save(tiny_sam.state_dict(), path)
    named = r"not all finite.*'mask_decoder\.output_upscaling\.0\.weight'"
    with pytest.raises(ValueError, match=named):
        load_model(path)
    before = [spec.name for spec in list_models()]
    with pytest.raises(ValueError, match=named):
        register_user_model(path, "diverged_model", "tiny")
    assert [spec.name for spec in list_models()] == before
    with pytest.raises(ValueError, match=named):
        config_from_preset("cpu-16gb", str(path))


def test_finite_weights_still_load(tmp_path, tiny_sam):
    path = export_sam_state_dict(tiny_sam, tmp_path / "fine.pth")
    assert load_model(path).sam.mask_threshold == tiny_sam.mask_threshold


def test_overwriting_a_comparison_without_settings_removes_the_old_settings(tmp_path):
    """The old comparison's JSON stayed beside the new table, describing other data."""
    first = compare_models({"base": {"box_iou": 0.5}}, tmp_path, settings={"data": "A"})
    assert json.loads(first.settings_path.read_text())["data"] == "A"
    again = compare_models({"tuned": {"box_iou": 0.9}}, tmp_path, overwrite=True)
    assert again.csv_path == first.csv_path and again.settings_path is None
    assert "tuned" in again.csv_path.read_text()
    assert not first.settings_path.exists()


@pytest.mark.parametrize("name", ["_base", "cost $5 $x"])
def test_model_names_reach_the_legend_as_written(name):
    """A leading "_" hid the model's legend entry; "$...$" was drawn as math."""
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    axes = Figure().add_subplot()
    axes.bar([0], [1], label=_legend_text(name))
    (text,) = axes.legend().get_texts()
    assert text.get_text().replace("\u200b", "").replace("\\$", "$") == name
    assert not cbook.is_math_text(text.get_text())


def test_a_progress_that_is_not_a_function_is_refused_before_any_work(
    tiny_sam, image_and_labels, monkeypatch
):
    """progress=True failed as "'bool' object is not callable" after the first tile."""
    calls = []
    monkeypatch.setattr(view_predictor, "embed_tiles", lambda *a, **k: calls.append(1))
    seg = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    image, labels = image_and_labels
    with pytest.raises(TypeError, match=r"progress=True is a bool, not a function.*progress\("):
        seg.set_image(image, progress=True)
    assert not calls
    with pytest.raises(TypeError, match=r"each_image=1 is an int.*each_image\(index\)"):
        evaluate_prompts(seg, [image], [labels], each_image=1)
    assert not calls


def test_segment_all_refuses_a_progress_that_is_not_a_function(segmenter, monkeypatch):
    decoded = []
    monkeypatch.setattr(segmenter, "decode", lambda *a, **k: decoded.append(1))
    with pytest.raises(TypeError, match=r"progress='bar' is text"):
        segmenter.segment_all(progress="bar")
    assert not decoded


@pytest.mark.parametrize(
    ("data", "val_data", "message"),
    [
        (None, None, r"training data is None \(NoneType\); pass a list of \(image, labels\)"),
        ("images/", None, r"training data is the path 'images/'.*load_pairs\("),
        ("pairs", 5, r"validation data is 5 \(int\); pass a list"),
    ],
)
def test_training_data_that_is_no_pairs_is_refused_by_what_it_is(
    tmp_path, image_and_labels, data, val_data, message
):
    """None failed inside the handler of another error; a folder's name was read as its
    characters ("data[0] is a str"); val_data=5 as "object of type 'int' has no len()"."""
    data = [image_and_labels] if data == "pairs" else data
    config = TrainConfig(model="random:tiny", epochs=1, min_samples_per_epoch=2)
    with pytest.raises(TypeError, match=message):
        train(config, data, val_data, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_evaluate_instances_names_labels_that_are_no_list():
    with pytest.raises(TypeError, match=r"labels is None; pass a list of label images"):
        evaluate_instances(None, None)


def test_the_preset_helpers_name_a_key_or_model_that_is_not_text():
    with pytest.raises(TypeError, match=r"model=None names no model.*stopped before"):
        config_from_preset("cpu-16gb", None)  # a stopped run's registered_name
    with pytest.raises(TypeError, match=r"model=5 names no model"):
        config_from_preset("cpu-16gb", 5)
    for helper in (get_preset, resolve_preset):
        with pytest.raises(TypeError, match=r"preset=None is None; pass a preset key"):
            helper(None)
    with pytest.raises(ValueError, match=r"call resolve_preset\('auto'\)"):
        get_preset("auto")
    assert get_preset(" CPU-16GB ").key == "cpu-16gb"
    with pytest.raises(TypeError, match=r"overlap_fraction='0.25' is text; pass a number"):
        TilingConfig(overlap_fraction="0.25")
    assert TilingConfig(overlap_fraction=0).overlap_fraction == 0


def test_predict_with_negatives_checks_each_of_its_prompts_by_name(segmenter):
    """Boxes were reshaped by numpy ("cannot reshape array of size 3"), and a negative
    outside the image was reported as points_xy[0]."""
    with pytest.raises(ValueError, match=r"boxes_xyxy must have shape \(N, 4\)"):
        segmenter.predict_with_negatives([[0, 0, 5]], [[3, 3]], [[4, 4]])
    with pytest.raises(TypeError, match=r"boxes_xyxy='abc' is not numeric"):
        segmenter.predict_with_negatives("abc", [[3, 3]], [[4, 4]])
    with pytest.raises(ValueError, match=r"negatives_xy\[0\] = \[500.0, 3.0\] lies outside"):
        segmenter.predict_with_negatives([[0, 0, 50, 50]], [[3, 3]], [[500, 3]])


def test_predict_with_negatives_without_negatives_gives_the_boxes_objects(segmenter):
    """No negatives (a detector's image without background marks) was refused as
    "points_xy must have shape (N, 2) with N >= 1"."""
    boxes = np.array([[10.0, 10, 60, 70], [70, 20, 120, 90]])
    labels = segmenter.predict_with_negatives(boxes, np.zeros((0, 2)), [])
    np.testing.assert_array_equal(labels, segmenter.predict_boxes(boxes))
    assert labels.max() > 0


@pytest.mark.parametrize("model_id", [5, "", "  "])
def test_a_model_id_that_is_no_name_is_refused(tiny_sam, model_id):
    """It keys the embedding cache: any model given 5 shared entries with every other."""
    with pytest.raises(TypeError, match=r"model_id=.*pass the weights' id as a non-empty string"):
        Segmenter(tiny_sam, model_id=model_id, use_disk_cache=False)


def test_export_to_no_file_name_says_so(tiny_sam):
    """Path('') is the current folder: "could not write .: Device or resource busy"."""
    with pytest.raises(ValueError, match=r"path='' names no file; give the weights file"):
        export_sam_state_dict(tiny_sam, "")


def test_a_folder_given_as_a_model_suggests_a_weights_file_that_is_not_empty(tmp_path, tiny_sam):
    (tmp_path / "aaa.pth").write_bytes(b"")  # first by name, and empty
    export_sam_state_dict(tiny_sam, tmp_path / "model.pth")
    assert folder_not_weights(tmp_path).endswith(f"e.g. {tmp_path / 'model.pth'}")
