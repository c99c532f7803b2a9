"""A resumed session stopped between its last epoch and its export (a loop broken after
the last EpochDone, an exception, a kill): resuming again was refused with "nothing left to
train" alone, while model.pth and the registered model held an earlier session's weights."""

from __future__ import annotations

import pytest

from napari_samtune.cli import main
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import EpochDone, iter_train, train

DATA = make_dataset(2, shape=(64, 64), seed=0)


def test_the_refusal_says_the_export_is_older_and_how_to_export_the_newer(
    tmp_path, short_tiny_config
):
    run = tmp_path / "run"
    assert train(short_tiny_config(), DATA, out_dir=run).epochs_done == 1
    for event in iter_train(short_tiny_config(epochs=3), DATA, out_dir=run, resume_from=run):
        if isinstance(event, EpochDone) and event.epoch == 2:
            break  # after the last epoch, before the export
    with pytest.raises(ValueError) as refused:
        train(short_tiny_config(epochs=3), DATA, out_dir=run, resume_from=run)
    message = str(refused.value)
    assert "nothing left to train" in message
    assert "Its model.pth (and the model it registered) are of its first 1 epoch(s)" in message
    assert "the session that trained on to epoch 3 ended before exporting" in message
    command = message.split("samtune export ")[1].split(" exports")[0]
    assert command.endswith("--overwrite")
    assert main(["export", *command.split()]) == 0  # as told (paths without spaces here)


def test_no_note_where_the_export_is_of_the_last_epoch(tmp_path, short_tiny_config):
    run = tmp_path / "run"
    train(short_tiny_config(epochs=2), DATA, out_dir=run)
    with pytest.raises(ValueError) as refused:
        train(short_tiny_config(epochs=2), DATA, out_dir=run, resume_from=run)
    assert "samtune export" not in str(refused.value)
