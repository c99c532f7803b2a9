"""A run killed at any moment (SIGKILL: no cleanup runs) leaves files that resume cleanly."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from napari_samtune.core import train_export, trainer_files
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train
from napari_samtune.core.trainer import Trainer

CONFIG = TrainConfig(
    model="random:tiny", epochs=3, n_objects_per_batch=1, min_samples_per_epoch=1,
    n_iterative_prompts=0, mixed_precision="no", early_stopping=None, val_fraction=0.5,
)  # fmt: skip


class Killed(BaseException):
    """Stands in for SIGKILL in this process: nothing after it runs, no handler catches it."""


def _epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _killed_at_metrics(monkeypatch, nth: int, fragment: str | None) -> None:
    """The process dies right after the ``nth`` epoch's checkpoints, before its metrics
    line is written, or with only ``fragment`` of that line written."""
    real, calls = Trainer._write_checkpoints, []

    def dies_after(self, is_best):
        written = real(self, is_best)
        calls.append(written)
        if len(calls) == nth:
            if fragment is not None:
                with open(self.files.metrics, "a", encoding="utf-8") as log:
                    log.write(fragment)
            raise Killed
        return written

    monkeypatch.setattr(Trainer, "_write_checkpoints", dies_after)


@pytest.mark.parametrize("nth", [1, 2])
def test_a_kill_between_the_checkpoint_and_the_metrics_line_loses_no_epoch(
    tmp_path, monkeypatch, nth
):
    """Killed after epoch ``nth``'s last.pt, before its metrics line: the resumed run
    goes on after that epoch, and its line was lost for good (the plot had a gap)."""
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    _killed_at_metrics(monkeypatch, nth, fragment=None)
    with pytest.raises(Killed):
        train(CONFIG, data, out_dir=run)
    monkeypatch.undo()
    assert train(CONFIG, data, out_dir=run, resume_from=run).epochs_done == 3
    assert _epochs_logged(run) == [0, 1, 2]


def test_a_kill_while_a_metrics_line_is_written_leaves_no_broken_line(tmp_path, monkeypatch):
    """Killed part-way through epoch 2's metrics line: the resumed run appended its lines
    to that fragment, so the file held a line that is not JSON and readers stopped there."""
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    _killed_at_metrics(monkeypatch, 2, fragment='{"epoch": 1, "train_lo')
    with pytest.raises(Killed):
        train(CONFIG, data, out_dir=run)
    monkeypatch.undo()
    train(CONFIG, data, out_dir=run, resume_from=run)
    assert _epochs_logged(run) == [0, 1, 2]


def test_an_epoch_trained_again_replaces_its_metrics_line(tmp_path):
    """An epoch whose line was written but whose last.pt was not (killed between the two
    by an older version, or a line restored) is trained again: one line, the new one."""
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 0, "a": 1}\n{"epoch": 1, "a": 2}\n')
    train_export.record_epoch(log, {"epoch": 1, "a": 3})
    train_export.record_epoch(log, {"epoch": 2, "a": 4})
    assert [json.loads(line)["a"] for line in log.read_text().splitlines()] == [1, 3, 4]


def test_the_temporary_files_of_a_killed_run_go_when_its_folder_is_locked_again(tmp_path):
    """A kill while a checkpoint is written leaves atomic_write's temporary file, as large
    as the checkpoint; each kill left one more, for good. Other files stay."""
    from napari_samtune.core.run_lock import training_lock

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [run / "checkpoints" / ".last.pt.ab_3x9q1.tmp", run / ".metrics.jsonl.k2m0qz7w.tmp"]
    mine = [run / ".notes.ab_3x9q1.tmp", run / "checkpoints" / "last.pt.ab_3x9q1.tmp"]
    for path in stale + mine:
        path.write_bytes(b"\0" * 100)
    with training_lock(run):
        assert [path.exists() for path in stale + mine] == [False, False, True, True]


@contextmanager
def _trained_in_another_process(run):
    """A process holding ``run``'s training lock, as a run training there does; yields its
    id, and ends it after."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from napari_samtune.core.run_lock import "
         f"training_lock\nwith training_lock({str(run)!r}):\n print('held', flush=True)\n"
         " sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.communicate("\n", timeout=60)


def test_a_python_run_into_a_folder_another_process_trains_in_is_refused(tmp_path):
    """train() from Python took no lock (only the command line and the widget did): a run
    into the folder of a run in another process wrote over that run's checkpoints. Under
    the caller's own lock (as the command line holds it) it runs; a killed run's
    temporary files go when it takes the lock itself."""
    from napari_samtune.core.run_lock import TRAINING_LOCK_NAME, training_lock

    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    with _trained_in_another_process(run):
        with pytest.raises(ValueError, match=r"in use by another training run \(process \d+"):
            train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run)
        assert not (run / "checkpoints").exists()  # nothing of the other run's overwritten
    with training_lock(run):  # as the command line holds it around train()
        assert train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run).epochs_done == 1
    stale = run / "checkpoints" / ".last.pt.ab_3x9q1.tmp"
    stale.write_bytes(b"\0" * 100)
    resumed = train(dataclasses.replace(CONFIG, epochs=2), data, out_dir=run, resume_from=run)
    assert resumed.epochs_done == 2 and not stale.exists()
    assert not (run / TRAINING_LOCK_NAME).exists()  # released


def test_continuing_a_run_still_in_its_first_epoch_says_it_is_training(tmp_path):
    """Resumed (or exported) while it still trained its first epoch, a run's folder was
    called "a folder without a training checkpoint ... of a run that trained at least one
    step", not in use; after its first checkpoint, the lock said so."""
    from napari_samtune.core.run_lock import training_process
    from napari_samtune.core.train_checkpoints import resolve_checkpoint

    run = tmp_path / "run"
    with _trained_in_another_process(run) as pid:
        assert training_process(run) == str(pid)
        with pytest.raises(FileNotFoundError, match=rf"a run still training \(process {pid}"):
            resolve_checkpoint(run)
    assert training_process(run) is None
    with pytest.raises(FileNotFoundError, match="is a folder without a training checkpoint"):
        resolve_checkpoint(tmp_path)


@pytest.mark.parametrize("size", [5000, 0.5])
def test_a_truncated_checkpoint_is_named_whatever_torch_says_of_it(tmp_path, size):
    """Cut to its first 5000 bytes, a checkpoint made torch's zip reader raise a bare
    "[Errno 22] Invalid argument", which reached the person as all they were told."""
    from napari_samtune.core.models import load_model
    from napari_samtune.core.train_checkpoints import read_checkpoint

    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run)
    last = run / "checkpoints" / "last.pt"
    whole = last.read_bytes()
    last.write_bytes(whole[: size if isinstance(size, int) else int(len(whole) * size)])
    for load in (read_checkpoint, load_model):
        with pytest.raises(ValueError, match=f"^{last} is not a readable PyTorch weights file"):
            load(last)


@pytest.mark.parametrize(("damaged", "other"), [("last.pt", "best.pt"), ("best.pt", "last.pt")])
def test_a_damaged_checkpoint_names_the_one_beside_it_that_still_loads(tmp_path, damaged, other):
    """A truncated last.pt (a disk fault, a copy cut short) was refused as "not a readable
    PyTorch weights file" with no way on; a new run into the folder is refused too (it
    holds a run: continue it), so the person went round in a circle while best.pt's weights
    were there. The error now names them, and no file is deleted."""
    from napari_samtune.core.checkpoint_models import export_model
    from napari_samtune.core.models import load_model

    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run)
    path, beside = run / "checkpoints" / damaged, run / "checkpoints" / other
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError) as raised:
        train(CONFIG, data, out_dir=run, resume_from=path)
    message = str(raised.value)
    assert message.startswith(f"{path} is not a readable PyTorch weights file")
    assert f". {beside} beside it loads: samtune export {beside} -o model.pth" in message
    with pytest.raises(ValueError, match=f"{other} beside it loads"):
        export_model(path, tmp_path / "model.pth")
    assert path.stat().st_size == 5000 and load_model(beside).sam is not None


def test_a_run_killed_after_its_last_epoch_is_told_how_to_have_its_model(tmp_path):
    """Killed after the last epoch's checkpoints, before the export and registration: a
    resume has nothing to train and said only to set more epochs, as if the model were
    there; it was not, and nothing said how to have it without training more."""
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run)
    (run / "summary.json").unlink()  # as a kill in the run's end leaves it
    (run / "model.pth").unlink()
    best = run / "checkpoints" / "best.pt"
    with pytest.raises(ValueError) as raised:
        train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run, resume_from=run)
    message = str(raised.value)
    assert "set epochs above 1 to continue the run" in message
    assert f"samtune export {best} -o {run / 'model.pth'} --register NAME" in message


def test_a_finished_run_is_not_told_to_export_again(tmp_path):
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run)
    with pytest.raises(ValueError, match="set epochs above 1 to continue the run$"):
        train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run, resume_from=run)


def test_a_run_killed_before_its_first_last_checkpoint_offers_its_best_weights(tmp_path):
    """Killed between the first epoch's best.pt and its last.pt: the resume said the folder
    had no checkpoint and to give "a checkpoint file (last.pt or best.pt)", and best.pt is
    refused as weights only; its weights were not mentioned."""
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    train(dataclasses.replace(CONFIG, epochs=1), data, out_dir=run)
    for name in ("checkpoints/last.pt", "metrics.jsonl", "summary.json", "model.pth"):
        (run / name).unlink()  # as the kill leaves it
    best = run / "checkpoints" / "best.pt"
    with pytest.raises(FileNotFoundError) as raised:
        train(CONFIG, data, out_dir=run, resume_from=run)
    assert "holds a run that cannot be continued" in str(raised.value)
    assert f"samtune export {best} -o model.pth" in str(raised.value)
    assert best.is_file()


def test_an_empty_line_in_the_metrics_goes_when_the_run_resumes(tmp_path):
    """An empty line (a file opened and saved in an editor) stayed, and the panel's reader
    of the file stops at a line that is not JSON: the epochs after it were not shown."""
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    train(dataclasses.replace(CONFIG, epochs=2), data, out_dir=run)
    log = run / "metrics.jsonl"
    first, second = log.read_text().splitlines()
    log.write_text(f"{first}\n\n{second}\n")
    train(CONFIG, data, out_dir=run, resume_from=run)
    assert _epochs_logged(run) == [0, 1, 2]  # every line JSON


def test_a_kill_between_a_best_and_a_last_checkpoint_keeps_best_pt_and_the_summary_agreeing(
    tmp_path, monkeypatch
):
    """Killed after epoch 2's best.pt (val_iou 0.5), before its last.pt (best: epoch 1,
    0.1): the resumed run's epoch 2 scored 0.05 (other settings, or a GPU's
    nondeterminism), so best.pt kept the killed epoch's weights while the summary said
    epoch 1 with 0.1 was the best, and the model exported as that epoch's was not it."""
    scores = iter([0.1, 0.5, 0.05])

    def scored(self, stop=None):  # the starting model (no step yet) scores 0
        return {"val_iou": next(scores) if self.progress.global_step else 0.0}

    monkeypatch.setattr(Trainer, "_validate", scored)
    real = Trainer._write_checkpoints

    def killed_after_the_second_best(self, is_best):
        if self.progress.epoch == 2:
            trainer_files.write_checkpoint(
                self.files.best, self.sam, self.arch, self.config, kind="best",
                **self._checkpoint_fields(),
            )  # fmt: skip
            raise Killed
        return real(self, is_best)

    monkeypatch.setattr(Trainer, "_write_checkpoints", killed_after_the_second_best)
    config = dataclasses.replace(CONFIG, epochs=2)
    data, run = make_dataset(2, shape=(64, 64), seed=0), tmp_path / "run"
    with pytest.raises(Killed):
        train(config, data, out_dir=run)
    monkeypatch.setattr(Trainer, "_write_checkpoints", real)
    finished = train(config, data, out_dir=run, resume_from=run)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert (finished.best_epoch, finished.best_metric) == (1, 0.5)
    assert (best["epoch"], best["best_metric"]) == (2, 0.5)


def test_a_run_taking_its_folder_keeps_an_export_s_model_being_written(tmp_path):
    """samtune export writes the run's model.pth without the run's lock: a run resumed in
    the folder meanwhile deleted its temporary file, and the export's rename failed. A
    killed export's (an hour old) still goes."""
    import os

    from napari_samtune.core.run_lock import training_lock

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    writing, killed = run / ".model.pth.wr1t1ng_.tmp", run / ".model.pth.k1ll3d_x.tmp"
    checkpoint = run / "checkpoints" / ".last.pt.k1ll3d_x.tmp"
    for path in (writing, killed, checkpoint):
        path.write_bytes(b"part of a file")
    stat = killed.stat()
    os.utime(killed, (stat.st_atime - 7200, stat.st_mtime - 7200))
    with training_lock(run):
        pass
    assert writing.exists() and not killed.exists() and not checkpoint.exists()


def test_a_file_deleted_by_another_process_during_a_write_is_not_called_a_device(tmp_path):
    """``samtune cache --clear`` deleting an embedding while it was saved again: between an
    exists and an isfile check the file was gone, and the save failed with "is not a file
    but a device, pipe or socket" (a ValueError, past the cache's warning-only OSError)."""
    import threading

    from napari_samtune.core.checkpoints import atomic_write

    path = tmp_path / "embedding.pt"
    stop, errors = threading.Event(), []

    def delete() -> None:
        while not stop.is_set():
            path.unlink(missing_ok=True)

    deleter = threading.Thread(target=delete)
    deleter.start()
    try:
        for _ in range(3000):
            try:
                atomic_write(path, lambda tmp: tmp.write_bytes(b"x"))
            except ValueError as err:
                errors.append(err)
    finally:
        stop.set()
        deleter.join()
    assert errors == []


def test_a_run_starting_while_its_folder_is_looked_at_is_not_refused(tmp_path):
    """training_process (samtune export, the panels' checks) takes the lock for an instant
    to look: a run starting in that instant was refused as "in use by another training run
    (process ?)". A real run still is."""
    import fcntl
    import threading

    from napari_samtune.core.run_lock import TRAINING_LOCK_NAME, training_lock

    run = tmp_path / "run"
    run.mkdir()
    look = open(run / TRAINING_LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115
    fcntl.flock(look, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as training_process holds it
    threading.Timer(0.05, look.close).start()
    with training_lock(run):
        pass
    with training_lock(run), pytest.raises(ValueError, match="is in use by another"):
        with training_lock(run):
            pass
