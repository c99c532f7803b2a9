"""Continue… on a run's folder that lost one of its files: what is left of the run and how to
go on from it, not "holds no training run" and another folder to choose."""

from __future__ import annotations

import pytest

from napari_samtune._qt.continued_runs import continued_config
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train
from napari_samtune.core.train_export import RunFiles


@pytest.fixture
def run(tmp_path) -> RunFiles:
    config = TrainConfig(
        model="random:tiny", epochs=1, min_samples_per_epoch=2, n_objects_per_batch=1,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None,
    )  # fmt: skip
    train(config, make_dataset(2, shape=(80, 96), seed=3), out_dir=tmp_path / "run")
    files = RunFiles(tmp_path / "run")
    assert files.last.is_file() and files.best.is_file() and files.model.is_file()
    return files


def _refusal(folder) -> str:
    with pytest.raises(ValueError) as refused:
        continued_config(folder, 2, "cpu")
    return str(refused.value)


def test_a_run_without_its_last_checkpoint_offers_its_model_then_its_best_checkpoint(run):
    run.last.unlink()
    said = _refusal(run.folder)
    assert "holds no training run" not in said
    assert f"its last checkpoint ({run.last})" in said and "is missing" in said
    assert f"its finetuned model ({run.model}) is there" in said and "press Start" in said
    run.model.unlink()
    said = _refusal(run.folder)
    assert f"samtune export {run.best} -o model.pth" in said
    run.best.unlink()
    assert "and so is its best one" in _refusal(run.folder)


def test_a_run_without_its_config_is_sent_to_the_command_line_that_reads_its_checkpoint(run):
    run.config.unlink()
    said = _refusal(run.folder)
    assert "has lost its config.json" in said
    assert f"samtune train --resume {run.folder} --images" in said


def test_a_folder_without_either_is_still_no_run(tmp_path):
    assert "holds no training run to continue" in _refusal(tmp_path)
