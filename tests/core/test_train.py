"""The training engine: events, learning, stop/resume, checkpoints, export, frozen encoder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

import napari_samtune.core.trainer as trainer_module
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.checkpoints import CHECKPOINT_FORMAT
from napari_samtune.core.data import ImageLabelPair
from napari_samtune.core.losses import dice_loss, mask_iou, sam_loss
from napari_samtune.core.model_source import load_base_model
from napari_samtune.core.models import load_model
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.synthetic import SyntheticStyle, make_dataset
from napari_samtune.core.train import (
    EpochDone,
    StepDone,
    TrainingFinished,
    TrainingStarted,
    iter_train,
    train,
)
from napari_samtune.core.train_checkpoints import read_checkpoint
from napari_samtune.core.train_embeddings import EmbeddingLRU

# One large object per image: a random tiny SAM learns this in a few dozen steps.
ONE_OBJECT = SyntheticStyle(n_objects=(1, 1), radius=(20.0, 36.0), noise=0.02)


def _config(**changes) -> TrainConfig:
    base = TrainConfig(
        model="random:tiny",
        epochs=2,
        learning_rate=3e-3,
        n_objects_per_batch=2,
        min_samples_per_epoch=3,
        n_iterative_prompts=1,
        mixed_precision="no",
        early_stopping=None,
    )
    return dataclasses.replace(base, **changes)


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def test_loss_falls_and_validation_iou_rises(tmp_path):
    train_data = make_dataset(4, shape=(128, 128), style=ONE_OBJECT, seed=0)
    val_data = make_dataset(2, shape=(128, 128), style=ONE_OBJECT, seed=100)
    config = _config(
        epochs=5, n_objects_per_batch=1, min_samples_per_epoch=8, n_iterative_prompts=0
    )
    events = list(iter_train(config, train_data, val_data, out_dir=tmp_path / "learn"))
    epochs = [e for e in events if isinstance(e, EpochDone)]
    assert epochs[-1].train_loss < 0.5 * epochs[0].train_loss
    assert epochs[-1].val_metrics["val_iou"] > epochs[0].val_metrics["val_iou"] + 0.2
    assert epochs[-1].val_metrics["val_iou_box"] > 0.75
    assert epochs[-1].val_metrics["val_iou_point"] > 0.75


def test_events_arrive_in_order_and_the_export_is_usable(tmp_path, data):
    from napari_samtune.core.models import load_model
    from napari_samtune.core.predict import Segmenter

    events = list(iter_train(_config(), *data, out_dir=tmp_path / "run1"))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TrainingStarted", "StartValidated"] + (
        ["StepDone"] * 3 + ["EpochDone"]
    ) * 2 + ["TrainingFinished"]
    started, finished = events[0], events[-1]
    assert isinstance(started, TrainingStarted) and isinstance(finished, TrainingFinished)
    assert (started.config.patch_size, started.config.device) == (256, "cpu")
    assert started.n_train == 3 and started.n_val == 1 and started.n_trainable_params > 0
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3] * 2
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, StepDone))
    epoch_events = [e for e in events if isinstance(e, EpochDone)]
    assert [e.epoch for e in epoch_events] == [0, 1] and epoch_events[0].is_best
    assert set(epoch_events[0].val_metrics) >= {"val_iou_box", "val_iou_point", "val_iou"}
    assert finished.epochs_done == 2 and not finished.stopped_by_user
    assert 0 < finished.time_to_best_s <= finished.total_time_s
    saved = json.loads((tmp_path / "run1" / "config.json").read_text())
    assert TrainConfig.from_dict(saved) == started.config
    assert len((tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()) == 2
    # The export is a plain SAM state dict that the official modules load strictly ...
    state = torch.load(finished.exported_model_path, weights_only=True)
    build_sam(TINY).load_state_dict(state, strict=True)
    best = _weights(finished.best_checkpoint_path)
    assert all(torch.equal(state[k], best[k]) for k in state)
    # ... registered, so load_model and the Segmenter use it at once.
    assert finished.registered_name == "run1"
    loaded = load_model("run1")
    assert all(torch.equal(v, state[k]) for k, v in loaded.sam.state_dict().items())
    segmenter = Segmenter(loaded.sam, loaded.model_id, use_disk_cache=False)
    segmenter.set_image(data[1][0][0])
    prediction = segmenter.predict(box_xyxy=np.array([10, 10, 60, 60]))
    assert prediction.mask.shape == (96, 96)


@pytest.mark.parametrize("interruption", ["stop mid-epoch", "resume after 1 epoch"])
def test_stop_and_resume_continue_exactly(tmp_path, data, interruption):
    config = _config(lora_rank=2)
    straight = train(config, *data, out_dir=tmp_path / "straight")
    stop = threading.Event()
    if interruption == "stop mid-epoch":
        events = []
        for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
            events.append(event)
            if isinstance(event, StepDone) and event.step == 2:
                stop.set()
        first = events[-1]
        assert first.stopped_by_user and first.epochs_done == 0
        assert [type(e).__name__ for e in events].count("StepDone") == 2
    else:
        first = train(dataclasses.replace(config, epochs=1), *data, out_dir=tmp_path / "part")
    last = first.last_checkpoint_path
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["kind"] == "last"
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (
        (0, 2) if interruption == "stop mid-epoch" else (1, 0)
    )
    assert first.exported_model_path.exists()
    resumed = train(config, *data, out_dir=tmp_path / "resumed", resume_from=last)
    assert resumed.epochs_done == 2 and resumed.best_checkpoint_path.exists()
    a, b = _weights(straight.last_checkpoint_path), _weights(resumed.last_checkpoint_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], _weights(first.last_checkpoint_path)[k]) for k in a)
    # the score before training, measured by the first session, is the resumed run's too
    assert 0 <= straight.start_metric == first.start_metric == resumed.start_metric


def test_a_run_resumed_in_its_folder_updates_its_registered_model(tmp_path, data):
    from napari_samtune.core.models import load_model
    from napari_samtune.core.registry import user_models_dir

    def registered_epochs() -> int:
        sidecar = json.loads((user_models_dir() / "run.json").read_text())
        return sidecar["metadata"]["config"]["epochs"]

    first = train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    assert registered_epochs() == 1
    last = first.last_checkpoint_path
    elsewhere = train(_config(), *data, out_dir=tmp_path / "copy", resume_from=last)
    resumed = train(_config(), *data, out_dir=tmp_path / "run", resume_from=last)
    assert (first.registered_name, elsewhere.registered_name) == ("run", "copy")
    assert resumed.registered_name == "run"  # not "run-2"
    registered = load_model("run").sam.state_dict()
    after = torch.load(resumed.exported_model_path, weights_only=True)
    assert all(torch.equal(registered[k], after[k]) for k in after)
    assert registered_epochs() == 2  # the resumed run's registration replaced the first's


def test_a_name_taken_while_the_run_trained_registers_its_model_under_a_free_one(tmp_path, data):
    """The name is checked before training, but registered after it: a model registered
    under it meanwhile (another window's run of the same minute, a script) failed the
    finished run at its very end, its model exported but never registered nor offered."""
    from napari_samtune.core.user_models import register_user_model

    other = train(_config(epochs=1), *data, out_dir=tmp_path / "other")
    for event in iter_train(_config(epochs=1), *data, tmp_path / "run", model_name="mine"):
        if isinstance(event, TrainingStarted):
            register_user_model(other.exported_model_path, "mine", TINY, {})
    assert isinstance(event, TrainingFinished)
    assert event.registered_name == "mine-2" and event.name_taken == "mine"
    assert "'mine' was taken by another model meanwhile" in event.outcome_message()
    assert load_model("mine-2").model_id == load_model(event.exported_model_path).model_id
    assert load_model("mine").model_id == load_model(other.exported_model_path).model_id
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["registered_name"] == "mine-2"


def test_a_stop_before_the_first_step_saves_and_registers_nothing(tmp_path, data):
    """A model no step has trained is the base model: it is not registered as a new one,
    and a resumed run stopped at once keeps its checkpoint, export and registration."""
    from napari_samtune.core.registry import user_models_dir

    stop = threading.Event()
    stop.set()  # e.g. Stop pressed while the model was loading
    events = list(iter_train(_config(), *data, out_dir=tmp_path / "new", stop_event=stop))
    assert [type(e).__name__ for e in events] == ["TrainingStarted", "TrainingFinished"]
    nothing = events[-1]
    assert nothing.stopped_by_user and nothing.steps_done == 0
    assert (nothing.registered_name, nothing.exported_model_path) == (None, None)
    assert nothing.last_checkpoint_path is None
    assert nothing.outcome_message() == "training stopped before any training step; no model saved"
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    assert not list(user_models_dir().glob("*.json"))

    first = train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    assert first.outcome_message().startswith("training finished after 1 epoch: model 'run'")
    run_files = [
        first.last_checkpoint_path,
        first.exported_model_path,
        tmp_path / "run/summary.json",
        tmp_path / "run/config.json",
    ]
    before = [path.read_bytes() for path in run_files]
    more = _config(epochs=3)
    again = train(more, *data, tmp_path / "run", stop, resume_from=first.last_checkpoint_path)
    assert again.steps_done == 0 and again.registered_name is None
    assert again.outcome_message() == (  # it said "no model saved", with the run's model there
        "training stopped before any training step; the run's checkpoints and model stay as "
        f"they were ({tmp_path / 'run'})"
    )
    assert again.last_checkpoint_path == first.last_checkpoint_path  # still there to resume
    assert [path.read_bytes() for path in run_files] == before
    assert sorted(p.stem for p in user_models_dir().glob("*.json")) == ["run"]
    resumed = train(_config(), *data, tmp_path / "run", resume_from=first.last_checkpoint_path)
    assert resumed.steps_done == 3 and resumed.registered_name == "run"  # updated, not "run-2"


def test_the_summary_of_a_run_in_a_relative_folder_names_its_files_from_anywhere(
    tmp_path, data, monkeypatch
):
    """summary.json said "run/checkpoints/best.pt": relative to the folder training was
    started in, so read from any other folder it named no file."""
    monkeypatch.chdir(tmp_path)
    train(_config(epochs=1), *data, out_dir="run")
    monkeypatch.chdir(tmp_path / "run")
    summary = json.loads(Path("summary.json").read_text())
    for key in ("best_checkpoint_path", "last_checkpoint_path", "exported_model_path"):
        assert Path(summary[key]).is_absolute() and Path(summary[key]).is_file(), key
    assert Path(summary["exported_model_path"]) == tmp_path / "run" / "model.pth"


@pytest.mark.parametrize("val_metrics", [{}, {"val_iou": 0.5}])
def test_an_epoch_line_has_one_space_between_its_values(val_metrics):
    """Without validation it read "train_loss=1.5942  lr=1e-05": two spaces."""
    from napari_samtune.core.train import epoch_line

    event = EpochDone(
        epoch=0, train_loss=1.5942, val_metrics=val_metrics, metric=-1.5942,
        metric_name="negative train loss", learning_rate=1e-5, checkpoint_path=None,
        is_best=True, best_metric=-1.5942, eta_seconds=3.0, epoch_seconds=2.04,
    )  # fmt: skip
    metrics = " val_iou=0.5000" if val_metrics else ""
    assert epoch_line(event, 3) == f"epoch 1/3: train_loss=1.5942{metrics} lr=1e-05 2.0s (best)"


def test_train_from_python_can_show_progress(tmp_path, data, capsys, monkeypatch):
    from napari_samtune.core import progress

    finished = train(_config(), *data, out_dir=tmp_path / "quiet")
    assert capsys.readouterr().out == ""
    shown = train(_config(), *data, out_dir=tmp_path / "shown", progress=True)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_iou=" in lines[0] and "train_loss=" in lines[1]
    # stderr is not a terminal here: an epoch shorter than the log interval (30 s) drew a
    # "0/N" line of its bar and nothing more; the epoch line above says its result
    assert "epoch 1/2" not in captured.err and "step/s" not in captured.err
    assert shown.epochs_done == finished.epochs_done == 2
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0)  # epochs as long as the interval
    train(_config(), *data, out_dir=tmp_path / "logged", progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "step/s" in err and "\r" not in err  # the bars, as lines


def test_train_from_python_shows_progress_in_the_first_torchrun_process_only(
    tmp_path, data, capsys, monkeypatch
):
    """A script calling train(progress=True) under torchrun printed every bar and epoch
    line once per process. (Each run here trains alone: no process group is joined.)"""
    from napari_samtune.core import distributed

    monkeypatch.setattr(distributed, "_world_size_from_env", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # as torchrun sets them in its second process
    train(_config(epochs=1), *data, out_dir=tmp_path / "second", progress=True)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    train(_config(epochs=1), *data, out_dir=tmp_path / "first", progress=True)
    assert "epoch 1/1: train_loss=" in capsys.readouterr().out


def test_resuming_with_another_model_setup_is_refused(tmp_path, data):
    first = train(_config(epochs=1, min_samples_per_epoch=1), *data, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="lora_rank: 0 -> 4"):
        train(
            _config(lora_rank=4),
            *data,
            out_dir=tmp_path / "b",
            resume_from=first.last_checkpoint_path,
        )
    with pytest.raises(ValueError, match="weights only.*last.pt"):
        train(_config(), *data, out_dir=tmp_path / "c", resume_from=first.best_checkpoint_path)
    with pytest.raises(ValueError, match="has done 1 epoch.*nothing left.*epochs above 1"):
        train(_config(epochs=1), *data, tmp_path / "a", resume_from=first.last_checkpoint_path)
    with pytest.raises(ValueError, match="already holds a training run.*resume_from"):
        train(_config(), *data, out_dir=tmp_path / "a")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="out_dir '.*file' is a file; give a folder"):
        train(_config(), *data, out_dir=tmp_path / "file")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_new_run_never_replaces_a_model_kept_in_its_folder(tmp_path, data):
    """A model exported into a folder (or a run's best.pt kept there) was replaced without a
    word by a new run given that folder: only last.pt, metrics and summary were looked for."""
    quick = _config(epochs=1, min_samples_per_epoch=1)
    first = train(quick, *data, out_dir=tmp_path / "a")
    kept = tmp_path / "kept"
    (kept / "checkpoints").mkdir(parents=True)
    shutil.copyfile(first.exported_model_path, kept / "model.pth")
    with pytest.raises(ValueError, match=r"kept' already holds model.pth, which a new run would"):
        train(quick, *data, out_dir=kept)
    shutil.copyfile(first.best_checkpoint_path, kept / "checkpoints" / "best.pt")
    (kept / "model.pth").unlink()
    with pytest.raises(ValueError, match="already holds checkpoints/best.pt, which a new run"):
        train(quick, *data, out_dir=kept)
    assert (
        kept / "checkpoints" / "best.pt"
    ).read_bytes() == first.best_checkpoint_path.read_bytes()
    assert sorted(p.name for p in kept.rglob("*")) == ["best.pt", "checkpoints"]


def test_a_run_never_writes_into_another_runs_folder(tmp_path, data):
    """Resuming run a into run b's folder would mix their checkpoints, metrics and model."""
    quick = _config(epochs=1, min_samples_per_epoch=1)
    first = train(quick, *data, out_dir=tmp_path / "a")
    train(dataclasses.replace(quick, seed=5), *data, out_dir=tmp_path / "b")
    b_files = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="holds another training run .*mix the two runs"):
        train(_config(epochs=2), *data, tmp_path / "b", resume_from=first.last_checkpoint_path)
    assert {p: p.read_bytes() for p in b_files} == b_files  # nothing of b changed
    shutil.rmtree(tmp_path / "b" / "checkpoints")  # its records and registered model remain
    with pytest.raises(ValueError, match=r"already holds a training run \(metrics.jsonl, summ"):
        train(quick, *data, out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="holds another training run"):
        train(_config(epochs=2), *data, tmp_path / "b", resume_from=first.last_checkpoint_path)
    resumed = train(_config(epochs=2), *data, tmp_path / "c", resume_from=tmp_path / "a")
    assert resumed.epochs_done == 2  # a's folder continued into a new one, with a's best.pt
    assert (tmp_path / "c/checkpoints/best.pt").is_file()


def test_a_models_folder_that_cannot_be_written_is_refused_before_training(
    tmp_path, data, monkeypatch
):
    """Registration failed at the end, after the whole run, with an OSError."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the models folder should be")
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(blocker / "models"))
    with pytest.raises(ValueError) as refused:
        train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    assert str(refused.value) == (
        f"the user models folder {str(blocker / 'models')!r} cannot be made: {str(blocker)!r} "
        "is a file, so the trained model could not be registered there; set "
        "SAMTUNE_MODELS_DIR to a folder you can write to"
    )
    assert not (tmp_path / "run").exists()


def test_lora_export_has_the_original_keys_and_changes_only_qkv(tmp_path, data):
    finished = train(_config(lora_rank=2, epochs=1), *data, out_dir=tmp_path / "lora")
    exported = torch.load(finished.exported_model_path, weights_only=True)
    base, _, _ = load_base_model("random:tiny", seed=0)
    base_state = base.state_dict()
    assert exported.keys() == base_state.keys()
    encoder = [k for k in exported if k.startswith("image_encoder.")]
    changed = {k for k in encoder if not torch.equal(exported[k], base_state[k])}
    assert changed == {k for k in encoder if k.endswith("attn.qkv.weight")}


def _count_encoder_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = ImageEncoderViT.forward

    def counting(self, x):
        calls[0] += x.shape[0]
        return original(self, x)

    monkeypatch.setattr(ImageEncoderViT, "forward", counting)
    return calls


def test_a_frozen_encoder_runs_only_in_the_first_epoch(tmp_path, data, monkeypatch):
    calls = _count_encoder_calls(monkeypatch)
    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", "0")  # the in-memory cache alone (no disk)
    config = _config(epochs=3, freeze=("image_encoder",), min_samples_per_epoch=4)
    per_epoch, weights = [], {}
    for cache_size in (64, 0):
        calls[0] = 0
        counts = []
        run = tmp_path / f"cache{cache_size}"
        for event in iter_train(
            dataclasses.replace(config, embedding_cache_size=cache_size), *data, out_dir=run
        ):
            if isinstance(event, EpochDone):
                counts.append(calls[0])
            if isinstance(event, TrainingFinished):
                weights[cache_size] = _weights(event.last_checkpoint_path)
        per_epoch.append(np.diff([0, *counts]).tolist())
    cached, uncached = per_epoch
    assert 4 <= cached[0] <= 4 + 4 and cached[1:] == [0, 0]  # 4 patches + validation tiles
    assert uncached[1] >= 4 and uncached[2] >= 4
    assert all(torch.equal(weights[64][k], weights[0][k]) for k in weights[64])  # same training


def test_trainable_only_checkpoints_hold_the_trained_weights(tmp_path, data):
    config = _config(epochs=1, freeze=("image_encoder",), checkpoint_trainable_only=True)
    finished = train(config, *data, out_dir=tmp_path / "small")
    checkpoint = torch.load(finished.last_checkpoint_path, weights_only=True)
    assert not checkpoint["model_state_complete"]
    assert checkpoint["model_state"] and all(
        k.startswith(("prompt_encoder.", "mask_decoder.")) for k in checkpoint["model_state"]
    )
    exported = torch.load(finished.exported_model_path, weights_only=True)
    best = torch.load(finished.best_checkpoint_path, weights_only=True)["model_state"]
    assert all(torch.equal(exported[k], v) for k, v in best.items())
    base, _, _ = load_base_model("random:tiny", seed=0)
    assert torch.equal(
        exported["image_encoder.patch_embed.proj.weight"],
        base.state_dict()["image_encoder.patch_embed.proj.weight"],
    )
    # as a model, best.pt completes its base model: the weights that were exported
    loaded = load_model(finished.best_checkpoint_path).sam.state_dict()
    assert loaded.keys() == exported.keys()
    assert all(torch.equal(loaded[k], v) for k, v in exported.items())


def test_early_stopping_ends_a_run_that_does_not_improve(tmp_path, data):
    config = _config(epochs=6, learning_rate=1e-12, early_stopping=2, min_samples_per_epoch=1)
    finished = train(config, *data, out_dir=tmp_path / "flat")
    assert finished.stopped_early and finished.epochs_done == 3 and finished.best_epoch == 0


def test_bf16_batches_and_gradient_accumulation(tmp_path, data):
    config = _config(
        epochs=1, mixed_precision="bf16", batch_size=2, grad_accumulation=2, min_samples_per_epoch=8
    )
    events = list(iter_train(config, *data, out_dir=tmp_path / "bf16"))
    assert events[0].steps_per_epoch == 2 and events[0].config.mixed_precision == "bf16"
    steps = [e for e in events if isinstance(e, StepDone)]
    assert len(steps) == 2 and all(np.isfinite(s.loss) for s in steps)


def _fp16_like_an_older_gpu(monkeypatch, init_scale: float = 2.0**16) -> None:
    """Make the trainer take the fp16 + GradScaler path that "auto" picks on GPUs without
    bf16 (GTX 1080, RTX 5000, V100), here on the CPU."""
    monkeypatch.setattr(trainer_module, "resolve_precision", lambda mode, device: "fp16")
    scaler = torch.amp.GradScaler
    monkeypatch.setattr(
        torch.amp, "GradScaler", lambda device: scaler(device, init_scale=init_scale)
    )


def test_fp16_grad_scaler_state_is_checkpointed_and_resumed(tmp_path, data, monkeypatch):
    _fp16_like_an_older_gpu(monkeypatch)
    config = _config()
    straight = train(config, *data, out_dir=tmp_path / "straight")
    stop, events = threading.Event(), []
    for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
        events.append(event)
        if isinstance(event, StepDone) and event.step == 2:
            stop.set()
    assert events[0].config.mixed_precision == "fp16"
    part = torch.load(events[-1].last_checkpoint_path, map_location="cpu", weights_only=True)
    assert part["scaler_state"]["_growth_tracker"] == 2  # two unscaled, finite steps
    last = events[-1].last_checkpoint_path
    resumed = train(config, *data, out_dir=tmp_path / "resumed", resume_from=last)
    end = [
        torch.load(f.last_checkpoint_path, map_location="cpu", weights_only=True)
        for f in (straight, resumed)
    ]
    assert end[0]["scaler_state"] == end[1]["scaler_state"]
    assert end[1]["scaler_state"]["_growth_tracker"] == 6  # continued from the checkpoint
    a, b = end[0]["model_state"], end[1]["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_steps_whose_gradients_overflow_leave_the_weights_untouched(
    tmp_path, data, monkeypatch
):
    _fp16_like_an_older_gpu(monkeypatch, init_scale=2.0**60)  # every fp16 gradient overflows
    config = _config(epochs=1)
    finished = train(config, *data, out_dir=tmp_path / "overflow")
    checkpoint = torch.load(finished.last_checkpoint_path, map_location="cpu", weights_only=True)
    assert checkpoint["scaler_state"]["scale"] == 2.0**57  # backed off once per skipped step
    initial = load_base_model(config.model, seed=config.seed)[0].state_dict()
    state = checkpoint["model_state"]
    assert all(torch.equal(state[k], initial[k]) for k in initial)


def test_fused_attention_trains_like_the_stock_attention(tmp_path, data):
    losses, weights = {}, {}
    for fast in (True, False):
        config = _config(epochs=1, fast_attention=fast, min_samples_per_epoch=2)
        finished = None
        for event in iter_train(config, *data, out_dir=tmp_path / str(fast)):
            losses.setdefault(fast, []).append(getattr(event, "loss", None))
            finished = event
        weights[fast] = _weights(finished.last_checkpoint_path)
    assert np.allclose([x for x in losses[True] if x], [x for x in losses[False] if x], rtol=1e-4)
    key = "image_encoder.blocks.1.attn.qkv.weight"
    assert torch.allclose(weights[True][key], weights[False][key], atol=1e-5)


def test_without_validation_the_train_loss_decides(tmp_path, data):
    finished = train(_config(epochs=1, val_fraction=0.0), data[0], out_dir=tmp_path / "noval")
    assert finished.metric_name == "negative train loss" and finished.best_metric < 0


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(mixed_precision="fp16"), ValueError, "fp16.*needs a CUDA GPU"),
        (dict(model="random:nothing"), ValueError, "unknown architecture 'nothing'"),
        (dict(device="cuda:3"), ValueError, "device='cuda:3'"),
        (dict(lora_rank=100_000), ValueError, "lora_rank=100000 is above"),  # no preset check
    ],
)
def test_bad_settings_fail_before_training(tmp_path, data, change, error, message):
    with pytest.raises(error, match=message):
        next(iter_train(_config(**change), *data, out_dir=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_pairs_without_objects_are_left_out_and_named(tmp_path, data):
    """An empty field of view in a folder of annotations does not stop the run (Cellpose
    leaves such images out too); the run says which pairs it did not use."""
    (train_pairs, val_pairs), blank = data, np.zeros((96, 96), np.uint16)
    empty_train = ImageLabelPair(blank.astype(np.uint8), blank, "empty field.tif")
    empty_val = ImageLabelPair(blank.astype(np.uint8), blank, "not annotated yet.tif")
    config = _config(epochs=1)
    events = list(
        iter_train(config, [*train_pairs, empty_train], [empty_val, *val_pairs], tmp_path / "r")
    )
    started, finished = events[0], events[-1]
    assert started.left_out == ("empty field.tif", "not annotated yet.tif (validation)")
    assert (started.n_train, started.n_val, finished.epochs_done) == (3, 1, 1)
    summary = read_checkpoint(finished.last_checkpoint_path)["data_summary"]
    assert summary["left_out"] == list(started.left_out)
    assert "empty field.tif" not in summary["train_images"]
    with pytest.raises(ValueError, match="none of the 2 validation pairs has any object.*empty"):
        next(iter_train(config, train_pairs, [empty_val, empty_train], tmp_path / "x"))


def test_validation_that_repeats_training_data_is_named(tmp_path, data):
    """The same folder given for training and validation would pick the best epoch by how
    well the model fits its training data: the run warns."""
    train_pairs, val_pairs = data
    image, labels = train_pairs[1]
    copy = ImageLabelPair(image.copy(), labels.copy(), "copy of pair 1.tif")
    events = iter_train(_config(epochs=1), train_pairs, [*val_pairs, copy], tmp_path / "r")
    started = next(events)
    events.close()
    assert started.val_repeats == ("copy of pair 1.tif",)
    message = started.val_repeats_message()
    assert message.startswith("1 of 2 validation pair(s) are also training pairs")
    assert "copy of pair 1.tif" in message and "validate on other images" in message

    changed = ImageLabelPair(image, np.where(labels == labels.max(), 0, labels), "changed.tif")
    events = iter_train(_config(epochs=1), train_pairs, [*val_pairs, changed], tmp_path / "s")
    started = next(events)
    events.close()
    assert started.val_repeats == () and started.val_repeats_message() == ""


def test_bad_data_and_names_fail_before_training(tmp_path, data):
    image, labels = data[0][0]
    with pytest.raises(TypeError, match="'pair 0' have dtype float32"):
        next(iter_train(_config(), [(image, labels.astype(np.float32))], out_dir=tmp_path))
    with pytest.raises(ValueError, match="'pair 0' contain no objects"):
        next(iter_train(_config(), [(image, labels * 0)], out_dir=tmp_path))
    with pytest.raises(ValueError, match="model_name='vit_b'.*already"):
        next(iter_train(_config(), *data, out_dir=tmp_path, model_name="vit_b"))
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        next(iter_train({"epochs": 1}, *data, out_dir=tmp_path))


def test_losses_train_the_best_candidate_and_the_iou_head():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    perfect = target * 20 - 10
    assert dice_loss(perfect, target).item() < 1e-3
    assert mask_iou(perfect, target).item() == 1.0
    logits = torch.cat([-perfect, perfect, torch.zeros_like(perfect) - 10], dim=1)
    iou_predictions = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    loss, best = sam_loss(logits, iou_predictions, target, "dice_bce")
    assert best.tolist() == [1] and loss.item() < 1e-2
    loss, _ = sam_loss(logits, torch.tensor([[0.0, 0.0, 0.0]]), target, "dice_focal")
    assert loss.item() > 1.0 / 3 - 0.01  # the IoU head missed the good candidate's IoU of 1


def test_embedding_cache_evicts_the_least_recently_used():
    class Item:
        def __init__(self, value):
            self.pixels = torch.full((1, 2, 2), float(value))

    computed = []

    def compute(pixels):
        computed.extend(pixels[:, 0, 0, 0].tolist())
        return pixels[:, None] * 2

    cache = EmbeddingLRU(capacity=2)
    items = {k: Item(k) for k in range(3)}
    out = cache.get_many([0, 1], [items[0], items[1]], compute)
    assert out.shape == (2, 1, 1, 2, 2) and computed == [0, 1]
    cache.get_many([0], [items[0]], compute)  # 0 is now the most recent
    cache.get_many([2], [items[2]], compute)  # evicts 1
    cache.get_many([0, 1], [items[0], items[1]], compute)
    assert computed == [0, 1, 2, 1] and len(cache) == 2


def test_adam_runs_fused_and_steps_like_the_plain_loop():
    from napari_samtune.core.train_setup import make_optimizer

    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    fused_params = [torch.nn.Parameter(w.clone()) for w in weights]
    plain_params = [torch.nn.Parameter(w.clone()) for w in weights]
    fused, _ = make_optimizer(fused_params, _config(learning_rate=1e-2))
    plain = torch.optim.Adam(plain_params, lr=1e-2, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for params, optimizer in ((fused_params, fused), (plain_params, plain)):
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
    for a, b in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for param, weight in zip(fused_params, weights, strict=True):
        assert not torch.equal(param, weight)  # it moved


def test_validation_iou_and_dice_count_pixels_as_a_torch_reduction(rng):
    """Validation counts mask pixels with numpy on the CPU (17x faster): same numbers."""
    from napari_samtune.core.train_validation import _iou_dice

    masks = torch.as_tensor(rng.random((5, 40, 60)) < 0.4)
    truth = torch.as_tensor(rng.random((5, 60, 40)) < 0.3).transpose(1, 2)  # a strided view
    masks[0], truth[0] = False, False  # nothing predicted, nothing there: 0, not NaN
    masks[1] = truth[1]  # perfect
    iou, dice = _iou_dice(masks, truth)
    inter = (masks & truth).sum(dim=(1, 2)).float()
    union = (masks | truth).sum(dim=(1, 2)).float()
    sizes = masks.sum(dim=(1, 2)).float() + truth.sum(dim=(1, 2)).float()
    torch.testing.assert_close(iou, inter / union.clamp(min=1), rtol=0, atol=0)
    torch.testing.assert_close(dice, 2 * inter / sizes.clamp(min=1), rtol=0, atol=0)
    assert (iou[0], iou[1], dice[1]) == (0.0, 1.0, 1.0)


def test_a_diverging_run_stops_before_nan_reaches_the_weights(tmp_path, data):
    """A learning rate far too high: no NaN model is saved, exported or registered."""
    from napari_samtune.core.registry import user_models_dir

    first = train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    before = first.last_checkpoint_path.read_bytes()
    wild = _config(epochs=3, learning_rate=1e38)
    became = r"(the loss became|the gradients' norm became)"
    with pytest.raises(ValueError, match=rf"diverged at epoch 2, step \d+: {became}") as err:
        train(wild, *data, tmp_path / "run", resume_from=tmp_path / "run")
    assert "learning_rate=1e+38 is too high" in str(err.value)
    assert "e.g. learning_rate=0.0001 (the presets use 1e-05)" in str(err.value)
    assert f"kept ({first.best_checkpoint_path}, {first.last_checkpoint_path})" in str(err.value)
    assert first.last_checkpoint_path.read_bytes() == before  # resumable as it was
    with pytest.raises(ValueError, match="diverged at epoch 1") as err:
        train(wild, *data, out_dir=tmp_path / "fresh")
    assert "kept" not in str(err.value)
    assert not (tmp_path / "fresh" / "model.pth").exists()
    assert sorted(p.stem for p in user_models_dir().glob("*.json")) == ["run"]
    calmer = _config(epochs=2, learning_rate=1e-4)  # the resume the message suggests
    events = list(iter_train(calmer, *data, tmp_path / "run", resume_from=tmp_path / "run"))
    steps = [e for e in events if type(e).__name__ == "StepDone"]
    assert steps and all(e.learning_rate == 1e-4 for e in steps)  # not the checkpoint's 3e-3


class _InfiniteGradient(torch.autograd.Function):
    """The loss as it is, with an infinite gradient: a finite loss of 1e25 whose step
    overflows."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * torch.inf


@pytest.mark.parametrize("where", ["gradients", "weights"])
def test_a_step_of_finite_loss_never_saves_non_finite_weights(tmp_path, data, monkeypatch, where):
    """A finite loss (4.9e24) gave inf gradients, which Adam made NaN weights: best.pt and
    last.pt held them, 'samtune export' exported them, and a run could end with exit 0."""
    from napari_samtune.core.train_step import SamTrainingStep

    first = train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    kept = {p: p.read_bytes() for p in (first.best_checkpoint_path, first.last_checkpoint_path)}
    if where == "gradients":  # from the second step: at the first, the file is blamed
        forward, calls = SamTrainingStep.forward, []

        def overflowing(*args, **kwargs):
            calls.append(1)
            loss = forward(*args, **kwargs)
            return loss if len(calls) == 1 else _InfiniteGradient.apply(loss)

        monkeypatch.setattr(SamTrainingStep, "forward", overflowing)
        said = r"at epoch 2, step 2: the gradients' norm became (inf|nan) \(at a loss of \d"
    else:
        step, calls = torch.optim.Adam.step, []

        def poisoned(optimizer, *args, **kwargs):  # the epoch's last of 3 steps: no loss after
            out = step(optimizer, *args, **kwargs)
            calls.append(1)
            if len(calls) == 3:
                optimizer.param_groups[0]["params"][0].data[0] = torch.nan
            return out

        monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
        said = r"by the end of epoch 2: a step made the weights' norm nan; "
    with pytest.raises(ValueError, match=rf"diverged {said}.*learning_rate=") as err:
        train(_config(epochs=2), *data, tmp_path / "run", resume_from=tmp_path / "run")
    assert "the first step resumed" not in str(err.value)  # the step's doing, not the file's
    assert all(path.read_bytes() == before for path, before in kept.items())


def test_a_checkpoint_whose_weights_diverged_already_is_not_blamed_on_the_new_rate(tmp_path, data):
    """Resuming weights that were finite but wrecked failed at the first step with
    "learning_rate=1e-05 is too high ... resume from the last one", over and over."""
    first = train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    checkpoint = torch.load(first.last_checkpoint_path, weights_only=True)
    for name, tensor in checkpoint["model_state"].items():
        if name.startswith("mask_decoder.") and tensor.is_floating_point():
            tensor.mul_(1e30)  # finite, and the forward pass overflows
    torch.save(checkpoint, first.last_checkpoint_path)
    with pytest.raises(ValueError, match="diverged at the first step resumed from") as err:
        train(
            _config(epochs=2, learning_rate=1e-5),
            *data,
            tmp_path / "run",
            resume_from=tmp_path / "run",
        )
    said = str(err.value)
    assert "the weights in that checkpoint had diverged already" in said
    assert "train again from the start (the base model)" in said and "is too high" not in said


def test_an_fp16_run_that_diverges_stops_after_a_few_skipped_steps(tmp_path, data, monkeypatch):
    """fp16 checked no loss: the gradient scaler skipped every step of a diverged run to its
    last epoch, which reported a NaN loss. The scaler is made here for the CPU, as a GPU
    run makes it for CUDA."""
    from napari_samtune.core import trainer_resume
    from napari_samtune.core.trainer_divergence import FP16_NONFINITE_STEPS

    setup = trainer_resume.TrainerResumeMixin._setup_optimizer

    def with_scaler(self, checkpoint):
        setup(self, checkpoint)
        self.scaler = torch.amp.GradScaler("cpu")

    monkeypatch.setattr(trainer_resume.TrainerResumeMixin, "_setup_optimizer", with_scaler)
    steps = []
    wild = _config(epochs=4, learning_rate=1e38, min_samples_per_epoch=6)
    with pytest.raises(ValueError, match=r"training diverged at epoch \d+, step \d+: the loss"):
        for event in iter_train(wild, *data, out_dir=tmp_path / "run"):
            steps += [event] if type(event).__name__ == "StepDone" else []
    nonfinite = [e for e in steps if not np.isfinite(e.loss)]
    assert len(nonfinite) == FP16_NONFINITE_STEPS - 1  # the last raised instead of stepping
    assert len(steps) < 4 * 6


def test_one_step_the_fp16_scaler_skips_does_not_stop_the_run(tmp_path, data, monkeypatch):
    """The weights' check at an epoch's end looked at the epoch's loss, which in fp16
    holds the steps the scaler skips on purpose: one overflow stopped the run."""
    from napari_samtune.core import trainer_resume
    from napari_samtune.core.train_step import SamTrainingStep

    setup = trainer_resume.TrainerResumeMixin._setup_optimizer

    def with_scaler(self, checkpoint):
        setup(self, checkpoint)
        self.scaler = torch.amp.GradScaler("cpu")

    monkeypatch.setattr(trainer_resume.TrainerResumeMixin, "_setup_optimizer", with_scaler)
    forward, calls = SamTrainingStep.forward, []

    def one_overflow(*args, **kwargs):
        calls.append(1)
        loss = forward(*args, **kwargs)
        return loss * torch.inf if len(calls) == 2 else loss

    monkeypatch.setattr(SamTrainingStep, "forward", one_overflow)
    finished = train(_config(epochs=2), *data, out_dir=tmp_path / "run")
    assert finished.epochs_done == 2


def test_the_divergence_checks_need_no_torch_newer_than_the_one_supported(
    tmp_path, data, monkeypatch
):
    """torch.nn.utils.get_total_norm is of torch 2.6; pyproject allows torch 2.4."""
    monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    assert train(_config(epochs=1), *data, out_dir=tmp_path / "run").epochs_done == 1


def test_a_run_stopped_after_a_step_that_made_its_weights_nan_writes_no_checkpoint(
    tmp_path, data, monkeypatch
):
    """Stopped (Ctrl+C, Stop) after such a step, the run wrote last.pt with the NaN
    weights, then failed at their export; its weights are checked at no epoch's end."""
    step = torch.optim.Adam.step

    def poisoned(optimizer, *args, **kwargs):
        out = step(optimizer, *args, **kwargs)
        optimizer.param_groups[0]["params"][0].data[0] = torch.nan
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    stop = threading.Event()
    with pytest.raises(ValueError, match="diverged before it stopped: a step made the weights"):
        for event in iter_train(_config(epochs=2), *data, tmp_path / "run", stop_event=stop):
            if isinstance(event, StepDone):
                stop.set()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_the_learning_rate_suggested_after_divergence_is_one_finetuning_takes():
    """A tenth of 1e8, the advice for --lr 1e8, diverged again."""
    from napari_samtune.core.trainer_divergence import _calmer

    assert [_calmer(lr) for lr in (1e8, 1e-2, 1e-3, 5e-5)] == pytest.approx(
        [1e-4, 1e-4, 1e-4, 5e-6]
    )


@pytest.mark.parametrize(
    ("batch_size", "grad_accumulation", "first_step", "again"),
    [(2, 1, 2, 1), (3, 1, 2, 0), (1, 2, 2, 1), (1, 1, 4, 0)],
)
def test_a_mid_epoch_resume_in_steps_of_another_size_trains_every_sample(
    tmp_path, data, monkeypatch, batch_size, grad_accumulation, first_step, again
):
    """Stopped after 3 samples in steps of 1, resumed in steps of 2 or 3: step 2 began
    at sample 3 (1 sample skipped) or at sample 4 (3 skipped); now it goes on from the
    step holding the first sample not trained on, and says when it trains on some again."""
    from napari_samtune.core.trainer import Trainer

    trained = []
    training_input = Trainer._training_input

    def record(self, index, epoch):
        trained.append((epoch, index))
        return training_input(self, index, epoch)

    monkeypatch.setattr(Trainer, "_training_input", record)
    config = _config(epochs=1, min_samples_per_epoch=7)
    stop = threading.Event()
    for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
        if isinstance(event, StepDone) and event.step == 3:
            stop.set()
    assert len(trained) == 3  # the epoch's first 3 samples, in its shuffled order
    resumed = dataclasses.replace(
        config, batch_size=batch_size, grad_accumulation=grad_accumulation
    )
    events = list(iter_train(resumed, *data, tmp_path / "part", resume_from=tmp_path / "part"))
    started, steps = events[0], [e for e in events if isinstance(e, StepDone)]
    assert steps[0].step == first_step
    samples = [index for _, index in trained]
    assert sorted(set(samples)) == list(range(7))  # none skipped
    assert len(samples) == 7 + again
    said = [n for n in started.notes if "in steps of 1 and continues" in n]
    assert len(said) == (batch_size * grad_accumulation != 1)
    if again:
        assert f"training on {again} sample(s) of the epoch again" in said[0]


def test_a_resume_after_an_epochs_last_step_in_steps_of_another_size_goes_to_the_next(
    tmp_path, data
):
    """Stopped after the epoch's last step, before its validation: no step is left."""
    config = _config(epochs=2, min_samples_per_epoch=7)
    stop = threading.Event()
    for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
        if isinstance(event, StepDone) and event.step == 7:
            stop.set()
    resumed = dataclasses.replace(config, batch_size=2)
    events = list(iter_train(resumed, *data, tmp_path / "part", resume_from=tmp_path / "part"))
    steps = [(e.epoch, e.step, e.steps_per_epoch) for e in events if isinstance(e, StepDone)]
    assert steps == [(1, 1, 4), (1, 2, 4), (1, 3, 4), (1, 4, 4)]
    assert events[0].notes[-1].endswith("continues in steps of 2: its samples are done")


def test_a_resume_after_an_epochs_last_step_with_another_process_count_trains_no_step_again(
    tmp_path, data
):
    """Stopped after the last step of an epoch under torchrun and resumed alone, the whole
    epoch was trained again ("epoch 1 starts over"), though every sample was done."""
    config = _config(min_samples_per_epoch=5)
    stop = threading.Event()
    for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
        if isinstance(event, StepDone) and event.step == 3:
            stop.set()
    last = tmp_path / "part/checkpoints/last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["data_summary"]["world_size"] = 2  # as if each of 2 processes did 3 of 5
    torch.save(checkpoint, last)
    events = list(iter_train(config, *data, out_dir=tmp_path / "part", resume_from=last))
    steps = [(e.epoch, e.step) for e in events if isinstance(e, StepDone)]
    assert steps == [(1, i) for i in range(1, 6)]  # epoch 1 only ends (validation) ...
    assert [e.epoch for e in events if isinstance(e, EpochDone)] == [0, 1]
    assert events[0].notes == (
        "the run was stopped after the last step of epoch 1 with 2 process(es) and "
        "continues with 1: its samples are done",
    )


@pytest.mark.parametrize(("saved_world_size", "first_step"), [(1, 3), (2, 1)])
def test_a_mid_epoch_resume_with_another_process_count_restarts_the_epoch(
    tmp_path, data, saved_world_size, first_step
):
    """Steps count each process's own samples: with another count they would skip some."""
    config = _config(min_samples_per_epoch=5)
    stop, events = threading.Event(), []
    for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
        if isinstance(event, StepDone) and event.step == 2:
            stop.set()
    last = tmp_path / "part/checkpoints/last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["data_summary"]["world_size"] = saved_world_size  # as if run by torchrun
    torch.save(checkpoint, last)
    events = list(iter_train(config, *data, out_dir=tmp_path / "part", resume_from=last))
    started, steps = events[0], [e for e in events if isinstance(e, StepDone)]
    assert (steps[0].epoch, steps[0].step) == (0, first_step)
    restarted = [n for n in started.notes if "epoch 1 starts over" in n]
    assert len(restarted) == (saved_world_size != 1)


@pytest.mark.parametrize("saved_world_size", [1, 2])
def test_a_mid_epoch_resume_with_another_number_of_samples_restarts_the_epoch(
    tmp_path, data, saved_world_size
):
    """The epoch's shuffle and steps are of its number of samples: resumed with fewer, 3
    steps of 8 samples on 2 processes were said to be "its samples are done" (counted
    against 2 samples), and on one process the epoch went on in another shuffle, unsaid."""
    config = _config(min_samples_per_epoch=8)
    stop = threading.Event()
    for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
        if isinstance(event, StepDone) and event.step == 3:
            stop.set()
    last = tmp_path / "part/checkpoints/last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["data_summary"]["world_size"] = saved_world_size  # 2: as if run by torchrun
    torch.save(checkpoint, last)
    fewer = dataclasses.replace(config, min_samples_per_epoch=4)
    events = list(iter_train(fewer, *data, out_dir=tmp_path / "part", resume_from=last))
    steps = [(e.epoch, e.step) for e in events if isinstance(e, StepDone)]
    assert steps[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]  # epoch 1 anew, in 4 samples
    (note,) = [n for n in events[0].notes if "starts over" in n]
    assert note.endswith(
        "with 2 process(es) and 8 samples an epoch and continues with 1 process(es) and 4 "
        "samples: epoch 1 starts over"
        if saved_world_size == 2
        else "with 8 samples an epoch and continues with 4: epoch 1 starts over"
    )


def test_a_stop_in_an_epochs_last_step_says_so_and_the_resume_validates_that_epoch(tmp_path, data):
    """Stopped in the last step of epoch 2, the run said "stopped after 1 epoch" although
    every step of epoch 2 was trained; its validation is what was left, and the resume
    does it first, training no step again and skipping no epoch."""
    config = _config(epochs=3)  # 3 samples, batch 1: 3 steps an epoch
    straight = train(config, *data, out_dir=tmp_path / "straight")
    stop, events = threading.Event(), []
    for event in iter_train(config, *data, out_dir=tmp_path / "part", stop_event=stop):
        events.append(event)
        if isinstance(event, StepDone) and (event.epoch, event.step) == (1, 3):
            stop.set()
    stopped = events[-1]
    assert stopped.stopped_by_user and stopped.epochs_done == 1
    assert (stopped.steps_in_epoch, stopped.steps_per_epoch) == (3, 3)
    assert stopped.outcome_message().startswith(
        "training stopped after 1 epoch and all 3 steps of epoch 2, before its validation "
        "(continuing the run validates epoch 2 first and goes on): model 'part' saved to"
    )
    assert [e.epoch for e in events if isinstance(e, EpochDone)] == [0]
    checkpoint = read_checkpoint(stopped.last_checkpoint_path)
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"], checkpoint["step"]) == (1, 3, 6)
    resumed = list(iter_train(config, *data, tmp_path / "part", resume_from=tmp_path / "part"))
    steps = [(e.epoch, e.step) for e in resumed if isinstance(e, StepDone)]
    assert steps == [(2, 1), (2, 2), (2, 3)]
    assert [e.epoch for e in resumed if isinstance(e, EpochDone)] == [1, 2]
    finished = resumed[-1]
    assert finished.epochs_done == 3 and finished.steps_in_epoch == 0
    assert finished.outcome_message().startswith("training finished after 3 epochs: model")
    metrics = (tmp_path / "part/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [0, 1, 2]
    a, b = _weights(straight.last_checkpoint_path), _weights(finished.last_checkpoint_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _held_out(checkpoint_path) -> tuple[list[str], list[str]]:
    summary = torch.load(checkpoint_path, weights_only=True)["data_summary"]
    return summary["val_images"], summary["train_images"]


def test_a_resumed_run_holds_out_the_images_its_checkpoint_held_out(tmp_path):
    """The held-out split was drawn anew on resume: with another seed, or once images were
    added, an image trained on became the validation image, and the best epoch was chosen
    by scores on other images, without a word. The checkpoint's split is now kept; where
    its images are gone, the run says so and chooses its best epoch anew."""
    from napari_samtune.core.data import ImageLabelPair
    from napari_samtune.core.validation_split import split_validation

    pairs = [
        ImageLabelPair(image, labels, f"cell_{i}.tif")
        for i, (image, labels) in enumerate(make_dataset(4, shape=(96, 96), seed=0))
    ]
    quick = _config(epochs=1, min_samples_per_epoch=2, val_fraction=0.3)
    out = tmp_path / "a"

    def resume(epochs: int, data, **changes):
        config = dataclasses.replace(quick, epochs=epochs, **changes)
        events = list(iter_train(config, data, None, out, resume_from=out))
        return events[0].notes, _held_out(events[-1].last_checkpoint_path), events[-1]

    first = train(quick, pairs[:3], None, out_dir=out)
    held, trained = _held_out(first.last_checkpoint_path)
    assert len(held) == 1 and len(trained) == 2
    images = [SimpleNamespace(group=str(i)) for i in range(3)]  # stand-ins: three images
    drawn = split_validation(images, 0.3, quick.seed)[1]
    seed = next(s for s in range(1, 100) if split_validation(images, 0.3, s)[1] != drawn)
    notes, split, _ = resume(2, pairs[:3], seed=seed)
    assert split == (held, trained) and not any("validation" in n for n in notes)
    notes, (val, train_now), _ = resume(3, pairs)  # an image added: it trains
    assert val == held and sorted(train_now) == sorted([*trained, "cell_3.tif"])
    assert not any("validation" in n for n in notes)
    without = [pair for pair in pairs if pair.name != held[0]]
    notes, (val, _), finished = resume(4, without)
    assert held[0] not in val
    assert any("validation images changed" in n and "chosen anew" in n for n in notes), notes
    assert finished.best_epoch == 3  # the only epoch scored on these images


def _without_run_id(path) -> None:
    """``path`` as a checkpoint written before runs had ids."""
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["run_id"]
    torch.save(checkpoint, path)


def test_a_run_never_continues_beside_the_best_checkpoint_of_another_run(tmp_path, data):
    """A last.pt of run b restored into run a's folder was continued there, and a's best.pt
    exported at the end as b's model (even of another architecture), without a word."""
    quick = _config(epochs=1, min_samples_per_epoch=1)
    a = train(quick, *data, out_dir=tmp_path / "a")
    b = train(dataclasses.replace(quick, seed=5), *data, out_dir=tmp_path / "b")
    a_last, a_best = a.last_checkpoint_path, a.best_checkpoint_path
    kept_last, kept_best = a_last.read_bytes(), a_best.read_bytes()
    shutil.copyfile(b.last_checkpoint_path, a_last)
    with pytest.raises(ValueError, match=r"best.pt' is of another training run than .*Move best"):
        train(_config(epochs=2), *data, tmp_path / "a", resume_from=tmp_path / "a")
    with pytest.raises(ValueError, match="is of another training run"):  # nor carried away
        train(_config(epochs=2), *data, tmp_path / "c", resume_from=a_last)
    assert a_best.read_bytes() == kept_best and not (tmp_path / "c" / "checkpoints").exists()
    # checkpoints written before runs had ids: told apart by their model and base model
    _without_run_id(a_last)
    _without_run_id(a_best)
    with pytest.raises(ValueError, match=r"another training run .*finetuned from another base"):
        train(_config(epochs=2), *data, tmp_path / "a", resume_from=a_last)
    a_last.write_bytes(kept_last)
    _without_run_id(a_last)
    assert train(_config(epochs=2), *data, tmp_path / "a", resume_from=a_last).epochs_done == 2
    resumed = train(_config(epochs=2), *data, tmp_path / "d", resume_from=b.last_checkpoint_path)
    assert resumed.epochs_done == 2  # b's own best carried into a new folder
    (tmp_path / "e" / "checkpoints").mkdir(parents=True)  # a folder holding a's best only
    shutil.copyfile(a_best, tmp_path / "e" / "checkpoints" / "best.pt")
    with pytest.raises(ValueError, match=r"e/checkpoints/best.pt' is of another training run"):
        train(_config(epochs=2), *data, tmp_path / "e", resume_from=b.last_checkpoint_path)
    from napari_samtune.core.trainer_files import _how_other

    other = _how_other((None, {"name": "tiny"}, "x"), (None, {"name": "nano"}, "x"))
    assert other == "a tiny model, not nano"


@pytest.mark.parametrize(
    ("first_machine", "second_machine", "expected"),
    [("bf16", "no", "no"), ("fp16", "no", "no"), ("no", "bf16", "bf16")],
    ids=["bf16-cpu-then-avx2", "older-gpu-then-cpu", "avx2-then-bf16-cpu"],
)
def test_auto_precision_is_chosen_again_where_a_run_continues(
    tmp_path, data, monkeypatch, first_machine, second_machine, expected
):
    """A run started with "auto" recorded the precision its machine chose: continued on a
    CPU where bf16 is emulated it kept bf16 (with a warning, at a fraction of the speed),
    and one begun on a GPU without bf16 (fp16) could not continue on a CPU at all."""
    machine = {"auto": first_machine}

    def resolve(mode, device):
        return machine["auto"] if mode == "auto" else mode

    monkeypatch.setattr(trainer_module, "resolve_precision", resolve)
    if first_machine == "fp16":
        _fp16_like_an_older_gpu(monkeypatch)
        monkeypatch.setattr(trainer_module, "resolve_precision", resolve)
    config = _config(epochs=1, mixed_precision="auto")
    events = list(iter_train(config, *data, out_dir=tmp_path / "first"))
    assert events[0].config.mixed_precision == first_machine  # what this machine runs
    last = events[-1].last_checkpoint_path
    run = last.parent.parent
    assert json.loads((run / "config.json").read_text())["mixed_precision"] == "auto"
    assert read_checkpoint(last)["config"]["mixed_precision"] == "auto"
    sidecar = user_models_dir() / f"{events[-1].registered_name}.json"
    metadata = json.loads(sidecar.read_text())["metadata"]
    assert (
        metadata["precision"] == first_machine and metadata["config"]["mixed_precision"] == "auto"
    )

    machine["auto"] = second_machine  # the same run continued on another machine
    saved = TrainConfig.from_dict(read_checkpoint(last)["config"])
    resumed = list(
        iter_train(dataclasses.replace(saved, epochs=2), *data, out_dir=run, resume_from=last)
    )
    assert resumed[0].config.mixed_precision == expected
    assert isinstance(resumed[-1], TrainingFinished) and resumed[-1].epochs_done == 2


def test_a_precision_asked_by_name_is_recorded_as_asked(tmp_path, data):
    config = _config(epochs=1, mixed_precision="bf16")
    events = list(iter_train(config, *data, out_dir=tmp_path / "bf16"))
    run = events[-1].last_checkpoint_path.parent.parent
    assert json.loads((run / "config.json").read_text())["mixed_precision"] == "bf16"


def test_gradient_accumulation_weighs_each_sample_as_its_batch_does(tmp_path, data):
    """7 samples in steps of 4: the last step's micro-batches of 2 and 1 sample weighed
    half each ((l5 + l6) / 2 + l7) / 2, not as the batch of 3 they stand for."""
    config = _config(epochs=1, min_samples_per_epoch=7, learning_rate=1e-12)

    def step_losses(**changes) -> list[float]:
        run = dataclasses.replace(config, **changes)
        out = tmp_path / "_".join(map(str, changes.values()))
        return [e.loss for e in iter_train(run, *data, out_dir=out) if isinstance(e, StepDone)]

    single = step_losses(batch_size=1, grad_accumulation=1)
    assert len(single) == 7
    batched = step_losses(batch_size=4, grad_accumulation=1)
    accumulated = step_losses(batch_size=2, grad_accumulation=2)
    expected = [np.mean(single[:4]), np.mean(single[4:])]
    np.testing.assert_allclose(batched, expected, rtol=1e-4)
    np.testing.assert_allclose(accumulated, expected, rtol=1e-4)


def test_a_checkpoint_scored_the_earlier_way_chooses_its_best_epoch_anew(tmp_path, data):
    """Validation scores each object once since 2026-12-07 (each piece in every tile
    before): a run resumed from an earlier checkpoint compared its new scores with the old
    best (0.897 against 0.835 for the same weights), and called the epoch better."""
    first = train(_config(epochs=1), *data, out_dir=tmp_path / "run")
    assert first.best_epoch == 0
    checkpoint = torch.load(first.last_checkpoint_path, weights_only=True)
    assert checkpoint["data_summary"].pop("val_scoring") == 2  # as an earlier version wrote
    checkpoint["best_metric"] = 2.0  # no epoch can beat it: only a new choice picks one
    torch.save(checkpoint, first.last_checkpoint_path)
    events = list(
        iter_train(_config(epochs=2), *data, tmp_path / "run", resume_from=tmp_path / "run")
    )
    assert any("counted as an earlier version of napari-samtune" in n for n in events[0].notes)
    assert events[-1].best_epoch == 1  # chosen among this session's epochs
