"""Resource presets, auto-detection and the training config."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import replace

import pytest
import torch

from napari_samtune.core.architectures import TINY, VIT_B, VIT_H, VIT_T
from napari_samtune.core.presets import (
    PRESETS,
    ResourcePreset,
    TrainConfig,
    config_from_preset,
    detect_preset,
    get_preset,
    measure_machine,
)


def test_presets_are_immutable_typed_data():
    assert isinstance(PRESETS, tuple)
    assert all(isinstance(p, ResourcePreset) for p in PRESETS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS[0].memory_gb = 1000.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS[0].settings[0].n_objects_per_batch = 99
    assert [p.key for p in PRESETS] == [
        "cpu-8gb", "cpu-16gb", "cpu-32gb", "cpu-64gb", "gtx1080", "rtx5000", "v100", "a100",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "arch", "freeze", "n_objects", "batch_size"),
    [
        ("cpu-8gb", VIT_T, ("image_encoder",), 1, 1),
        ("cpu-8gb", VIT_B, ("image_encoder",), 1, 1),
        ("cpu-16gb", VIT_T, (), 5, 1),
        ("cpu-32gb", VIT_B, (), 10, 1),
        ("cpu-64gb", VIT_B, (), 15, 1),
        ("gtx1080", VIT_T, (), 5, 1),
        ("gtx1080", VIT_B, ("image_encoder",), 10, 1),
        ("rtx5000", VIT_T, (), 20, 1),
        ("v100", VIT_B, (), 35, 1),
        ("a100", VIT_H, (), 25, 2),
    ],
)
def test_the_measured_table(key, arch, freeze, n_objects, batch_size):
    setting = get_preset(key).setting_for(arch)
    assert (setting.freeze, setting.n_objects_per_batch, setting.batch_size) == (
        freeze,
        n_objects,
        batch_size,
    )


@pytest.mark.parametrize(
    ("gpu", "ram", "expected"),
    [
        (None, 7.7, "cpu-8gb"),
        (None, 15.6, "cpu-16gb"),
        (None, 31.3, "cpu-32gb"),
        (None, 62.8, "cpu-64gb"),
        (None, 500.0, "cpu-64gb"),
        (7.9, 64.0, "gtx1080"),
        (15.7, 16.0, "rtx5000"),
        (31.7, 16.0, "v100"),
        (39.4, 16.0, "v100"),
        (79.2, 16.0, "a100"),
        (139.0, 16.0, "a100"),
    ],
)
def test_auto_detection_picks_the_largest_preset_that_fits(gpu, ram, expected):
    preset, reason = detect_preset(gpu, ram, n_cores=16)
    assert preset.key == expected
    assert preset.name in reason


def test_auto_detection_explains_fallbacks():
    preset, reason = detect_preset(4.0, 31.3, n_cores=16)
    assert preset.key == "cpu-32gb"
    assert "4.0 GB" in reason and "GTX 1080" in reason
    preset, reason = detect_preset(None, 4.0, n_cores=2)
    assert preset.key == "cpu-8gb" and "less RAM" in reason
    preset, reason = detect_preset(None, 15.6, n_cores=2)
    assert preset.key == "cpu-16gb" and "8 cores" in reason


def test_auto_detection_shares_the_ram_of_processes_training_on_the_cpu(monkeypatch):
    """Under torchrun every process chose the preset for the whole RAM: 2 processes on
    24 GB each took cpu-16gb's memory, 32 GB in all."""
    from napari_samtune.core import presets

    preset, reason = detect_preset(None, 23.5, n_cores=16, n_processes=2)
    assert preset.key == "cpu-8gb"
    assert "shared by 2 training processes (11.8 GB each)" in reason
    preset, _ = detect_preset(79.2, 23.5, n_cores=16, n_processes=2)  # a GPU each
    assert preset.key == "a100"
    machine = presets.MachineResources(None, 23.5, 16, None)
    monkeypatch.setattr(presets, "measure_machine", lambda: machine)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # set by torchrun --nproc-per-node 2
    assert presets.resolve_preset("auto")[0].key == "cpu-8gb"
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert presets.resolve_preset("auto")[0].key == "cpu-16gb"


def test_measure_machine_reports_this_machine():
    found = measure_machine()
    assert found.ram_gb > 0.5 and found.n_cores >= 1
    assert (found.gpu_memory_gb is None) == (not torch.cuda.is_available())


def test_config_from_preset_applies_the_table_and_overrides():
    config = config_from_preset(get_preset("cpu-16gb"), "random:vit_t")
    assert (config.n_objects_per_batch, config.freeze, config.batch_size) == (5, (), 1)
    assert (config.learning_rate, config.epochs, config.early_stopping) == (1e-5, 100, 10)
    assert (config.min_samples_per_epoch, config.preset, config.device) == (50, "cpu-16gb", "cpu")
    assert config.patch_size is None  # the model's input size
    changed = config_from_preset(get_preset("cpu-16gb"), "random:vit_t", epochs=3, lora_rank=4)
    assert (changed.epochs, changed.lora_rank, changed.n_objects_per_batch) == (3, 4, 5)
    with pytest.raises(TypeError, match="n_objects"):
        config_from_preset(get_preset("cpu-16gb"), "random:vit_t", n_objects=3)
    assert config_from_preset("CPU-16GB", "random:vit_t") == config  # a key or name will do
    with pytest.raises(ValueError, match="unknown preset 'cpu-3gb'"):
        config_from_preset("cpu-3gb", "random:vit_t")
    with pytest.raises(TypeError, match=r"preset=None; pass a preset key such as 'cpu-16gb'"):
        config_from_preset(None, "random:vit_t")  # it was an AttributeError from deep inside
    # an architecture by name, as load_model takes it (it was an AttributeError too)
    assert config_from_preset("cpu-16gb", "weights.pth", architecture="vit_t") == replace(
        config, model="weights.pth"
    )
    with pytest.raises(ValueError, match=r"architecture='vit_q'; choose one of \["):
        config_from_preset("cpu-16gb", "weights.pth", architecture="vit_q")


def test_a_frozen_encoder_gets_trainable_only_checkpoints_unless_told_otherwise():
    """The encoder the preset freezes is the base model's: checkpoints need not hold it."""
    frozen = config_from_preset("cpu-8gb", "random:vit_b")
    assert "image_encoder" in frozen.freeze and frozen.checkpoint_trainable_only
    assert not config_from_preset("cpu-16gb", "random:vit_t").checkpoint_trainable_only
    # from the final freeze, not the preset's: unfrozen, or frozen by the person
    unfrozen = config_from_preset("cpu-8gb", "random:vit_t", freeze=(), check=False)
    assert not unfrozen.checkpoint_trainable_only
    assert config_from_preset(
        "cpu-16gb", "random:vit_t", freeze=("image_encoder",)
    ).checkpoint_trainable_only
    whole = config_from_preset("cpu-8gb", "random:vit_b", checkpoint_trainable_only=False)
    assert not whole.checkpoint_trainable_only


@pytest.mark.parametrize(
    "override, advice",
    [
        ({"epoch": 20}, "did you mean epochs=20?"),  # a typo of the README's epochs=20
        ({"lr": 1e-4}, "did you mean learning_rate=0.0001?"),  # the CLI's --lr
        ({"n_objects": 3}, "did you mean n_objects_per_batch=3?"),  # the CLI's --n-objects
    ],
)
def test_an_unknown_override_names_the_field_meant(override, advice):
    with pytest.raises(TypeError, match=re.escape(advice)) as info:
        config_from_preset("cpu-16gb", "random:vit_t", **override)
    assert "the TrainConfig fields are" in str(info.value) and "mask_loss" in str(info.value)


def test_auto_preset_is_what_detection_picks_here():
    from napari_samtune.core.presets import measure_machine, resolve_preset

    found = measure_machine()
    expected, reason = detect_preset(found.gpu_memory_gb, found.ram_gb, found.n_cores)
    assert resolve_preset("auto") == (expected, reason)
    assert config_from_preset("auto", "random:tiny", architecture=TINY).preset == expected.key


def test_tiny_test_model_fits_every_preset_with_its_smallest_setting():
    for preset in PRESETS:
        config = config_from_preset(preset, "random:tiny", architecture=TINY)
        assert config.n_objects_per_batch == preset.settings[0].n_objects_per_batch


def test_presets_that_cannot_fit_are_refused_before_training():
    with pytest.raises(ValueError, match=r"cannot fit model 'vit_h'.*a100"):
        config_from_preset(get_preset("cpu-8gb"), "random:vit_h")
    # the presets offered instead are those with a row for it, not only larger ones: cpu-8gb
    # trains vit_b with a frozen encoder, so it must not be offered as having "more memory"
    with pytest.raises(ValueError, match=r"cannot fit model 'vit_b'") as refused:
        config_from_preset(get_preset("cpu-16gb"), "random:vit_b")
    assert "more memory" not in str(refused.value)
    assert "measured for 'vit_b' or a larger one (cpu-8gb, cpu-32gb" in str(refused.value)
    with pytest.raises(ValueError, match="far above"):
        config_from_preset(get_preset("cpu-8gb"), "random:vit_t", n_objects_per_batch=10)
    with pytest.raises(ValueError, match="image encoder frozen"):
        config_from_preset(get_preset("cpu-8gb"), "random:vit_t", freeze=())
    unchecked = config_from_preset(get_preset("cpu-8gb"), "random:vit_t", check=False, freeze=())
    assert unchecked.freeze == ()


def test_a_model_without_its_own_row_is_checked_against_a_named_larger_one():
    with pytest.raises(ValueError) as refused:
        config_from_preset("cpu-16gb", "random:nano", n_objects_per_batch=50)
    assert "fits for nano (5), going by its vit_t row (it has no row for nano; vit_t is" in str(
        refused.value
    )
    with pytest.raises(ValueError, match=r"fits nano only with the image encoder frozen, going"):
        config_from_preset("cpu-8gb", "random:nano", freeze=())
    with pytest.raises(ValueError) as refused:  # its own row: nothing to explain
        config_from_preset("cpu-16gb", "random:vit_t", n_objects_per_batch=50)
    assert "fits for vit_t (5); lower" in str(refused.value) and "row" not in str(refused.value)


def test_a_weights_file_of_unknown_shape_is_named_by_its_path(tmp_path):
    custom = dataclasses.replace(TINY, name="custom", embed_dim=64)
    path = str(tmp_path / "mine.pt")
    with pytest.raises(ValueError, match=f"fits for {re.escape(repr(path))} \\(5\\), going by"):
        config_from_preset("cpu-16gb", path, architecture=custom, n_objects_per_batch=50)


def test_config_from_preset_refuses_a_lora_rank_the_model_cannot_use():
    with pytest.raises(ValueError, match="^lora_rank=100000 is above 128"):
        config_from_preset("cpu-16gb", "random:nano", lora_rank=100000)
    with pytest.raises(ValueError, match="^lora_rank=129 is above 128"):  # not a memory check
        config_from_preset("cpu-16gb", "random:nano", check=False, lora_rank=129)
    assert config_from_preset("cpu-16gb", "random:nano", lora_rank=128).lora_rank == 128


def test_configs_saved_with_a_lora_alpha_but_no_lora_still_load():
    saved = {**dataclasses.asdict(TrainConfig()), "lora_rank": 0, "lora_alpha": 8.0}
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))) == TrainConfig()
    with_lora = {**saved, "lora_rank": 4}
    assert TrainConfig.from_dict(with_lora).lora_alpha == 8.0
    with pytest.raises(ValueError, match="set lora_rank too"):  # a new config is refused
        dataclasses.replace(TrainConfig.from_dict(saved), lora_alpha=8.0)


def test_presets_leave_lora_off():
    for preset in PRESETS:
        config = config_from_preset(preset, "random:tiny", architecture=TINY)
        assert (config.lora_rank, config.lora_alpha) == (0, None)


def test_train_config_round_trips_through_json():
    config = TrainConfig(model="random:tiny", freeze=("image_encoder",), patch_size=128, seed=3)
    data = json.loads(json.dumps(dataclasses.asdict(config)))
    assert TrainConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown training config fields"):
        TrainConfig.from_dict({**data, "colour": "red"})


def test_architecture_of_a_weights_file_and_a_registry_name(tiny_checkpoint):
    from napari_samtune.core.model_source import architecture_of

    assert architecture_of(str(tiny_checkpoint)) == TINY
    assert architecture_of("vit_b_lm") == VIT_B
    assert architecture_of("random:tiny") == TINY
    with pytest.raises(ValueError, match="neither a model name"):
        architecture_of("no-such-model")
    with pytest.raises(ValueError, match="unknown architecture 'vit_z'"):
        architecture_of("random:vit_z")


def test_a_preset_config_for_a_broken_user_model_says_what_is_wrong_with_it(tiny_checkpoint):
    from napari_samtune.core.user_models import register_user_model

    register_user_model(tiny_checkpoint, "nuclei_v1", TINY).unlink()  # its weights deleted
    with pytest.raises(ValueError) as caught:
        config_from_preset("cpu-16gb", "nuclei_v1")
    message = str(caught.value)
    assert "user model 'nuclei_v1' is broken" in message, message
    assert "weights file" in message and "samtune models --remove nuclei_v1" in message


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"scheduler_patience": -1}, r"^scheduler_patience=-1; use a whole number >= 0$"),
        ({"scheduler_factor": 1.5}, r"^scheduler_factor=1.5; use a factor in \(0, 1\)"),
    ],
)
def test_a_bad_scheduler_setting_is_named_alone(changes, said):
    """Patience -1 was told "scheduler_factor 0.5 must lie in (0, 1) and ..." too."""
    with pytest.raises(ValueError, match=said):
        config_from_preset("cpu-8gb", "nano", **changes)


def test_auto_detection_sizes_the_preset_for_the_device_trained_on(monkeypatch):
    """--device cpu on an A100 machine got the A100's settings (40 objects x 2 patches of
    vit_b, everything trained) for 31 GB of RAM; --device cuda:1 the settings of GPU 0."""
    from napari_samtune.core import presets

    gpus = {None: 79.2, 0: 79.2, 1: 7.9}
    measured = []

    def measure(gpu_index=None):
        measured.append(gpu_index)
        return presets.MachineResources(gpus[gpu_index], 31.0, 16, "a GPU")

    monkeypatch.setattr(presets, "measure_machine", measure)
    assert presets.resolve_preset("auto")[0].key == "a100"
    preset, reason = presets.resolve_preset("auto", "cpu")
    assert preset.key == "cpu-32gb" and "training on cpu, the GPU (a GPU) is not counted" in reason
    assert presets.resolve_preset("auto", "cuda:1")[0].key == "gtx1080"
    assert presets.resolve_preset("auto", "cuda")[0].key == "a100"
    assert measured == [None, None, 1, None]


def test_a_preset_for_more_memory_than_the_machine_has_is_said():
    from napari_samtune.core import presets
    from napari_samtune.core.preset_memory import memory_short
    from napari_samtune.core.presets import MachineResources, get_preset

    machine = MachineResources(8.0, 23.5, 2, "GTX 1080")
    assert memory_short(get_preset("cpu-16gb"), machine, "cpu") == ""
    short = memory_short(get_preset("cpu-64gb"), machine, "cpu")
    assert short.startswith("preset cpu-64gb is for 64 GB and this machine has 23.5 GB RAM")
    assert "GPU memory" in memory_short(get_preset("v100"), machine, "cuda:0")
    assert memory_short(get_preset("gtx1080"), machine, "cuda") == ""
    # a GPU preset trained on the CPU (as its refusal without CUDA advises) is held to RAM,
    # and the preset named is the RAM's ('samtune presets' named the GPU's, the A100 here)
    big_gpu = MachineResources(79.2, 23.5, 2, "A100")
    short = memory_short(get_preset("a100"), big_gpu, "cpu")
    assert "23.5 GB RAM" in short and short.endswith("cpu-16gb is the preset detected for its RAM")
    assert memory_short(get_preset("v100"), machine, "cuda").endswith(
        "gtx1080 is the preset detected for its GPU"
    )
    # for the model: cpu-16gb has no setting for vit_b (the preset named refused it); a GPU
    # smaller than every GPU preset's: no CPU preset named as "detected for its GPU"
    vit_b, vit_h = presets.ARCHITECTURES["vit_b"], presets.ARCHITECTURES["vit_h"]
    short = memory_short(get_preset("cpu-64gb"), machine, "cpu", vit_b)
    assert short.endswith("cpu-8gb is the preset detected for its RAM")
    short = memory_short(get_preset("cpu-64gb"), machine, "cpu", vit_h)
    assert short.endswith("no preset measured for vit_h fits it: choose a smaller model")
    small_gpu = MachineResources(6.0, 23.5, 2, "a small GPU")
    short = memory_short(get_preset("v100"), small_gpu, "cuda")
    assert short.endswith("no GPU preset fits its 6.0 GB: train on the CPU (device cpu)")


def test_the_device_trained_on_is_read_alike_however_it_is_written(monkeypatch):
    """machine_for, memory_short and gpu_index each read the device their own way: " cuda:1"
    had its GPU measured, then its preset compared with the RAM."""
    from napari_samtune.core import preset_memory, presets

    found = presets.MachineResources(gpu_memory_gb=8.0, ram_gb=64.0, n_cores=8, gpu_name="g")
    big = presets.get_preset("a100")
    for device in ("cuda:1", " cuda:1", "CUDA:1"):
        assert presets.gpu_index(device) == 1
        assert "GB GPU memory" in preset_memory.memory_short(big, found, device)
    assert "GB RAM" in preset_memory.memory_short(big, replace(found, ram_gb=4.0), " CPU")


def test_a_detected_preset_without_a_setting_for_the_model_takes_a_smaller_one_s(monkeypatch):
    """On a 16-31 GB machine without a GPU, cpu-16gb (measured with vit_t alone) is detected,
    and every vit_b model was refused, the README's own config_from_preset("auto", ...,
    "vit_b_lm") too, though cpu-8gb's vit_b setting fits there. A preset chosen by name is
    still refused, and says so."""
    from napari_samtune.core import presets

    machine = presets.MachineResources(None, 23.5, 2, None)
    monkeypatch.setattr(presets, "measure_machine", lambda gpu_index=None: machine)
    assert presets.resolve_preset("auto")[0].key == "cpu-16gb"
    config = config_from_preset("auto", "random:vit_b")
    assert config.preset == "cpu-8gb" and "image_encoder" in config.freeze
    assert config_from_preset("auto", "random:vit_t").preset == "cpu-16gb"  # its own setting
    preset, note = presets.for_model(get_preset("cpu-16gb"), presets.ARCHITECTURES["vit_b"])
    assert preset.key == "cpu-8gb"
    assert note == (
        "cpu-16gb, detected here, has no setting measured for vit_b, so that of cpu-8gb, the "
        "largest preset below it that has one, is used"
    )
    with pytest.raises(ValueError, match="cannot fit model 'vit_b'"):
        config_from_preset("cpu-16gb", "random:vit_b")
    assert presets.for_model(get_preset("cpu-8gb"), presets.ARCHITECTURES["vit_h"])[1] == ""


def test_the_memory_check_of_a_preset_shares_the_ram_among_torchrun_s_processes(monkeypatch):
    """Under ``torchrun --nproc-per-node 2``, cpu-16gb passed on 23.6 GB of RAM (11.8 GB for
    each process), and a100 on the CPU was sent to cpu-16gb, which detection there does not
    pick (cpu-8gb: it shares the RAM among the processes)."""
    from napari_samtune.core import presets
    from napari_samtune.core.preset_memory import memory_short, preset_memory_short
    from napari_samtune.core.presets import MachineResources, TrainConfig, get_preset

    machine = MachineResources(None, 23.6, 2, None)
    assert memory_short(get_preset("cpu-16gb"), machine, "cpu") == ""
    short = memory_short(get_preset("cpu-16gb"), machine, "cpu", n_processes=2)
    assert short.startswith(
        "preset cpu-16gb is for 16 GB and this machine has 23.6 GB RAM for 2 training "
        "processes (11.8 GB each): training may run out of memory"
    )
    assert short.endswith("cpu-8gb is the preset detected for its RAM")
    monkeypatch.setattr(presets, "measure_machine", lambda *index: machine)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    run = TrainConfig(preset="a100", device="cpu", model="random:tiny")
    assert "(11.8 GB each)" in preset_memory_short(run)
    assert presets.resolve_preset("auto", "cpu")[0].key == "cpu-8gb"  # what it names
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert "each" not in preset_memory_short(run)


@pytest.mark.parametrize("processes", [1, 2])
def test_the_smallest_preset_is_not_named_instead_of_itself(processes):
    """cpu-8gb on 6 GB for each process was warned about, "cpu-8gb is the preset detected
    for its RAM": the advice named the preset it warned about."""
    from napari_samtune.core.preset_memory import memory_short
    from napari_samtune.core.presets import MachineResources, get_preset

    machine = MachineResources(None, 6.0 * processes, 2, None)
    short = memory_short(get_preset("cpu-8gb"), machine, "cpu", n_processes=processes)
    assert short.endswith(
        "cpu-8gb is the smallest preset for it: free memory (close other programs)"
        + (", start fewer training processes on it" if processes > 1 else "")
        + ", or train a smaller model or fewer objects per patch"
    )
    assert "detected" not in short
