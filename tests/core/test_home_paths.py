"""A leading ~ in an output path is the home folder, as it is in input paths: a run into
'~/run' trained into ./~/run and then registered the weights of $HOME/run/model.pth."""

from __future__ import annotations

import pytest
import torch

from napari_samtune.cli import check_output_file
from napari_samtune.core.checkpoints import check_output_folder
from napari_samtune.core.models import load_model
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def test_a_run_into_tilde_trains_and_registers_in_the_home_folder(
    home, tmp_path, short_tiny_config
):
    data = make_dataset(2, shape=(64, 64), seed=1)
    finished = train(short_tiny_config(val_fraction=0.0), data, out_dir="~/run2")
    assert finished.exported_model_path == home / "run2" / "model.pth"
    assert not (tmp_path / "~").exists()
    registered = load_model(finished.registered_name).sam.state_dict()
    exported = torch.load(home / "run2" / "model.pth", weights_only=True)
    assert all(torch.equal(registered[k], exported[k]) for k in exported)
    config = short_tiny_config(val_fraction=0.0, epochs=2)
    resumed = train(config, data, out_dir="~/run3", resume_from="~/run2")
    assert resumed.epochs_done == 2 and not (tmp_path / "~").exists()


def test_output_files_and_folders_expand_the_home_folder(home):
    assert check_output_folder("~/seg") == home / "seg"
    assert check_output_file("~/out/labels.tif", "labels.tif") == home / "out" / "labels.tif"
