"""The Finetune widget's Continue of a run written before precisions were recorded as asked."""

from __future__ import annotations

import json

import pytest

from napari_samtune._qt.continued_runs import continued_config
from napari_samtune.core import train_setup
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train


@pytest.fixture
def older_run(tmp_path):
    """``older_run(precision)``: a finished one-epoch run whose config.json records
    ``precision``, as versions before 2026-12-06 did after resolving "auto"."""
    config = TrainConfig(
        model="random:tiny", epochs=1, min_samples_per_epoch=2, n_objects_per_batch=1,
        n_iterative_prompts=0, mixed_precision="no", early_stopping=None,
    )  # fmt: skip
    folder = tmp_path / "run"
    train(config, make_dataset(2, shape=(80, 96), seed=3), out_dir=folder)

    def make(precision: str):
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "mixed_precision": precision}))
        return folder

    return make


@pytest.mark.parametrize(
    ("recorded", "fast_bf16", "expected"),
    [("fp16", True, "auto"), ("bf16", False, "auto"), ("bf16", True, "bf16"), ("no", False, "no")],
)
def test_continue_on_a_cpu_drops_a_recorded_precision_it_cannot_run_well(
    older_run, monkeypatch, recorded, fast_bf16, expected
):
    """A run from an older GPU ("fp16") could not be continued from the widget on a CPU at
    all, and the widget has no precision setting to change it."""
    monkeypatch.setattr(train_setup, "cpu_has_fast_bf16", lambda: fast_bf16)
    config, last, history = continued_config(older_run(recorded), 2, "cpu")
    assert config.mixed_precision == expected and config.epochs == 2 and len(history) == 1
    assert last.is_file()
