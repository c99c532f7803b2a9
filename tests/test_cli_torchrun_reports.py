"""What ``samtune train`` says from each of torchrun's processes (as they see it: RANK and
WORLD_SIZE set), without starting a process group."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

import napari_samtune.cli as cli
from napari_samtune.cli import train as cli_train
from napari_samtune.cli.console import Terminated
from napari_samtune.cli.train_report import TORCHRUN_TERM_NOTE


@pytest.fixture
def process_1_of_2(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")


def _failing_with(monkeypatch, err: BaseException) -> None:
    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr(cli_train, "_train_with_progress", fail)


def _report(tmp_path, verbose: bool):
    args = SimpleNamespace(out=str(tmp_path / "run"), resume=None)
    cli_train._train_reporting(None, [], None, args, threading.Event(), verbose)


def test_a_mistake_on_the_command_line_is_said_by_the_main_process_only(process_1_of_2, capsys):
    """Each of torchrun's processes printed the usage and the error: three times with 3."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--resume", "run"])
    assert capsys.readouterr() == ("", "")


def test_out_of_memory_in_another_process_than_the_first_says_what_to_do(
    process_1_of_2, tmp_path, monkeypatch, capsys
):
    """The advice was printed by process 0 only, which had not run out of memory; the one
    that had printed its bare traceback (with N processes, most often not process 0)."""
    _failing_with(monkeypatch, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(RuntimeError):
        _report(tmp_path, verbose=False)
    err = capsys.readouterr().err
    assert err.startswith("samtune train (process 1): out of memory: choose a --preset")


def test_another_process_s_other_errors_are_left_to_its_traceback(
    process_1_of_2, tmp_path, monkeypatch, capsys
):
    _failing_with(monkeypatch, RuntimeError("something else"))
    with pytest.raises(RuntimeError):
        _report(tmp_path, verbose=False)
    assert capsys.readouterr().err == ""


def test_sigterm_before_the_first_checkpoint_explains_torchrun_s_traceback(tmp_path, monkeypatch):
    """Before any checkpoint the last line was a bare "samtune train: terminated", above
    torchrun's SignalException traceback."""
    monkeypatch.setattr(cli_train, "torchrun_world_size", lambda: 2)
    _failing_with(monkeypatch, Terminated())
    with pytest.raises(Terminated) as info:
        _report(tmp_path, verbose=True)
    assert str(info.value) == TORCHRUN_TERM_NOTE


def test_a_restart_by_torchrun_says_why_the_run_s_folder_is_taken(tmp_path, monkeypatch, capsys):
    """torchrun --max-restarts runs the same command again after a failure: the restart was
    refused as if the folder were another run's, and told to continue with plain
    ``samtune train`` (one process)."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    argv = ["train", "--model", "random:tiny", "--images", "i", "--labels", "l", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "torchrun restarted this run's processes after a failure, and a restart runs" in err
    assert (
        f"continue it with: torchrun --nproc-per-node 2 ... -m napari_samtune.cli train "
        f"--resume {out} --images i --labels l --epochs N"
    ) in err
