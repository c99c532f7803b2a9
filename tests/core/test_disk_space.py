"""A run without room for its checkpoints and model is refused before it trains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_samtune.core import disk_space
from napari_samtune.core.disk_space import space_problem
from napari_samtune.core.train import train


def _written_at_the_fullest(run: Path, models: Path) -> int:
    """The bytes a finished ``run`` held at once at the most: best.pt, last.pt and the next
    last.pt being written, model.pth, and its registered copy in ``models``."""
    checkpoints = run / "checkpoints"
    best, last = (checkpoints / "best.pt").stat().st_size, (checkpoints / "last.pt").stat().st_size
    (registered,) = models.glob("*.pt")
    return best + 2 * last + (run / "model.pth").stat().st_size + registered.stat().st_size


@pytest.mark.parametrize("frozen", [False, True], ids=["whole-model", "frozen-encoder"])
def test_a_run_is_refused_with_less_room_than_its_files_take_and_runs_with_more(
    tmp_path, monkeypatch, data, short_tiny_config, frozen_tiny_config, frozen
):
    """The needed bytes follow from the model (the trained weights only in a frozen
    encoder's checkpoints): 10 % less free space than the files a finished run wrote is
    refused at the start, with nothing written; 10 % more trains."""
    config = (frozen_tiny_config if frozen else short_tiny_config)(epochs=1)
    models = Path(os.environ["SAMTUNE_MODELS_DIR"])
    train(config, data[0], data[1], out_dir=tmp_path / "measured")
    written = _written_at_the_fullest(tmp_path / "measured", models)
    for model in models.iterdir():
        model.unlink()

    monkeypatch.setattr(disk_space, "disk_of", lambda folder: (1, int(0.9 * written)))
    with pytest.raises(OSError) as refused:
        train(config, data[0], data[1], out_dir=tmp_path / "short")
    message = str(refused.value)
    assert f"the disk holding {tmp_path / 'short'} and {models} has " in message
    assert message.endswith(
        "for its checkpoints and model; free space on it, or train into a folder or set "
        "SAMTUNE_MODELS_DIR to one on a disk with more room"
    )
    assert not (tmp_path / "short" / "checkpoints").exists() and not list(models.glob("*.pt"))

    monkeypatch.setattr(disk_space, "disk_of", lambda folder: (1, int(1.1 * written)))
    assert train(config, data[0], data[1], out_dir=tmp_path / "roomy").registered_name


def test_a_resumed_run_counts_its_own_files_as_room(tmp_path, monkeypatch, data, short_tiny_config):
    """Continuing a run replaces its checkpoints: the room they take is the new ones'."""
    config = short_tiny_config(epochs=1)
    models = Path(os.environ["SAMTUNE_MODELS_DIR"])
    run = tmp_path / "run"
    train(config, data[0], data[1], out_dir=run)
    in_run = sum(f.stat().st_size for f in run.rglob("*.p*"))
    room = _written_at_the_fullest(run, models) - in_run + 2**16
    monkeypatch.setattr(disk_space, "disk_of", lambda folder: (1, room))
    finished = train(short_tiny_config(epochs=2), data[0], data[1], out_dir=run, resume_from=run)
    assert finished.epochs_done == 2


def test_a_full_models_folder_on_its_own_disk_names_samtune_models_dir(monkeypatch, tmp_path):
    out, models = tmp_path / "run", tmp_path / "models"
    disks = {out: (1, 10 * 2**30), models: (2, 3 * 2**20)}
    monkeypatch.setattr(disk_space, "disk_of", lambda folder: disks[folder])
    fixes = {out: "train into a folder", models: "set SAMTUNE_MODELS_DIR to one"}
    problem = space_problem({out: 5 * 2**30, models: 5 * 2**20}, fixes)
    assert problem == (
        f"the disk holding {models} has 3 MB free, and this run needs about 5 MB there for "
        "its checkpoints and model; free space on it, or set SAMTUNE_MODELS_DIR to one on a "
        "disk with more room"
    )
    assert space_problem({out: 9 * 2**30, models: 2 * 2**20}, fixes) is None
    close = space_problem({out: 5 * 2**30, models: 3 * 2**20 + 1000}, fixes)
    assert f"has {3 * 2**20:,} bytes free" in close and f"about {3 * 2**20 + 1000:,} bytes" in close


def test_an_unreadable_free_space_refuses_nothing(monkeypatch, tmp_path):
    def unreadable(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(disk_space, "disk_of", unreadable)
    assert space_problem({tmp_path: 2**60}, {tmp_path: "train into a folder"}) is None


def test_a_run_into_the_user_models_folder_needs_the_room_of_both_there(tmp_path):
    """Its own need (checkpoints, model.pth) was replaced by the registered copy's alone."""
    from napari_samtune.core.architectures import TINY, build_sam
    from napari_samtune.core.disk_space import run_needs, tensor_bytes

    sam = build_sam(TINY)
    apart = run_needs(sam, False, tmp_path / "run", tmp_path / "models")
    together = run_needs(sam, False, tmp_path / "models", tmp_path / "models")
    assert together == {tmp_path / "models": sum(apart.values())}
    assert apart[tmp_path / "models"] == tensor_bytes(sam.state_dict().values())


def test_a_lora_runs_whole_checkpoints_count_their_base_weights_twice(
    tmp_path, monkeypatch, data, short_tiny_config
):
    """Merged into the model state and as they are beside the adapters: an estimate that
    left the second copy out was 6 % low here, and a quarter of vit_b's weights low."""
    needs, run_needs = [], disk_space.run_needs

    def spy(*args):
        needed = run_needs(*args)
        needs.append(sum(needed.values()))
        return needed

    monkeypatch.setattr(disk_space, "run_needs", spy)
    models = Path(os.environ["SAMTUNE_MODELS_DIR"])
    train(short_tiny_config(lora_rank=4), data[0], data[1], out_dir=tmp_path / "run")
    written = _written_at_the_fullest(tmp_path / "run", models)
    assert 0.95 * written <= needs[0] <= 1.05 * written


def test_a_resumed_run_needs_room_for_a_last_checkpoint_as_large_as_its_own(
    tmp_path, data, short_tiny_config
):
    """The room of the next last.pt was its tensors' count less what the files there take:
    below the size of the last.pt on disk (its pickled config and history), so a resumed run
    found to fit by that much trained an epoch, then failed writing its checkpoint."""
    from napari_samtune.core.disk_space import run_needs
    from napari_samtune.core.models import load_model

    run = tmp_path / "run"
    train(short_tiny_config(epochs=1), data[0], data[1], out_dir=run)
    sam = load_model(str(run / "model.pth")).sam
    needed = run_needs(sam, False, run, tmp_path / "models")[run]
    assert needed >= (run / "checkpoints" / "last.pt").stat().st_size
