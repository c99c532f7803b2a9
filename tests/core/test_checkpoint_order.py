"""A run cut short while it writes an epoch's checkpoints leaves them consistent."""

from __future__ import annotations

import dataclasses
import errno

import pytest
import torch

from napari_samtune.core import trainer_files
from napari_samtune.core.models import load_model
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train
from napari_samtune.core.trainer import Trainer


def test_a_disk_full_at_the_best_checkpoint_leaves_last_naming_the_best_on_disk(
    tmp_path, monkeypatch
):
    """Epoch 2 improves on epoch 1, and the disk fills while its best.pt is written. The
    last.pt written before it said epoch 2 was the best, while best.pt still held epoch 1:
    the resumed run then exported epoch 1's weights as the model of epoch 2's score."""
    monkeypatch.setattr(  # every epoch improves on the one before
        Trainer, "_validate", lambda self, stop=None: {"val_iou": 0.1 * (self.progress.epoch + 1)}
    )
    real, writes = trainer_files.write_checkpoint, []

    def full_at_the_second_best(path, *args, **kwargs):
        writes.append(path.name)
        if writes.count("best.pt") == 2 and path.name == "best.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(trainer_files, "write_checkpoint", full_at_the_second_best)
    config = TrainConfig(
        model="random:tiny", epochs=2, n_objects_per_batch=1, min_samples_per_epoch=1,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None, val_fraction=0.5,
    )  # fmt: skip
    with pytest.raises(OSError, match="No space left"):
        train(config, make_dataset(2, shape=(64, 64), seed=0), out_dir=tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    last = torch.load(folder / "last.pt", weights_only=True)
    best = torch.load(folder / "best.pt", weights_only=True)
    assert best["epoch"] == last["progress"]["best_epoch"] + 1
    assert best["best_metric"] == last["best_metric"]


def test_a_disk_full_at_the_first_last_checkpoint_says_where_the_best_weights_are(
    tmp_path, monkeypatch, disk_full_at_last_pt
):
    """The disk fills between epoch 1's best.pt and its last.pt: there is no last.pt to
    continue from and no model.pth, and the error named only last.pt, so best.pt's
    usable weights looked lost."""
    real_save = disk_full_at_last_pt()
    config = TrainConfig(
        model="random:tiny", epochs=2, n_objects_per_batch=1, min_samples_per_epoch=1,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None, val_fraction=0.5,
    )  # fmt: skip
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    with pytest.raises(OSError) as raised:
        train(config, data, out_dir=run)
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert message.startswith(f"could not write {last}: no space left on the device")
    assert f"The weights of epoch 1 are saved in {best}: it is a model as it is" in message
    assert "free space and train again" in message
    assert not last.exists() and not (run / "model.pth").exists()
    assert load_model(best).sam is not None  # what the message promises
    monkeypatch.setattr(torch, "save", real_save)  # space freed: training again works
    with pytest.raises(ValueError, match="already holds checkpoints/best.pt, which a new run"):
        train(config, data, out_dir=run)  # not over those weights
    assert "once best.pt is moved out of it" in message
    best.rename(tmp_path / "kept.pt")
    assert train(config, data, out_dir=run).epochs_done == 2


def test_a_disk_full_at_the_first_last_checkpoint_of_a_resumed_run_offers_its_source(
    tmp_path, monkeypatch, disk_full_at_last_pt
):
    """A run resumed into a new folder, whose disk fills at that folder's first last.pt
    (after the best.pt carried over): the error said the run "cannot be continued", while
    the checkpoint it resumed from is still there to continue from."""
    config = TrainConfig(
        model="random:tiny", epochs=1, n_objects_per_batch=1, min_samples_per_epoch=1,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None, val_fraction=0.5,
    )  # fmt: skip
    data, first = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "first"
    train(config, data, out_dir=first)
    source = first / "checkpoints" / "last.pt"
    real_save = disk_full_at_last_pt()
    longer, second = dataclasses.replace(config, epochs=2), tmp_path / "second"
    with pytest.raises(OSError) as raised:
        train(longer, data, out_dir=second, resume_from=source)
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert f"are saved in {second / 'checkpoints' / 'best.pt'}" in message
    assert f"the run resumed from {source} is still there" in message
    assert "cannot be continued" not in message
    monkeypatch.setattr(torch, "save", real_save)  # space freed: continuing from it works
    assert train(longer, data, out_dir=second, resume_from=source).epochs_done == 2
