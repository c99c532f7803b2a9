"""Two training runs of one process into one folder: the lock on the folder, held by the
process, let the second in (a notebook's training thread started twice)."""

from __future__ import annotations

import pytest

from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import iter_train, train


def test_a_second_run_of_the_process_into_a_folder_in_use_is_refused(tmp_path, short_tiny_config):
    config = short_tiny_config()
    data = make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)
    out = tmp_path / "run"
    first = iter_train(config, *data, out)
    next(first)  # started: the run holds the folder while it trains
    with pytest.raises(ValueError, match="in use by another training run of this process") as info:
        train(config, *data, out)
    # a generator left before its end is the same process's: "another thread, wait for it to
    # finish" was all it said, and no thread was to wait for
    assert "an iter_train generator left before its end" in str(info.value)
    assert "call its close()" in str(info.value)
    events = list(first)  # the first run goes on, alone
    assert events[-1].exported_model_path == out / "model.pth"
    assert (out / "model.pth").is_file()


def test_runs_one_after_the_other_into_new_folders_are_not_refused(tmp_path, short_tiny_config):
    config = short_tiny_config()
    data = make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)
    for name in ("a", "b"):
        assert train(config, *data, tmp_path / name).exported_model_path.is_file()
