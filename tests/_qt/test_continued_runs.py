"""Continue… on a run's folder that lost one of its files: what is left of the run and how to
go on from it, not "holds no training run" and another folder to choose."""

from __future__ import annotations

from dataclasses import replace

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


def test_a_run_branched_into_its_folder_counts_the_epochs_of_its_checkpoint(tmp_path):
    """``--resume RUN --out BRANCH`` writes only the new epochs into BRANCH's metrics: the
    panel counted its lines, said "has done 1 epochs; set epochs above that" after 3, and
    the run then failed as having nothing left to train."""
    config = TrainConfig(
        model="random:tiny", epochs=2, min_samples_per_epoch=2, n_objects_per_batch=1,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None,
    )  # fmt: skip
    data = make_dataset(2, shape=(80, 96), seed=3)
    first = train(config, data, out_dir=tmp_path / "run")
    branch = tmp_path / "branch"
    train(replace(config, epochs=3), data, out_dir=branch, resume_from=first.last_checkpoint_path)
    assert len(RunFiles(branch).metrics.read_text().splitlines()) == 1
    with pytest.raises(ValueError, match="has done 3 epochs; set epochs above that"):
        continued_config(branch, 3, "cpu")
    continued, _, history = continued_config(branch, 4, "cpu")
    assert continued.epochs == 4 and [past.epoch for past in history] == [2]
