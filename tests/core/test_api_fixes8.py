"""Fixes found by scripting the headless core's training data and export from a notebook."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_samtune.core.automatic import default_auto_config
from napari_samtune.core.checkpoint_models import export_model
from napari_samtune.core.data import ImageLabelPair, as_pairs, prepare_pairs, read_match
from napari_samtune.core.label_files import match_files
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train
from napari_samtune.core.train_checkpoints import read_checkpoint
from tests.core.test_api_fixes7 import _one_epoch


def _tensor_pairs(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # bfloat16 (what a model in bf16 gives) and tracking gradients (a network's output):
    # np.asarray refused both with torch's own words
    ((image, labels),) = make_dataset(1, shape=(48, 48), seed=seed)
    pixels = torch.tensor(image, dtype=torch.float32, requires_grad=True) * 1.0
    return [(pixels.bfloat16(), torch.tensor(labels.astype(np.int64)))]


@pytest.mark.parametrize("as_pair", [False, True])
def test_training_pairs_may_be_bfloat16_tensors_or_track_gradients(as_pair):
    ((image, labels),) = make_dataset(1, shape=(48, 48), seed=0)
    grad = torch.tensor(image.astype(np.float32), requires_grad=True)
    tensors = [
        (grad.bfloat16(), torch.tensor(labels.astype(np.int32))),
        (grad, torch.tensor(labels.astype(np.int32))),
    ]
    data = [ImageLabelPair(i, lab, f"t{n}") for n, (i, lab) in enumerate(tensors)]
    prepared = prepare_pairs(as_pairs(data if as_pair else tensors))
    expected = prepare_pairs(as_pairs([(image.astype(np.float32), labels)]))[0]
    for one in prepared:
        np.testing.assert_array_equal(one.labels, expected.labels)
        assert one.rgb.shape == (48, 48, 3)
    np.testing.assert_array_equal(prepared[1].rgb, expected.rgb)


def test_train_accepts_tensor_pairs(tmp_path):
    result = train(_one_epoch(), _tensor_pairs(0), _tensor_pairs(1), out_dir=tmp_path)
    assert result.best_checkpoint_path.is_file()


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("extra", ["last", "first"])
def test_labels_with_an_extra_axis_of_one_train_as_their_2d_labels(rgb, extra):
    # (H, W, 1) labels, as some tools save a label TIFF, were refused ("give 2D (H, W)
    # labels"), and next to an (H, W, 1) image read as H planes of W x 1 pixels
    ((image, labels),) = make_dataset(1, shape=(40, 48), seed=2)
    if rgb:
        image = np.stack([image] * 3, axis=-1)
    extended = labels[..., None] if extra == "last" else labels[None]
    (pair,) = prepare_pairs(as_pairs([(image, extended)]))
    (expected,) = prepare_pairs(as_pairs([(image, labels)]))
    np.testing.assert_array_equal(pair.labels, expected.labels)
    np.testing.assert_array_equal(pair.rgb, expected.rgb)
    # given as an ImageLabelPair alike (it was refused: "give (H, W) labels")
    (given,) = prepare_pairs(as_pairs([ImageLabelPair(image, extended, "cells")]))
    np.testing.assert_array_equal(given.labels, expected.labels)
    assert given.name == "cells"


def test_an_image_and_labels_both_with_a_trailing_axis_of_one_are_one_pair():
    ((image, labels),) = make_dataset(1, shape=(40, 48), seed=3)
    pairs = as_pairs([(image[..., None], labels[..., None])])
    assert [p.name for p in pairs] == ["pair 0"]
    np.testing.assert_array_equal(prepare_pairs(pairs)[0].labels.astype(bool), labels > 0)


def test_labels_with_an_extra_axis_of_one_that_fit_no_image_say_how_to_drop_it():
    ((image, _),) = make_dataset(1, shape=(40, 48), seed=4)
    with pytest.raises(ValueError, match=r"\(40, 47, 1\).*labels\[\.\.\., 0\]"):
        prepare_pairs(as_pairs([(image, np.ones((40, 47, 1), np.uint16))]))


@pytest.fixture(scope="module")
def best(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pairs, val = make_dataset(2, (48, 48), seed=5), make_dataset(1, (48, 48), seed=50)
    return train(_one_epoch(), pairs, val, out_dir=out).best_checkpoint_path


def test_exporting_a_checkpoint_onto_itself_or_another_is_refused(best):
    # export_model(best.pt, best.pt) replaced the run's checkpoint with plain weights
    last = best.with_name("last.pt")
    before = best.read_bytes()
    with pytest.raises(ValueError, match=r"the checkpoint being exported.*best-model\.pth"):
        export_model(best, best)
    with pytest.raises(ValueError, match=r"a napari-samtune training checkpoint"):
        export_model(best, last)
    assert best.read_bytes() == before
    read_checkpoint(last)  # still a checkpoint


def test_exporting_to_a_folder_asks_for_a_file_name(best, tmp_path):
    # a folder gave a bare IsADirectoryError
    with pytest.raises(ValueError, match=r"is a folder; .*model\.pth"):
        export_model(best, tmp_path)
    exported, _ = export_model(best, tmp_path / "model.pth")
    assert exported.is_file()


@pytest.mark.parametrize("img_size", ["1024", 1024.0, True, None])
def test_default_auto_config_refuses_an_img_size_that_is_no_whole_number(img_size):
    # "1024" gave a bare "'<=' not supported between instances of 'str' and 'int'"
    with pytest.raises(TypeError, match=rf"img_size .*got {type(img_size).__name__} "):
        default_auto_config(img_size)


def test_default_auto_config_takes_numpy_integers():
    assert default_auto_config(np.int64(1024)) == default_auto_config(1024)


@pytest.mark.parametrize("match", [["images"], "images", ("images", "labels")])
def test_read_match_given_file_names_says_to_pass_match_files(match):
    # a list of names raised a bare "'list' object has no attribute 'pairs'"
    with pytest.raises(TypeError, match=r"match_files\(images, labels\)"):
        read_match(match)


def test_read_match_reads_what_match_files_pairs(tmp_path):
    ((image, labels),) = make_dataset(1, shape=(40, 48), seed=7)
    for folder, array in (("images", image), ("labels", labels)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "cell.tif", array)
    (pair,) = read_match(match_files(tmp_path / "images", tmp_path / "labels"))
    np.testing.assert_array_equal(pair.labels, labels)


def test_a_checkpoint_with_non_finite_weights_is_not_exported(best, tmp_path):
    """A run that diverged before runs checked their weights saved NaN weights, which
    'samtune export' (the fix its error printed) exported as a model."""
    checkpoint = torch.load(best, weights_only=True)
    name = next(n for n in checkpoint["model_state"] if n.startswith("mask_decoder."))
    checkpoint["model_state"][name].view(-1)[0] = torch.inf
    torch.save(checkpoint, tmp_path / "diverged.pt")
    with pytest.raises(ValueError, match=rf"not finite \(NaN or inf\) in 1 tensor\(s\).*{name}"):
        export_model(tmp_path / "diverged.pt", tmp_path / "model.pth")
    assert not (tmp_path / "model.pth").exists()
