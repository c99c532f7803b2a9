"""Fixes found by training with LoRA, frozen parts, presets, stops and several processes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from napari_samtune.cli.train_report import aborted_note
from napari_samtune.core.models import load_model
from napari_samtune.core.presets import TrainConfig, config_from_preset
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train
from tests.core.test_train import _config as tiny_config


@pytest.mark.parametrize(("preset", "model"), [("cpu-8gb", "random:vit_t"), ("gtx1080", "vit_b")])
def test_lora_on_a_preset_that_freezes_the_encoder_names_the_preset(preset, model):
    # "which freeze also lists; remove 'image_encoder' from freeze" blamed a freeze nobody
    # passed, and freeze=() then failed the preset's memory check, which asks for the
    # encoder frozen again: the advice went round in a circle.
    with pytest.raises(ValueError) as raised:
        config_from_preset(preset, model, lora_rank=4)
    message = str(raised.value)
    assert f"preset {preset!r} keeps frozen" in message
    assert "also lists" not in message and "remove 'image_encoder'" not in message
    assert "skip the preset's memory checks" in message
    lora = config_from_preset(preset, model, check=False, lora_rank=4, freeze=())
    assert (lora.lora_rank, lora.freeze) == (4, ())


def test_lora_on_a_preset_that_trains_the_encoder_still_works():
    assert config_from_preset("cpu-16gb", "random:vit_t", lora_rank=4).lora_rank == 4


def _config(**changes) -> TrainConfig:
    """test_train's tiny run, of two patches an epoch and no corrective clicks."""
    return tiny_config(**{"min_samples_per_epoch": 2, "n_iterative_prompts": 0, **changes})


@pytest.fixture(scope="module")
def data():
    return make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=50)


@pytest.mark.parametrize(("epochs", "stopped_early"), [(2, False), (3, True)])
def test_a_run_that_did_all_its_epochs_did_not_stop_early(tmp_path, data, epochs, stopped_early):
    # Patience ran out in the last epoch: the run ended because its epochs were done, yet it
    # said "stopped early: no improvement", as if more epochs had been cut.
    config = _config(epochs=epochs, learning_rate=1e-12, early_stopping=1)
    finished = train(config, *data, out_dir=tmp_path / "flat")
    assert finished.epochs_done == 2 and finished.best_epoch == 0
    assert finished.stopped_early is stopped_early
    assert ("stopped early" in finished.outcome_message()) is stopped_early


def test_a_run_on_a_weights_file_named_relatively_exports_and_resumes_from_elsewhere(
    tmp_path, tiny_checkpoint, data, monkeypatch
):
    # config.json and the checkpoints recorded model='tiny_sam.pth' as typed: from another
    # working directory a trainable-only checkpoint could be neither exported ("'tiny_sam.pth'
    # is neither a model name ... nor an existing file") nor resumed.
    from napari_samtune.core.checkpoint_models import export_model
    from napari_samtune.core.train_checkpoints import read_checkpoint

    monkeypatch.chdir(tiny_checkpoint.parent)
    config = _config(
        model=tiny_checkpoint.name, checkpoint_trainable_only=True, freeze=("image_encoder",)
    )
    run = tmp_path / "run"
    finished = train(config, *data, out_dir=run)
    saved = read_checkpoint(finished.best_checkpoint_path)["config"]["model"]
    assert saved == str(tiny_checkpoint.absolute())
    resumed = train(replace(config, epochs=3), *data, out_dir=run, resume_from=run)
    assert resumed.epochs_done == 3  # the same file, named as before, is the same model
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    exported, _ = export_model(finished.best_checkpoint_path, "model.pth")
    assert exported.is_file()
    again = train(replace(config, model=saved, epochs=4), *data, out_dir=run, resume_from=run)
    assert again.epochs_done == 4
    # as a model, best.pt needs the weights file it completes: gone, the error says so
    tiny_checkpoint.rename(tiny_checkpoint.with_name("moved.pth"))
    with pytest.raises(ValueError, match=r"best.pt: this checkpoint holds only the weights it"):
        load_model(finished.best_checkpoint_path)


def test_a_run_that_stopped_early_is_not_resumed_for_one_more_flat_epoch(tmp_path, data):
    # Resumed (as "the run did not finish" advises after a kill during its export), a run
    # that had stopped early trained one more epoch, stopped early again, and rewrote its
    # checkpoints; with nothing left to train it is told so, with how to go on.
    config = _config(epochs=4, learning_rate=1e-12, early_stopping=1)
    run = tmp_path / "flat"
    finished = train(config, *data, out_dir=run)
    assert finished.stopped_early and finished.epochs_done == 2
    last = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ValueError) as refused:
        train(config, *data, out_dir=run, resume_from=run)
    message = str(refused.value)
    assert "stopped early after 2 epoch(s)" in message and "nothing left to train" in message
    assert "set early_stopping above 1" in message
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    (run / "model.pth").unlink()  # as if stopped (SIGTERM) while exporting: said done
    assert "its training is done, but its model was not exported" in aborted_note(run)
    # unless this session has more patience, or (resumed at epoch 2 with new validation
    # images, its best chosen anew) it was aborted before a checkpoint of its own
    more_patient = replace(config, early_stopping=3)
    assert "the run did not finish" in aborted_note(run, str(run), more_patient)
    assert "the run did not finish" in aborted_note(run, str(run), config, 2)
    assert "its training is done" in aborted_note(run, None, config, 0)  # the session's own
    more = train(replace(config, early_stopping=3), *data, out_dir=run, resume_from=run)
    assert more.epochs_done == 4  # more patience: it goes on


def test_a_run_that_stopped_early_resumed_with_its_best_chosen_anew_trains_on(tmp_path, data):
    # given no validation images now (or other ones), its best epoch is chosen anew, its
    # patience with it: not refused as stopped early
    config = _config(epochs=4, learning_rate=1e-12, early_stopping=1)
    run = tmp_path / "flat"
    assert train(config, *data, out_dir=run).stopped_early
    resumed = train(config, data[0], out_dir=run, resume_from=run)
    assert resumed.epochs_done == 4
