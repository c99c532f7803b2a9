"""``samtune train`` killed for real (SIGKILL: no handler, no clean-up) resumes cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import tifffile

from napari_samtune import cli
from napari_samtune.core.synthetic import make_dataset

# Runs samtune train, killing itself with SIGKILL at the ``n``-th os.replace onto a file
# named ``name``, just before or just after it.
KILLED_AT_A_REPLACE = """
import os, signal, sys
when, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
real, seen = os.replace, []
def replace(src, dst, *args, **kwargs):
    hit = os.path.basename(str(dst)) == name and seen.append(dst) is None and len(seen) == n
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *args, **kwargs)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from napari_samtune.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize(("when", "n"), [("after", 1), ("before", 2)])
def test_a_run_killed_at_its_checkpoint_resumes_with_every_epoch_and_no_leftovers(
    tmp_path, when, n
):
    """Killed right after epoch 1's last.pt, or while epoch 2's was still a temporary file:
    the resumed run logged every epoch once (epoch 1's line was lost) and the killed
    write's temporary file stayed in the run's folder for good."""
    for i, (image, labels) in enumerate(make_dataset(2, shape=(80, 96), seed=3)):
        for folder, array in (("img", image), ("lab", labels)):
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"s{i}.tif", array)
    data = ["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab")]
    fast = ["--min-samples", "1", "--n-objects", "1", "--iterative-prompts", "0"]
    fast += ["--mixed-precision", "no", "--no-progress", "--epochs", "3"]
    run = tmp_path / "run"
    argv = ["train", "--model", "random:tiny", *data, *fast, "--out", str(run)]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_A_REPLACE, when, "last.pt", str(n), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert cli.main(["train", "--resume", str(run), *data, *fast]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()]
    assert epochs == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 3
    left = [p.name for p in (*run.iterdir(), *(run / "checkpoints").iterdir())]
    assert sorted(left) == [
        "best.pt", "checkpoints", "config.json", "last.pt", "metrics.jsonl", "model.pth",
        "summary.json",
    ]  # fmt: skip
