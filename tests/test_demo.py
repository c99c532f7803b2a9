"""``samtune demo --quick``: finetuning nano on 2 images of an unseen domain must help."""

from __future__ import annotations

import csv

import pytest

import napari_samtune.cli as cli

# The quick demo (3 held-out images, 4 short epochs) raised box IoU from 0.20 to 0.59 in our
# run; the margin is well below that, to stay robust to platform differences in arithmetic.
MIN_BOX_IOU_GAIN = 0.15


def test_quick_demo_improves_held_out_box_iou(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    with open(out / "comparison.csv") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    before, after = rows["nano"], rows["nano finetuned"]
    gain = float(after["box_iou"]) - float(before["box_iou"])
    assert gain >= MIN_BOX_IOU_GAIN, (before["box_iou"], after["box_iou"])
    assert (out / "comparison.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "data" / "train").iterdir()) == [
        "image_000.tif", "image_000_labels.tif", "image_001.tif", "image_001_labels.tif",
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "| nano finetuned |" in printed and "preset:" in printed
    assert "learning_rate=0.0001" in printed  # the effective config is shown


def test_a_new_demo_in_the_same_folder_replaces_neither_data_nor_run_nor_comparison(tmp_path):
    from napari_samtune.core.demo import _new_run_names

    def names(tag: str) -> tuple:
        return tmp_path / f"data{tag}", tmp_path / f"finetune{tag}", f"comparison{tag}"

    assert _new_run_names(tmp_path) == names("")
    (tmp_path / "finetune").mkdir()  # an earlier demo's run ...
    assert _new_run_names(tmp_path) == names("-2")
    (tmp_path / "finetune").rmdir()
    (tmp_path / "comparison.csv").write_text("model\n")  # ... or its comparison alone
    assert _new_run_names(tmp_path) == names("-2")
    (tmp_path / "finetune-2").mkdir()
    (tmp_path / "comparison-3.png").write_bytes(b"")
    assert _new_run_names(tmp_path) == names("-4")
    (tmp_path / "data-4").mkdir()  # images of another seed, or someone's own data folder
    assert _new_run_names(tmp_path) == names("-5")


def test_a_gpu_preset_without_cuda_and_a_read_only_models_folder_write_nothing(
    tmp_path, capsys, monkeypatch
):
    """--preset a100 on a CPU machine said "device='cuda' ...; use device='cpu'", an option
    the demo does not have; a models folder that cannot be written was found only after the
    images were written and nano evaluated (every try left a data-N folder)."""
    from napari_samtune.core import checkpoints, devices
    from napari_samtune.core.registry import user_models_dir

    out = tmp_path / "demo"
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert cli.main(["demo", "--quick", "--out", str(out), "--preset", "a100"]) == 2
    err = capsys.readouterr().err
    assert "preset 'a100' trains on cuda, but CUDA is not available here" in err
    assert "leave the preset out" in err and "device=" not in err and not out.exists()
    real = checkpoints.folder_problem
    models = user_models_dir()

    def read_only(folder):
        return "cannot be written: read-only" if folder == models else real(folder)

    monkeypatch.setattr(checkpoints, "folder_problem", read_only)
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 2
    assert "the user models folder" in capsys.readouterr().err and not out.exists()


def test_ctrl_c_stops_the_finetuning_and_the_demo_goes_on_with_the_model_so_far(
    tmp_path, monkeypatch
):
    """The first Ctrl+C threw the run away ("samtune demo: interrupted"); now the run
    stops after its step, exports, and the demo compares that model."""
    import signal

    from napari_samtune.cli import demo as cli_demo
    from napari_samtune.core.demo import DemoConfig

    printed, before = [], signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job

    def log(line: str) -> None:
        printed.append(line)
        if line.strip().startswith("epoch 1/"):
            signal.raise_signal(signal.SIGINT)  # what Ctrl+C sends

    monkeypatch.setattr("builtins.print", lambda line="", **kwargs: log(str(line)))
    result = cli_demo._run_demo(DemoConfig().quick(), str(tmp_path / "demo"))
    epochs = [line for line in printed if line.strip().startswith("epoch ")]
    assert len(epochs) < DemoConfig().quick().epochs
    assert result.model_path.is_file() and result.after["box_iou"] > 0
    assert signal.getsignal(signal.SIGINT) is before  # given back


@pytest.mark.parametrize("when", ["evaluating", "before_a_step"])
def test_ctrl_c_outside_the_finetuning_steps_ends_the_demo_as_interrupted(
    tmp_path, monkeypatch, capsys, when
):
    """Ctrl+C while the demo evaluated said "stopping after this step", went on for half
    a minute, then failed with a traceback (a RuntimeError, exit 1) or even finished."""
    import signal

    import napari_samtune.core.demo as core_demo
    import napari_samtune.core.train as core_train

    before = signal.getsignal(signal.SIGINT)
    if when == "evaluating":
        monkeypatch.setattr(
            core_demo, "_evaluate", lambda *args: signal.raise_signal(signal.SIGINT)
        )
    else:  # the finetuning stopped before its first step: no model to compare
        iter_train = core_train.iter_train

        def stopped_at_once(config, *args, **kwargs):
            signal.raise_signal(signal.SIGINT)
            return iter_train(config, *args, **kwargs)

        monkeypatch.setattr(core_train, "iter_train", stopped_at_once)
        monkeypatch.setattr(core_demo, "_evaluate", lambda *args: {"box_iou": 0.0})
    argv = ["demo", "--quick", "--out", str(tmp_path / "demo")]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "samtune demo: interrupted" in err and "Traceback" not in err
    if when == "evaluating":
        assert "stopping after this step" not in err
        assert not (tmp_path / "demo" / "finetune").exists()
    else:
        assert "training stopped before any training step" in err
    assert signal.getsignal(signal.SIGINT) is before  # given back


def test_a_preset_of_more_memory_than_the_machine_has_is_said_to_be(tmp_path, monkeypatch):
    """``samtune demo --preset cpu-64gb`` on a 24 GB machine trained without the warning
    that ``samtune train`` and the README give."""
    from dataclasses import replace

    from napari_samtune.core import preset_memory, train
    from napari_samtune.core.demo import DemoConfig, run_demo
    from napari_samtune.core.machine import MachineResources

    small = MachineResources(gpu_memory_gb=None, ram_gb=16.0, n_cores=2, gpu_name=None)
    monkeypatch.setattr(preset_memory, "machine_for", lambda device: small)

    def not_trained_here(*args, **kwargs):
        raise RuntimeError("the test stops before training")

    monkeypatch.setattr(train, "iter_train", not_trained_here)
    said = []
    config = replace(DemoConfig().quick(), preset="cpu-64gb")
    with pytest.raises(RuntimeError, match="the test stops before training"):
        run_demo(config, tmp_path / "demo", log=said.append)
    warning = "warning: preset cpu-64gb is for 64 GB and this machine has 16"
    assert any(line.startswith(warning) for line in said), said


def test_the_detected_preset_takes_a_smaller_one_s_setting_for_the_demo_s_model(monkeypatch):
    """``samtune demo --model vit_b`` on a 24 GB machine: refused by cpu-16gb, detected."""
    from dataclasses import replace

    from napari_samtune.core import presets
    from napari_samtune.core.demo import DemoConfig, finetune_config

    machine = presets.MachineResources(None, 23.5, 2, None)
    monkeypatch.setattr(presets, "measure_machine", lambda gpu_index=None: machine)
    config, reason = finetune_config(replace(DemoConfig(), model="random:vit_b"))
    assert config.preset == "cpu-8gb" and "cpu-16gb, detected here, has no setting" in reason


def test_a_full_disk_at_the_comparison_still_says_the_scores_and_the_model(tmp_path, monkeypatch):
    """The comparison files could not be written (a full disk): the demo ended with the
    write error alone, its before/after scores and its registered model unsaid."""
    import errno
    import threading

    from napari_samtune.core import comparison
    from napari_samtune.core.demo import DemoConfig, run_demo

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(comparison, "compare_models", full_disk)
    stop, said = threading.Event(), []

    def log(line: str) -> None:
        said.append(line)
        if line.strip().startswith("epoch 1/"):
            stop.set()  # the model of one epoch is enough here

    with pytest.raises(OSError):
        run_demo(DemoConfig().quick(), tmp_path / "demo", log=log, stop_event=stop)
    table = [line for line in said if "before and after finetuning" in line]
    assert table and "| nano finetuned |" in table[0]
    assert any(line.startswith("finetuned model: ") for line in said)
