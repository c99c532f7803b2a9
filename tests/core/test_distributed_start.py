"""Starting a distributed run: torchrun's variables set by hand, a process group that never
fills, and machines that choose different presets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from napari_samtune.core import distributed as ddp
from napari_samtune.core.synthetic import make_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("value", ["abc", "2.5", "-1"])
def test_a_world_size_that_is_no_count_is_refused(monkeypatch, value):
    """It said "invalid literal for int() with base 10: 'abc'"."""
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(ValueError, match=f"WORLD_SIZE='{value}' is not a number of processes"):
        ddp.context_from_env("cpu")


def test_a_world_size_set_by_hand_without_an_address_names_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError) as info:
        ddp.context_from_env("cpu")
    message = str(info.value)
    assert "MASTER_ADDR and MASTER_PORT are not set" in message
    assert "torchrun --nproc-per-node 2 -m napari_samtune.cli train" in message
    assert "unset WORLD_SIZE" in message


WAITS_ALONE = """
import os, signal, sys
os.environ.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[1])
def terminate(signum, frame):  # as samtune train does
    raise SystemExit(143)
signal.signal(signal.SIGTERM, terminate)
from napari_samtune.core import distributed
print("joining", flush=True)
distributed.context_from_env("cpu")
print("joined", flush=True)
"""


def _waiting_to_join(script: str) -> subprocess.Popen:
    """``script`` in a process of its own, once it waits for a second that never comes."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(_free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "joining"
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    assert process.poll() is None
    return process


def test_sigterm_ends_a_process_waiting_for_the_others_to_join():
    """The wait is in C++ (30 minutes for gloo), where Python runs no signal handler:
    SIGTERM and Ctrl+C did nothing until then."""
    process = _waiting_to_join(WAITS_ALONE)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 143
        err = process.stderr.read()
        assert "waiting for the 2 processes of WORLD_SIZE=2 to join" in err
        assert "not started by torchrun" in err
    finally:
        process.kill()
        process.wait()


def _worker(rank: int, port: int, configs, data, out_dir, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    from napari_samtune.core.train import iter_train

    try:
        list(iter_train(configs[rank], data[0], data[1], out_dir))
        said = "trained"
    except Exception as err:  # recorded for the test
        said = f"{type(err).__name__}: {err}"
    (results / f"rank{rank}.txt").write_text(said)


def test_processes_that_chose_different_presets_are_refused_saying_so(tmp_path, short_tiny_config):
    """--preset auto on machines of different memory: one froze the image encoder, and DDP
    failed with "DDP expects same model across all ranks" tracebacks."""
    whole = short_tiny_config(preset="cpu-16gb")
    frozen = replace(whole, freeze=("image_encoder",), preset="cpu-8gb")
    data = make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)
    args = (_free_port(), (whole, frozen), data, tmp_path / "run", tmp_path)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    first, second = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    for said, preset in ((first, "cpu-16gb"), (second, "cpu-8gb")):
        assert said.startswith("ValueError: the 2 processes of this run chose different")
        assert "freeze=() in process 0, freeze=('image_encoder',) in process 1" in said
        assert "preset='cpu-16gb' in process 0, preset='cpu-8gb' in process 1" in said
        assert (
            f"pass the same --preset (and options) to every process, e.g. --preset {preset}" in said
        )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_processes_given_different_options_are_told_which(tmp_path, short_tiny_config):
    """Only a digest was compared: the refusal named the preset, batch size and frozen
    parts, the same in both, and never the learning rate that differed."""
    config = short_tiny_config(preset="cpu-16gb")
    other = replace(config, learning_rate=config.learning_rate * 10)
    data = make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)
    args = (_free_port(), (config, other), data, tmp_path / "run", tmp_path)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    for rank in range(2):
        said = (tmp_path / f"rank{rank}.txt").read_text()
        assert f"(learning_rate={config.learning_rate!r} in process 0, " in said
        assert f"learning_rate={other.learning_rate!r} in process 1)" in said
        assert said.endswith("pass the same options to every process")


WAITS_FOR_CTRL_C = """
import os, sys, threading
os.environ.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[1])
from napari_samtune.cli.train import stop_on_ctrl_c
from napari_samtune.core import distributed
stop = threading.Event()
stop_on_ctrl_c(stop)  # as samtune train does: the first Ctrl+C stops after the step
print("joining", flush=True)
try:
    distributed.context_from_env("cpu", stop)
except KeyboardInterrupt as err:
    print(f"ended: {err}", flush=True)
    sys.exit(130)
print("joined", flush=True)
"""


def test_one_ctrl_c_ends_a_process_waiting_for_the_others_to_join():
    """It said "stopping after this step (Ctrl+C again to abort)" and went on waiting (up
    to gloo's 30 minutes): no step runs yet. Under torchrun, torchrun killed it after its
    own 30 s, unexplained."""
    process = _waiting_to_join(WAITS_FOR_CTRL_C)
    try:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
        assert "ended: stopped while waiting for the other processes to join" in (
            process.stdout.read()
        )
    finally:
        process.kill()
        process.wait()
