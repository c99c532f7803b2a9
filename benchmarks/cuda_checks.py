"""Checks of the CUDA code paths, for a machine with a GPU (run by ``gpu_check.sh``).

The CPU test suite (``tests/``) covers the logic of every path; these run the GPU ones on a
real GPU: training in each precision (bf16, fp16 with its loss scaler, fp32) with a
checkpoint that loads on the CPU, a GPU run continued on the CPU, the packaged ``nano``
model's masks on the GPU against the CPU's, and ``torchrun`` with NCCL. They fail, rather
than skip, where there is no GPU: run them only where one is.

Run: ``python -m pytest benchmarks/cuda_checks.py -q``
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.models import load_model
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import SyntheticStyle, make_dataset, make_image
from napari_samtune.core.train import EpochDone, TrainingFinished, TrainingStarted, iter_train

ONE_OBJECT = SyntheticStyle(n_objects=(1, 1), radius=(20.0, 36.0), noise=0.02)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _needs_a_gpu(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        pytest.fail("these checks need a CUDA GPU; the CPU paths are tested in tests/")
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "cache"))


def _config(**changes) -> TrainConfig:
    base = TrainConfig(
        model="random:tiny",
        device="cuda",
        epochs=4,
        learning_rate=3e-3,
        n_objects_per_batch=1,
        min_samples_per_epoch=8,
        n_iterative_prompts=0,
        early_stopping=None,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "no"])
def test_training_on_the_gpu_learns_and_its_checkpoint_loads_on_the_cpu(tmp_path, precision):
    data = make_dataset(4, shape=(128, 128), style=ONE_OBJECT, seed=0)
    events = list(iter_train(_config(mixed_precision=precision), data, out_dir=tmp_path / "run"))
    started = events[0]
    assert isinstance(started, TrainingStarted) and started.device.startswith("cuda")
    assert started.config.mixed_precision == precision
    losses = [e.train_loss for e in events if isinstance(e, EpochDone)]
    assert len(losses) == 4 and all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], losses
    finished = events[-1]
    assert isinstance(finished, TrainingFinished) and finished.epochs_done == 4
    last = torch.load(finished.last_checkpoint_path, map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in last["model_state"].values())
    exported = torch.load(finished.exported_model_path, weights_only=True)
    build_sam(TINY).load_state_dict(exported, strict=True)
    image, _ = data[0]
    on_cpu = Segmenter(load_model(finished.exported_model_path, device="cpu").sam)
    on_cpu.set_image(image)
    assert on_cpu.predict(box_xyxy=np.array([30, 30, 100, 100])).mask.shape == image.shape


def test_a_gpu_run_continues_on_the_cpu(tmp_path):
    data = make_dataset(3, shape=(128, 128), style=ONE_OBJECT, seed=0)
    run = tmp_path / "run"
    first = list(iter_train(_config(epochs=1, mixed_precision="bf16"), data, out_dir=run))
    assert first[-1].epochs_done == 1
    resumed = list(
        iter_train(
            _config(epochs=2, device="cpu", mixed_precision="no"),
            data,
            out_dir=run,
            resume_from=run,
        )
    )
    started = resumed[0]
    assert started.device == "cpu" and started.start_epoch == 1
    assert resumed[-1].epochs_done == 2


def test_nano_masks_on_the_gpu_match_the_cpu_s(tmp_path):
    """The packaged model on the GPU (bf16 encoder where 'auto' picks it) against fp32 on the
    CPU: box-prompt masks of every object agree to IoU >= 0.98 (the issue's bar)."""
    image, labels = make_image((512, 512), seed=3)
    masks = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "auto"), ("cuda", "fp32")):
        segmenter = Segmenter(load_model("nano", device=device).sam, precision=precision)
        segmenter.set_image(image)
        found = []
        for label in range(1, int(labels.max()) + 1):
            rows, cols = np.nonzero(labels == label)
            box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=float)
            found.append(segmenter.predict(box_xyxy=box).mask)
        masks[device, precision] = found
    reference = masks["cpu", "fp32"]
    assert len(reference) >= 5
    for key in (("cuda", "auto"), ("cuda", "fp32")):
        ious = [
            (a & b).sum() / max((a | b).sum(), 1)
            for a, b in zip(reference, masks[key], strict=True)
        ]
        assert min(ious) >= 0.98, (key, min(ious))


def _write_folders(root: Path) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for index, (image, label) in enumerate(make_dataset(3, shape=(128, 128), seed=7)):
        tifffile.imwrite(images / f"cell_{index}.tif", image)
        tifffile.imwrite(labels / f"cell_{index}.tif", label)
    return images, labels


def _torchrun(n_processes: int, root: Path) -> subprocess.CompletedProcess:
    images, labels = _write_folders(root)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={n_processes}", "-m", "napari_samtune.cli", "train"]
    command += ["--preset", "a100", "--model", "random:tiny", "--images", str(images)]
    command += ["--labels", str(labels), "--out", str(root / "run"), "--epochs", "2"]
    command += ["--min-samples", "4", "--n-objects", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def test_torchrun_trains_with_nccl(tmp_path):
    done = _torchrun(1, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported model" in done.stdout
    state = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    build_sam(TINY).load_state_dict(state, strict=True)


def test_torchrun_with_more_processes_than_gpus_is_refused_clearly(tmp_path):
    done = _torchrun(torch.cuda.device_count() + 1, tmp_path)
    assert done.returncode != 0
    assert "each process trains on a GPU of its own" in done.stdout + done.stderr


@pytest.mark.parametrize("name", ["vit_t", "vit_b"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_encoder_replayed_from_a_cuda_graph_matches_the_eager_call(name, dtype, monkeypatch):
    from napari_samtune.core import cuda_graphs
    from napari_samtune.core.accelerate import autocast, use_fast_paths
    from napari_samtune.core.fast_encoder import encode

    torch.manual_seed(0)
    sam = use_fast_paths(build_sam(name)).to("cuda").eval()
    pixels = torch.randn(1, 3, 1024, 1024, device="cuda")
    device = torch.device("cuda")

    def run(graphs: str, x: torch.Tensor) -> torch.Tensor:
        monkeypatch.setenv(cuda_graphs.ENV_SWITCH, graphs)
        with torch.inference_mode(), autocast(device, dtype):
            return encode(sam, x, cuda_graph=True).float()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a refused capture (eager fallback) fails the test
            eager, graphed = run("0", pixels), run("1", pixels)
            assert sam.image_encoder in cuda_graphs._captured
            tolerance = 1e-4 if dtype is None else 0.1
            torch.testing.assert_close(graphed, eager, atol=tolerance, rtol=0)
            other = torch.randn_like(pixels)  # the same graph, new input
            torch.testing.assert_close(run("1", other), run("0", other), atol=tolerance, rtol=0)
            with torch.no_grad():  # weights changed in place: the graph reads them
                sam.image_encoder.neck[-1].bias.add_(0.5)
            torch.testing.assert_close(run("1", pixels), run("0", pixels), atol=tolerance, rtol=0)
            assert not torch.allclose(run("1", pixels), graphed, atol=tolerance)
    finally:
        cuda_graphs.forget_graphs()
