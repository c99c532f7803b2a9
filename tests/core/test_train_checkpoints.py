"""Training checkpoints named by a file or by their run's folder."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.models import export_sam_state_dict
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train
from napari_samtune.core.train_checkpoints import read_checkpoint, write_checkpoint


def test_a_run_folder_names_its_last_checkpoint(tmp_path):
    config = TrainConfig(model="random:tiny", epochs=3)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    write_checkpoint(last, build_sam(TINY), TINY, config, epoch=2)
    write_checkpoint(last.with_name("best.pt"), build_sam(TINY), TINY, config, epoch=1)
    for named in (tmp_path / "run", str(tmp_path / "run"), last):
        checkpoint = read_checkpoint(named)
        assert checkpoint["epoch"] == 2 and checkpoint["config"]["epochs"] == 3


def test_a_folder_without_a_checkpoint_is_named_with_the_file_it_lacks(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'.*empty' is a folder without a training ch"):
        read_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"checkpoints/last\.pt' does not exist; give"):
        read_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="checkpoint '.*missing.pt' does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_an_exported_model_given_as_a_checkpoint_is_named_as_one(tmp_path):
    """A run's model.pth (samtune export or --resume of it) was called 'not a
    napari-samtune checkpoint', which reads as a file of another program."""
    exported = export_sam_state_dict(build_sam(TINY), tmp_path / "model.pth")
    with pytest.raises(ValueError, match=r"model\.pth' is an exported SAM model .* not a training"):
        read_checkpoint(exported)
    with pytest.raises(ValueError, match=r"use it as a model as it is, or give its run's folder"):
        read_checkpoint(exported)


def _tiny_run(epochs: int) -> TrainConfig:
    """A random tiny SAM, a patch per epoch, half the data to validate (so best.pt is kept)."""
    return TrainConfig(
        model="random:tiny",
        epochs=epochs,
        n_objects_per_batch=1,
        min_samples_per_epoch=1,
        n_iterative_prompts=0,
        mixed_precision="no",
        early_stopping=None,
        val_fraction=0.5,
    )


def test_train_resumes_from_its_run_folder(tmp_path):
    data = make_dataset(2, shape=(64, 64), seed=0)
    config = _tiny_run(epochs=1)
    first = train(config, data, out_dir=tmp_path / "run")
    twice = dataclasses.replace(config, epochs=2)
    resumed = train(twice, data, out_dir=tmp_path / "run", resume_from=tmp_path / "run")
    checkpoint = torch.load(resumed.last_checkpoint_path, weights_only=True)
    assert checkpoint["epoch"] == 2 and resumed.last_checkpoint_path == first.last_checkpoint_path


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("nano", "nano-finetuned-20261203-1130"),
        ("nano-finetuned-20261203-1114", "nano-finetuned-20261203-1130"),  # a second round
        ("nano-finetuned-20261203-1114-2", "nano-finetuned-20261203-1130"),
        ("vit_b-finetuned-cells", "vit_b-finetuned-cells-finetuned-20261203-1130"),  # named
    ],
)
def test_a_second_round_s_automatic_name_does_not_grow(model, expected):
    """Finetuning 'nano-finetuned-<time>' again was named 'nano-finetuned-<time>-finetuned-
    <time>', one more suffix every round of the annotate -> finetune loop."""
    from datetime import datetime

    from napari_samtune.core.train_export import automatic_model_name

    assert automatic_model_name(model, datetime(2026, 12, 3, 11, 30)) == expected


def test_a_best_checkpoint_damaged_before_the_export_leaves_the_latest_epoch_s_model(
    tmp_path, monkeypatch
):
    """It failed the finished run: its model was neither exported nor registered."""
    from napari_samtune.core import trainer_files
    from napari_samtune.core.models import load_model
    from napari_samtune.core.registry import user_models_dir

    real = trainer_files.export_and_register

    def damaging(checkpoint, *args):
        if checkpoint.name == "best.pt":
            checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated on disk
        return real(checkpoint, *args)

    monkeypatch.setattr(trainer_files, "export_and_register", damaging)
    data = make_dataset(2, shape=(64, 64), seed=0)
    config = _tiny_run(epochs=2)
    with pytest.warns(UserWarning, match="best.pt could not be read"):
        finished = train(config, data, out_dir=tmp_path / "run", model_name="kept")
    assert finished.best_epoch is not None and finished.registered_name == "kept"
    assert "not those of the best" in finished.outcome_message()
    sidecar = json.loads((user_models_dir() / "kept.json").read_text())
    assert "not those of the best" in json.dumps(sidecar)  # the model's record says so
    last = read_checkpoint(finished.last_checkpoint_path)
    model = load_model("kept", device="cpu").sam
    for key, value in last["model_state"].items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)
