"""The Python API takes paths as a shell does (``~`` is the home folder) and names its
arguments when given the wrong kind of value."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune.core.data import load_pairs
from napari_samtune.core.embedding_cache import EmbeddingCache
from napari_samtune.core.presets import config_from_preset
from napari_samtune.core.train import train


def test_a_cache_folder_under_home_is_not_made_in_the_current_folder(tmp_path, monkeypatch):
    """Segmenter(cache_dir="~/cache") wrote ./~/cache/<key>.pt."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert EmbeddingCache("~/cache").directory == tmp_path / "home" / "cache"
    # "~name" of no user stays a relative folder's name (pathlib raised RuntimeError)
    assert EmbeddingCache("~no_such_user_xyz").directory.name == "~no_such_user_xyz"


def test_data_folders_under_home_are_found(tmp_path, monkeypatch):
    """load_pairs("~/data/images", ...) said the folders did not exist."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for kind in ("images", "labels"):
        (tmp_path / "data" / kind).mkdir(parents=True)
    labels = np.zeros((32, 32), np.uint16)
    labels[8:16, 8:16] = 1
    tifffile.imwrite(tmp_path / "data" / "images" / "a.tif", np.eye(32, dtype=np.uint8))
    tifffile.imwrite(tmp_path / "data" / "labels" / "a.tif", labels)
    (pair,) = load_pairs("~/data/images", "~/data/labels")
    assert pair.labels.max() == 1
    # one image and another image's labels in folders under ~: refused by name as they
    # are elsewhere (the ~ folders were taken for files named, which pair whatever names)
    (tmp_path / "data" / "labels" / "a.tif").rename(tmp_path / "data" / "labels" / "b.tif")
    with pytest.raises(ValueError, match="could not pair files by name"):
        load_pairs("~/data/images", "~/data/labels")


@pytest.mark.parametrize(("out_dir", "kind"), [(None, "None"), (5, "an int")])
def test_an_out_dir_of_another_kind_is_named(tmp_path, out_dir, kind, short_tiny_config, data):
    with pytest.raises(TypeError, match=rf"out_dir={out_dir!r} is {kind}; give a folder path"):
        train(short_tiny_config(), *data, out_dir=out_dir)


def test_a_device_name_no_machine_has_is_refused_when_the_config_is_made():
    import torch

    with pytest.raises(ValueError, match="device='gpu' is not a device; choose one of"):
        config_from_preset("cpu-8gb", "random:tiny", device="gpu")
    for device in ("cuda:1", "cpu:1"):  # as resolve_device takes them
        assert config_from_preset("cpu-8gb", "random:tiny", device=device).device == device
    with pytest.raises(TypeError, match="give the device as a string, e.g. 'cpu'"):
        config_from_preset("cpu-8gb", "random:tiny", device=torch.device("cpu"))
