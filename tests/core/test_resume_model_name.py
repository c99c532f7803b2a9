"""A run that crashed before it registered its model registers it, when resumed, under the
name it was started with: it took its folder's name (the widget's Continue… and ``samtune
train --resume`` pass no name; none was recorded)."""

from __future__ import annotations

import pytest

from napari_samtune.core import trainer_files
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train
from napari_samtune.core.user_models import list_user_models, register_user_model

DATA = make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)


def _crashed_at_its_export(tmp_path, config, monkeypatch, name: str):
    """A run into ``tmp_path / "run"`` named ``name`` whose export failed (a full disk)."""

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(trainer_files, "export_and_register", full_disk)
        with pytest.raises(OSError, match="No space left"):
            train(config, *DATA, tmp_path / "run", model_name=name)
    assert list_user_models() == []
    return tmp_path / "run"


def test_a_run_resumed_after_a_crash_registers_the_name_it_was_given(
    tmp_path, short_tiny_config, monkeypatch
):
    run = _crashed_at_its_export(tmp_path, short_tiny_config(), monkeypatch, "mine")
    continued = train(short_tiny_config(epochs=2), *DATA, run, resume_from=run)
    assert continued.registered_name == "mine" and continued.name_taken is None
    assert [spec.name for spec in list_user_models()] == ["mine"]


def test_a_name_taken_meanwhile_gets_a_free_variant_and_says_so(
    tmp_path, short_tiny_config, monkeypatch, tiny_checkpoint
):
    run = _crashed_at_its_export(tmp_path, short_tiny_config(), monkeypatch, "mine")
    register_user_model(tiny_checkpoint, "mine", "tiny")  # another model took the name
    continued = train(short_tiny_config(epochs=2), *DATA, run, resume_from=run)
    assert continued.registered_name == "mine-2" and continued.name_taken == "mine"


def test_a_name_given_on_resume_wins(tmp_path, short_tiny_config, monkeypatch):
    run = _crashed_at_its_export(tmp_path, short_tiny_config(), monkeypatch, "mine")
    continued = train(short_tiny_config(epochs=2), *DATA, run, resume_from=run, model_name="b")
    assert continued.registered_name == "b"


def test_a_new_run_where_a_run_was_moved_away_leaves_that_run_s_model_registered(
    tmp_path, short_tiny_config
):
    """A run archived (moved away) and a new one started in its folder: the new run, named
    after the folder as the first was, replaced the first run's registered model with its
    own weights, unsaid (it took the model for its own, registered from that model.pth)."""
    first = train(short_tiny_config(), *DATA, tmp_path / "run")
    assert first.registered_name == "run"
    kept = {s.name: s.weights_id for s in list_user_models()}["run"]
    (tmp_path / "run").rename(tmp_path / "run-archived")
    other = make_dataset(2, shape=(64, 64), seed=5), DATA[1]  # other images: other weights
    second = train(short_tiny_config(), *other, tmp_path / "run")
    assert second.registered_name == "run-2"
    assert {s.name: s.weights_id for s in list_user_models()}["run-2"] != kept
    assert {s.name: s.weights_id for s in list_user_models()}["run"] == kept
    assert sorted(s.name for s in list_user_models()) == ["run", "run-2"]
    run = tmp_path / "run"
    continued = train(short_tiny_config(epochs=2), *other, run, resume_from=run)
    assert continued.registered_name == "run-2"  # a resumed run still updates its own
    assert sorted(s.name for s in list_user_models()) == ["run", "run-2"]


def test_a_run_killed_before_registering_is_not_told_the_moved_run_s_model_is_its_own(
    tmp_path, short_tiny_config, monkeypatch
):
    """The note for a run exported but not registered (killed between the two), in the
    folder of a run moved away, said it had registered its model as the moved run's name,
    "the model is there to use": the new run's model was never registered."""
    import torch

    from napari_samtune.core import user_models
    from napari_samtune.core.train_checkpoints import unexported_note

    train(short_tiny_config(), *DATA, tmp_path / "run")
    (tmp_path / "run").rename(tmp_path / "run-archived")

    def killed(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(user_models, "register_user_model", killed)
        with pytest.raises(OSError, match="No space left"):
            train(short_tiny_config(), *DATA, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert (tmp_path / "run" / "model.pth").is_file()
    run_id = torch.load(last, weights_only=True, mmap=True)["run_id"]
    note = unexported_note(last, 1, run_id)
    assert "registering it as 'run'" not in note
    assert "ended before its model was exported and registered" in note


def _registered_before_run_ids_then_moved(folder, short_tiny_config) -> str:
    """A run in ``folder`` registering "mine" as an earlier version did (no run id in its
    description), then moved away; the weights id of "mine"."""
    import json

    from napari_samtune.core.registry import user_models_dir

    train(short_tiny_config(), *DATA, folder, model_name="mine")
    sidecar = user_models_dir() / "mine.json"
    described = json.loads(sidecar.read_text())
    del described["metadata"]["run_id"]
    sidecar.write_text(json.dumps(described))
    folder.rename(folder.with_name(f"{folder.name}-archived"))
    return {s.name: s.weights_id for s in list_user_models()}["mine"]


def test_a_new_run_leaves_a_model_registered_before_runs_had_ids(tmp_path, short_tiny_config):
    """A model registered by an earlier version (no run id in its description) counted as
    any run's: a new run in the folder it was registered from replaced it, unsaid."""
    kept = _registered_before_run_ids_then_moved(tmp_path / "run", short_tiny_config)
    other = make_dataset(2, shape=(64, 64), seed=5), DATA[1]
    second = train(short_tiny_config(), *other, tmp_path / "run")
    assert second.registered_name == "run"
    assert {s.name: s.weights_id for s in list_user_models()}["mine"] == kept


def test_a_run_resumed_in_its_moved_folder_updates_the_model_it_registered(
    tmp_path, short_tiny_config
):
    """The README says a resume updates the run's registered model: moved to another
    folder, the run registered a second model under the new folder's name."""
    train(short_tiny_config(), *DATA, tmp_path / "run")
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = tmp_path / "moved"
    continued = train(short_tiny_config(epochs=2), *DATA, moved, resume_from=moved)
    assert continued.registered_name == "run"
    assert [s.name for s in list_user_models()] == ["run"]
    import shutil

    (tmp_path / "copy").mkdir()  # a copy of the run, resumed, is a run of its own
    shutil.copytree(moved, tmp_path / "copy" / "run")
    copy = tmp_path / "copy" / "run"
    again = train(short_tiny_config(epochs=3), *DATA, copy, resume_from=copy)
    assert again.registered_name != "run"


def test_a_run_resumed_into_a_new_folder_leaves_a_model_registered_from_it(
    tmp_path, short_tiny_config
):
    """A run continued into another folder registered nothing from there before: a model
    registered from that folder before runs had ids (its run moved away) was replaced."""
    kept = _registered_before_run_ids_then_moved(tmp_path / "there", short_tiny_config)
    other = make_dataset(2, shape=(64, 64), seed=5), DATA[1]
    train(short_tiny_config(), *other, tmp_path / "first", model_name="other")
    continued = train(
        short_tiny_config(epochs=2), *other, tmp_path / "there", resume_from=tmp_path / "first"
    )
    assert continued.registered_name not in ("mine", None)
    assert {s.name: s.weights_id for s in list_user_models()}["mine"] == kept
