"""``samtune``'s entry point: Ctrl+C at any time, and the core's errors in the words of
the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import napari_samtune.cli as cli
from napari_samtune.cli import console, in_option_terms

# Ctrl+C while torch is being imported (what building the parser does), sent for real:
# the moment the import of torch begins.
INTERRUPTED_WHILE_LOADING = textwrap.dedent(
    """
    import os, signal, sys

    signal.signal(signal.SIGINT, signal.default_int_handler)

    class CtrlC:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, CtrlC())
    from napari_samtune.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["train", "--images", "a", "--labels", "b", "--out", "c"], "samtune train: interrupted"),
        (["--version"], "samtune: interrupted"),
    ],
)
def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(argv, line):
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_WHILE_LOADING, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == line
    assert done.returncode == 130


def test_ctrl_c_in_a_command_prints_its_note(monkeypatch, capsys):
    from napari_samtune.cli import export

    def interrupted(args):
        raise KeyboardInterrupt("checkpoints are in run/")

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("export",))
    monkeypatch.setattr(export, "run", interrupted)
    assert cli.main(["export", "last.pt", "-o", "m.pth"]) == 130
    assert capsys.readouterr().err == "samtune export: interrupted; checkpoints are in run/\n"


OPTIONS = {
    "n_objects_per_batch": "--n-objects",
    "batch_size": "--batch-size",
    "freeze": "--freeze",
    "device": "--device",
    "early_stopping": "--early-stopping",
    "val_fraction": "--val-fraction",
}


@pytest.mark.parametrize(
    ("message", "worded"),
    [
        (
            "n_objects_per_batch=0; use a whole number >= 1",
            "--n-objects 0; use a whole number >= 1",
        ),
        (
            "device='cuda:7' but CUDA is not available; use device='cpu' or 'auto'",
            "--device cuda:7 but CUDA is not available; use --device cpu or 'auto'",
        ),
        ("early_stopping=-1; use >= 1 or None", "--early-stopping -1; use >= 1 or 0 (never stop)"),
        (
            "n_objects_per_batch=9 x batch_size=2 = 18 is far above; lower n_objects_per_batch",
            "--n-objects 9 x --batch-size 2 = 18 is far above; lower --n-objects",
        ),
        (
            "freeze=('image_encoder', 'mask_decoder') leaves nothing; remove it from freeze",
            "--freeze image_encoder --freeze mask_decoder leaves nothing; remove it from --freeze",
        ),
        ("but freeze=(); add 'image_encoder'", "but --freeze none; add 'image_encoder'"),
        (
            "that part has no objects; or set val_fraction=0",
            "that part has no objects; or set --val-fraction 0",
        ),
        # file names and paths that contain a parameter's name are left alone
        ("labels of 'batch_size.tif' are empty", "labels of 'batch_size.tif' are empty"),
        ("runs/val_fraction/last.pt is damaged", "runs/val_fraction/last.pt is damaged"),
        ("see batch_size.txt and my_device=1", "see batch_size.txt and my_device=1"),
        ("a device is missing", "a device is missing"),
    ],
)
def test_core_messages_name_the_options(message, worded):
    none_means = {"early_stopping": "0 (never stop)"}
    assert in_option_terms(message, OPTIONS, none_means) == worded


def test_none_is_only_replaced_in_a_message_about_its_option():
    none_means = {"early_stopping": "0 (never stop)"}
    message = "val_fraction=2; use None"
    assert in_option_terms(message, OPTIONS, none_means) == "--val-fraction 2; use None"


@pytest.mark.parametrize(
    ("rank", "local_rank", "first"),
    [
        (None, None, True),
        ("0", "0", True),
        ("1", "1", False),
        (None, "1", False),
        ("2", "0", False),
    ],
)
def test_under_torchrun_the_first_worker_reports_for_all(
    monkeypatch, capsys, rank, local_rank, first
):
    """Every worker met the same mistake and printed it (twice for two GPUs). Now the
    others wait, and torchrun ends them once the first has said it and exited; a quicker
    worker no longer gets the first ended before it said anything."""
    import time

    from napari_samtune.cli import export

    def mistaken(args):
        raise ValueError("--preset a100 trains on cuda")

    def interrupted(args):
        raise KeyboardInterrupt("checkpoints are in run/")

    def ended_by_torchrun(seconds):
        raise SystemExit(-15)

    for name, value in (("RANK", rank), ("LOCAL_RANK", local_rank)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it in each worker
    monkeypatch.setattr(cli, "_check_single_process", lambda command: None)  # export: one
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("export",))
    monkeypatch.setattr(export, "run", mistaken)
    monkeypatch.setattr(time, "sleep", ended_by_torchrun)
    said = "samtune export: error: --preset a100 trains on cuda\n"
    if first:
        assert cli.main(["export", "last.pt", "-o", "m.pth"]) == 2
        assert capsys.readouterr().err == said
    else:
        with pytest.raises(SystemExit):
            cli.main(["export", "last.pt", "-o", "m.pth"])
        assert capsys.readouterr().err == ""
        waited = []
        monkeypatch.setattr(time, "sleep", waited.append)  # the first did not fail: say it
        assert cli.main(["export", "last.pt", "-o", "m.pth"]) == 2
        assert capsys.readouterr().err == said and waited == [console.WORKER_ERROR_WAIT_S]
    monkeypatch.setattr(export, "run", interrupted)  # Ctrl+C reaches every worker at once
    assert cli.main(["export", "last.pt", "-o", "m.pth"]) == 130
    assert ("interrupted; checkpoints are in run/" in capsys.readouterr().err) == first


def test_under_torchrun_only_train_runs(monkeypatch, capsys, tmp_path):
    """`torchrun ... samtune demo` ran the whole demo in every process: each printed every
    line, and the second failed ("demo stopped: ... no model was exported")."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err == (
        "samtune demo: error: samtune demo runs in one process, but torchrun started 2 "
        "(WORLD_SIZE=2): run 'samtune demo' without torchrun; only 'samtune train' trains "
        "in several processes\n"
    )
    assert not (tmp_path / "demo").exists()
    argv = ["train", "--images", "a.tif", "--labels", "b.tif", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2  # train goes on, to its own first check
    assert "--model is required" in capsys.readouterr().err


def test_sigterm_while_the_command_line_is_parsed_is_said(monkeypatch, capsys):
    """Building the parser imports torch (seconds): a SIGTERM then ended samtune without a
    word, where Ctrl+C at that moment said "samtune cache: interrupted"."""
    import signal

    class Unhandled(Exception):
        pass

    def unhandled(signum, frame):  # what the default action would do: end the process
        raise Unhandled

    def parse_slowly(argv):
        signal.raise_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        monkeypatch.setattr(cli, "_parse", parse_slowly)
        assert cli.main(["cache"]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err.strip() == "samtune cache: terminated"


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_imports_is_raised_once_they_are_done(monkeypatch, capsys, signum):
    """Raised inside torch's or numpy's imports, Ctrl+C or SIGTERM left numpy half-imported
    (a RecursionError traceback, exit 1), or was swallowed there and the command ran on."""
    import signal

    parse = cli._parse

    def parse_in_a_library_that_swallows(argv):
        try:
            signal.raise_signal(getattr(signal, signum))
        except BaseException:  # as code under an import may
            pass
        return parse(argv)

    monkeypatch.setattr(cli, "_parse", parse_in_a_library_that_swallows)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = cli.main(["presets"])
    finally:
        signal.signal(signal.SIGINT, previous)
    said = capsys.readouterr()
    if signum == "SIGTERM":
        assert (code, said.err.strip()) == (143, "samtune presets: terminated")
    else:
        assert (code, said.err.strip()) == (130, "samtune presets: interrupted")
    assert said.out == ""  # the command did not run
