"""What ``samtune train`` says from each of torchrun's processes (as they see it: RANK and
WORLD_SIZE set), without starting a process group."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

import napari_samtune.cli as cli
from napari_samtune.cli import console
from napari_samtune.cli import train as cli_train
from napari_samtune.cli.console import Terminated
from napari_samtune.cli.train_config import _refuse_a_restart
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
    args = cli.build_parser().parse_args(["train", "--images", "i", "--labels", "l"])
    args.out = str(tmp_path / "run")  # a new run's command
    config = SimpleNamespace(epochs=3)
    cli_train._train_reporting(config, [], None, args, threading.Event(), verbose)


def test_a_mistake_on_the_command_line_is_said_by_another_process_only_after_a_wait(
    process_1_of_2, capsys, monkeypatch
):
    """Each of torchrun's processes printed the usage and the error: three times with 3.
    The others now wait first (torchrun ends them once the first has said it), and still
    say it where the first was slower than them to fail."""
    said_then = []
    monkeypatch.setattr(
        console.time, "sleep", lambda s: said_then.append((s, capsys.readouterr().err))
    )
    with pytest.raises(SystemExit):
        cli.main(["train", "--resume", "run"])
    assert said_then == [(console.WORKER_ERROR_WAIT_S, "")]  # nothing before the wait
    err = capsys.readouterr().err
    assert err.count("the following arguments are required: --images, --labels") == 1


def test_out_of_memory_in_another_process_than_the_first_says_what_to_do(
    process_1_of_2, tmp_path, monkeypatch, capsys
):
    """The advice was printed by process 0 only, which had not run out of memory; the one
    that had printed its bare traceback (with N processes, most often not process 0). It
    waits first: where every process ran out, the first says it, and torchrun ends the
    others in their wait (each said it, the lines run together)."""
    waited = []
    monkeypatch.setattr(console.time, "sleep", waited.append)
    _failing_with(monkeypatch, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(RuntimeError):
        _report(tmp_path, verbose=False)
    assert waited == [console.WORKER_ERROR_WAIT_S]
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
    monkeypatch.setattr(cli_train, "started_by_torchrun", lambda: True)
    _failing_with(monkeypatch, Terminated())
    with pytest.raises(Terminated) as info:
        _report(tmp_path, verbose=True)
    assert str(info.value) == TORCHRUN_TERM_NOTE


def _run_folder(folder) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"")


@pytest.mark.parametrize("started", ["new", "resumed elsewhere"])
def test_a_restart_by_torchrun_says_why_the_run_s_folder_is_taken(
    tmp_path, monkeypatch, capsys, started
):
    """torchrun --max-restarts runs the same command again after a failure: the restart was
    refused as if the folder were another run's, and told to continue with plain
    ``samtune train`` (one process), or, resumed from another folder, "in its own folder
    or in a new one"."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    out, before = tmp_path / "run", tmp_path / "before"
    _run_folder(out)
    _run_folder(before)
    argv = ["train", "--images", "i", "--labels", "l", "--out", str(out)]
    argv += ["--model", "random:tiny"] if started == "new" else ["--resume", str(before)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "torchrun restarted this run's processes after a failure, and a restart runs" in err
    assert (
        "continue it with: torchrun --nproc-per-node 2 ... -m napari_samtune.cli train "
        f"--resume {out} --images i --labels l --epochs N"
    ) in err


def test_a_restart_of_a_run_resumed_in_its_own_folder_goes_on(tmp_path, monkeypatch):
    """Such a restart continues from the folder's newest checkpoint: not refused."""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    _run_folder(tmp_path)
    _refuse_a_restart(SimpleNamespace(out=str(tmp_path), resume=str(tmp_path)))
    args = cli.build_parser().parse_args(["train", "--images", "i", "--labels", "l"])
    args.out = str(tmp_path)  # a new run's command, restarted
    with pytest.raises(ValueError, match="torchrun restarted"):
        _refuse_a_restart(args)


def test_only_a_process_torchrun_started_is_told_torchrun_sent_sigterm(monkeypatch):
    """Started with WORLD_SIZE and the address set by hand (or by a batch system's own
    launcher), a SIGTERM was said to come from torchrun, which "now reports the signal"."""
    from napari_samtune.cli.console import started_by_torchrun

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not started_by_torchrun()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's, also without rendezvous
    assert started_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not started_by_torchrun()
