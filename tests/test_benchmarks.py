"""The benchmarks' device handling and configurations (they run on a GPU only where one is lent,
so their shared code paths are checked here, on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_decoder  # noqa: E402
import bench_device  # noqa: E402
import bench_load  # noqa: E402
import bench_train  # noqa: E402

from napari_samtune.core.architectures import ARCHITECTURES  # noqa: E402
from napari_samtune.core.presets import PRESETS  # noqa: E402


def test_gpu_configurations_are_every_model_of_the_8_16_32_gb_gpu_presets():
    expected = {
        f"{p.key}:{s.model}": s
        for p in PRESETS
        if p.device == "cuda" and p.memory_gb <= 32
        for s in p.settings
    }
    configs = bench_train.configurations("cuda")
    assert set(configs) == set(expected)
    assert {c.preset for c in configs.values()} == {"gtx1080", "rtx5000", "v100"}
    for name, model_setting in expected.items():
        assert bench_train.setting(name) == model_setting
    frozen = [n for n in configs if "image_encoder" in bench_train.setting(n).freeze]
    assert frozen == ["gtx1080:vit_b"]  # its epochs are compared like cpu-8gb's


def test_cpu_configurations_are_the_cpu_presets_settings():
    for name, config in bench_train.configurations("cpu").items():
        preset = next(p for p in PRESETS if p.key == config.preset)
        assert preset.device == "cpu"
        assert bench_train.setting(name) == preset.setting_for(ARCHITECTURES[config.model])


def test_cpu_peak_memory_follows_what_the_process_touches():
    # in a fresh process: this one's peak may already be far above what it holds now
    code = (
        "import numpy as np, bench_device as d; before = d.peak_memory_mb('cpu'); "
        "block = np.ones(300 * 2**20, dtype=np.uint8); print(before, d.peak_memory_mb('cpu'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=BENCHMARKS, capture_output=True, text=True, check=True
    )
    before, after = map(float, done.stdout.split())
    assert before > 10  # the interpreter and torch
    assert after >= before + 250  # 300 MiB, every page written


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also where there is one
    with pytest.raises(SystemExit, match="no CUDA GPU; use --device cpu"):
        bench_device.resolve("cuda")


def test_unknown_device_and_configuration_are_refused(capsys):
    with pytest.raises(SystemExit, match="'cpu' or 'cuda'"):
        bench_device.resolve("meta")
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--only", "gtx1080:vit_t"])  # a GPU configuration, on cpu
    assert "on cpu the configurations are" in capsys.readouterr().err
    args = bench_train.parse_args([])
    assert (args.device, args.threads) == ("cpu", 2)
    assert args.only == list(bench_train.CONFIGS)


def test_stock_and_fast_loops_run_on_the_device_they_are_given(monkeypatch):
    """The frozen-encoder configuration end to end on the CPU, as a GPU run does it; a
    whole epoch's time includes writing its checkpoints (here each takes 0.3 s longer)."""
    import time

    from napari_samtune.core import trainer_files

    write_checkpoint = trainer_files.write_checkpoint

    def slow_write(*args, **kwargs):
        time.sleep(0.3)
        return write_checkpoint(*args, **kwargs)

    monkeypatch.setattr(trainer_files, "write_checkpoint", slow_write)
    stock = bench_train.measure_stock("vit_t_frozen", 1, "cpu")
    assert len(stock["step_s"]) == 1 and stock["step_s"][0] > 0
    fast = bench_train.measure_fast("vit_t_frozen", "fast", 1, 1, "cpu")
    assert len(fast["epoch_train_s"]) == 3 and len(fast["cached_step_s"]) == 2
    assert min(stock["peak_mb"], fast["peak_mb"]) > 100
    whole, steps = fast["epoch_total_s"], fast["epoch_train_s"]
    assert len(whole) == 3 and min(w - t for w, t in zip(whole, steps, strict=True)) >= 0.3


def test_embedding_benchmark_alternates_children_and_keeps_the_best(monkeypatch, capsys):
    import bench_embedding

    stock_s, fast_s = iter([10.0, 8.0]), iter([4.0, 5.0])
    calls = []

    def fake_child(kind, name, device):
        calls.append(kind)
        if kind == "stock":
            return {"seconds": next(stock_s)}
        seconds = next(fast_s)
        return {"seconds": seconds, "encoder_seconds": seconds, "fp32_seconds": 2 * seconds,
                "min_iou": seconds / 5, "flops": 3e9,
                "prompt_ms": seconds, "precision": "bfloat16"}  # fmt: skip

    peaks = iter(
        [{torch.bfloat16: 0.01, torch.float32: 0.1}, {torch.bfloat16: 0.02, torch.float32: 0.08}]
    )

    def fake_peaks(device):
        calls.append("peaks")
        return next(peaks)

    monkeypatch.setattr(bench_embedding, "run_child", fake_child)
    monkeypatch.setattr(bench_embedding, "measure_peaks", fake_peaks)
    stock, fast, ratios, best_peaks = bench_embedding.collect(["vit_t"], 2, torch.device("cpu"))
    printed = capsys.readouterr().out
    assert (
        "vit_t: stock 10 s, fast 4 s (bfloat16, 3 GFLOPs; in fp32 8 s), stock/fast 2.50" in printed
    )
    # alternating: drift slows both alike; a peak reading per round
    assert calls == ["peaks", "stock", "fast", "peaks", "stock", "fast"]
    assert best_peaks == {torch.bfloat16: 0.02, torch.float32: 0.1}  # the best of each
    assert stock["vit_t"] == 8.0
    assert fast["vit_t"]["seconds"] == 4.0
    assert fast["vit_t"]["prompt_ms"] == 4.0 and fast["vit_t"]["min_iou"] == 0.8  # over all runs
    assert ratios["vit_t"] == [2.5, 1.6]  # each adjacent pair


def test_a_fast_path_below_the_limit_is_not_called_met(capsys):
    """A --quick run on a busy machine read a low peak and called 0.63 x the limit "met"."""
    import bench_embedding

    fast = {"seconds": 1.0, "min_iou": 0.99, "prompt_ms": 10.0}
    bench_embedding.print_targets("vit_b", 2e12, 5.0, fast, 1.0)  # limit 2 s
    below = capsys.readouterr().out
    assert "fast / limit = 0.5 (target <= 1.6): NOT judged" in below and ": met" in below
    bench_embedding.print_targets("vit_b", 0.8e12, 5.0, fast, 1.0)  # limit 0.8 s
    assert "fast / limit = 1.25 (target <= 1.6): met" in capsys.readouterr().out


def test_the_fast_embedding_time_holds_what_a_first_prompt_would_pay(monkeypatch):
    """The decoder's image tokens are projected once per image (prepare_prompts); left out
    of the fast time, they went to the first prompt, which the prompt latency skips."""
    import bench_embedding
    import numpy as np

    from napari_samtune.core.predict import Segmenter

    prepared, real = [], Segmenter.prepare_prompts
    monkeypatch.setattr(
        Segmenter, "prepare_prompts", lambda self: (prepared.append(1), real(self))[1]
    )
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 70], [40, 30, 120, 100]])
    measured = bench_embedding.measure_fast("tiny", image, boxes, 2, torch.device("cpu"))
    assert len(prepared) == 3  # the warm-up and both timed calls
    assert measured["seconds"] > 0 and measured["encoder_seconds"] > 0
    assert measured["flops"] > 0  # counted on the modules this process timed
    assert 0.98 <= measured["min_iou"] <= 1.0  # fp32 here: the fast modules match stock SAM


def test_the_fast_masks_are_held_to_stock_sam_s(monkeypatch):
    """The reference masks were the fast modules' own (in fp32): equal by construction."""
    import bench_embedding
    import numpy as np

    stock = bench_embedding.stock_box_masks
    image = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 70]])
    masks = stock("tiny", image, boxes, torch.device("cpu"))
    assert len(masks) == 1 and masks[0].shape == (128, 128) and masks[0].dtype == bool
    monkeypatch.setattr(bench_embedding, "stock_box_masks", lambda *a: [~m for m in masks])
    measured = bench_embedding.measure_fast("tiny", image, boxes, 1, torch.device("cpu"))
    assert measured["min_iou"] < 0.5  # the inverted "stock" masks, compared


def test_decoder_benchmark_compares_equal_outputs_and_labels(capsys):
    segmenter = bench_decoder.make_segmenter("random:tiny", 256)
    decode = bench_decoder.decode_rows(segmenter, repeats=1)
    assert [row["case"] for row in decode] == [case for case, *_ in bench_decoder.CASES]
    for row in decode:
        assert row["max_rel_diff"] < 1e-5  # the low-rank and plain decoders agree
        assert row["new_s"] > 0 and row["old_s"] > 0 and row["ratio"] > 0
    trained = bench_decoder.make_segmenter("nano", 256)  # random weights find no object
    automatic = bench_decoder.automatic_row(trained, repeats=1)
    assert automatic["objects"] > 0 and automatic["equal"]  # skipping unconfident points
    assert "decode" not in vars(trained)  # the full-decode stand-in is removed again
    automatic["model"] = "nano"
    bench_decoder.print_tables(segmenter, "random:tiny", 256, decode, automatic)
    out = capsys.readouterr().out
    assert "does not use the low-rank decoder" in out and "| 64 points x 3 masks |" in out
    assert "automatic segmentation with nano" in out and "no object found" not in out


def test_the_stock_loop_prepares_the_same_input_the_straightforward_way():
    """bench_train's baseline builds full-size masks and float targets (the host work the
    project made cheaper), and gets the trainer's input exactly."""
    import numpy as np

    from napari_samtune.core.architectures import TINY, build_sam
    from napari_samtune.core.patches import TrainingPatch
    from napari_samtune.core.synthetic import make_image
    from napari_samtune.core.train_step import prepare_input

    image, labels = make_image((64, 50), seed=1)
    patch = TrainingPatch(
        (0, 0, 0, 0), np.stack([image] * 3, axis=-1), labels, np.unique(labels)[1:]
    )
    sam, ids = build_sam(TINY), patch.object_ids[::2]
    stock = bench_train.stock_input(sam, patch, ids, torch.device("cpu"))
    fast = prepare_input(sam, patch, ids, torch.device("cpu"))
    assert (stock.input_size, stock.original_size) == (fast.input_size, fast.original_size)
    assert np.array_equal(stock.masks, fast.masks) and len(ids) >= 3
    torch.testing.assert_close(stock.pixels, fast.pixels, rtol=0, atol=0)
    torch.testing.assert_close(stock.targets, fast.targets, rtol=0, atol=0)


def test_the_80_gb_preset_is_measured_when_named():
    from napari_samtune.core.presets import get_preset

    assert not any(name.startswith("a100:") for name in bench_train.configurations("cuda"))
    a100 = get_preset("a100")
    for model_setting in a100.settings:
        name = f"a100:{model_setting.model}"
        assert bench_train.setting(name) == model_setting
        assert bench_train.train_config(name, "fast", 4, 1, "cuda").n_objects_per_batch == (
            model_setting.n_objects_per_batch
        )


def test_encoder_variants_compute_the_stock_embedding(capsys, monkeypatch):
    """Every variant of encoder_variants.py is the same encoder: its embedding matches stock
    fp32's (bf16 within rounding), and the table lists each with its difference."""
    import encoder_variants

    monkeypatch.setenv(encoder_variants.ENV_SWITCH, "1")  # restored after the variants set it
    found = encoder_variants.variants("tiny", torch.device("cpu"))
    assert set(found) == {"stock fp32", "stock bf16", "fast fp32", "fast bf16", "fast bf16 NCHW"}
    reference = found["stock fp32"]()
    for name, call in found.items():
        tolerance = 1e-4 if "fp32" in name else 0.1
        torch.testing.assert_close(call(), reference, atol=tolerance, rtol=0, msg=name)
    encoder_variants.measure("tiny", torch.device("cpu"), rounds=1, calls=1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| " + name for name in found]


def test_the_fast_tinyvit_flops_count_its_mbconv_strips(monkeypatch):
    """The first stage's MBConv by strips adds its residual in an in-place oneDNN kernel,
    which torch's counter does not list: the fast path's FLOPs lost that kernel's. Counted,
    strips of 2 rows do the whole map's work plus their halo rows' widening."""
    import bench_embedding

    from napari_samtune.core import conv_strips, onednn
    from napari_samtune.core.accelerate import autocast, use_fast_paths
    from napari_samtune.core.architectures import TINY_TINYVIT, build_sam

    torch.manual_seed(0)
    encoder = use_fast_paths(build_sam(TINY_TINYVIT).eval()).image_encoder
    widen = [block.conv1.c for block in encoder.layers[0].blocks]
    side, rows = encoder.img_size // 4, 2
    # bf16 where oneDNN has bf16 kernels (as the benchmark runs there), else float32
    dtype = torch.bfloat16 if onednn.has_bf16_kernels() else None
    with autocast(torch.device("cpu"), dtype):
        monkeypatch.setattr(conv_strips, "STRIP_BYTES", 1 << 40)  # a strip holds the map
        bench_embedding.encoder_flops(encoder)  # (the first call makes what later ones keep)
        whole = bench_embedding.encoder_flops(encoder)
        strip_bytes = rows * side * widen[0].out_channels * (2 if dtype else 4)
        monkeypatch.setattr(conv_strips, "STRIP_BYTES", strip_bytes)
        calls, by_strips = [], conv_strips.mbconv_by_strips
        monkeypatch.setattr(
            conv_strips, "mbconv_by_strips", lambda *a: calls.append(a[-1]) or by_strips(*a)
        )
        stripped = bench_embedding.encoder_flops(encoder)
    rows_in = sum(min(s + rows + 1, side) - max(s - 1, 0) for s in range(0, side, rows))
    halo = sum(2 * (rows_in - side) * side * c.in_channels * c.out_channels for c in widen)
    # the mixing of the first and last strips makes one row more, dropped (the kernel pads
    # both sides where only one is the image's edge)
    edges = sum(2 * side * 2 * c.out_channels * 9 for c in widen)
    assert calls == [rows] * len(widen) and halo > 0
    assert stripped == whole + halo + edges


def test_the_load_benchmark_compares_loaders_that_give_the_same_model(tmp_path):
    path = bench_load.write_weights("vit_t", tmp_path)
    stock = bench_load.stock_loader("vit_t")(path).state_dict()
    samtune = bench_load.samtune_loader("vit_t")(path).state_dict()
    assert stock.keys() == samtune.keys()
    for key, value in stock.items():
        assert torch.equal(value, samtune[key]), key
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_load.py"), "--models", "vit_t", "--repeats", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    row = next(line for line in done.stdout.splitlines() if line.startswith("| vit_t |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[5]) > 0


def test_the_cache_benchmark_saves_and_reads_in_both_folders(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_cache.py"), "--files", "30", "--saves", "3"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]  # (header)
    assert [c[0] for c in cells] == ["0", "30"]
    for scan, ours, ratio, read in (c[1:] for c in cells):
        assert float(scan) > 0 and float(ours) > 0 and float(read) > 0
        scan, ours = float(scan), float(ours)  # printed to 0.1 ms; the ratio to 0.01
        low, high = (scan - 0.05) / (ours + 0.05), (scan + 0.05) / max(ours - 0.05, 1e-9)
        assert low - 0.005 <= float(ratio.rstrip("x")) <= high + 0.005
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone


def test_the_training_benchmark_says_which_targets_are_met(monkeypatch, capsys):
    """Its targets were printed bare ("target 20x") where a run missed them."""
    from types import SimpleNamespace

    def run(step, cached=(), train=(), total=(), peak=1000.0):
        return {"step_s": list(step), "cached_step_s": list(cached), "epoch_train_s": list(train),
                "epoch_total_s": list(total), "peak_mb": peak}  # fmt: skip

    results = {
        ("stock", "vit_b_all"): [run([3.0])],
        ("fast", "vit_b_all"): [run([2.5], peak=13000.0)],  # 1.2x: missed
        ("stock", "vit_t_all"): [run([2.0])],
        ("fast", "vit_t_all"): [run([1.0])],  # 2x: met
        ("stock", "vit_t_frozen"): [run([1.0])],
        ("fast", "vit_t_frozen"): [run([0.9], [0.1], [10.0, 0.4], [10.5, 0.7])],  # 15x: missed
    }
    args = SimpleNamespace(only=["vit_b_all", "vit_t_all", "vit_t_frozen"], variants=["fast"],
                           repeats=1, steps=1, epoch_samples=10, device="cpu")  # fmt: skip
    monkeypatch.setattr(bench_train, "frozen_step_flops", lambda name: (4e9, 1e9))
    bench_train.print_steps(results, args)
    bench_train.print_epochs(results, args)
    bench_train.print_memory(results, args)
    lines = capsys.readouterr().out.splitlines()
    row = {name: next(line for line in lines if line.startswith(name)) for name in args.only}
    assert row["vit_b_all"].endswith(">= 1.5x: NOT met")
    assert row["vit_t_all"].endswith(">= 1.5x: met")
    assert "see below" in row["vit_t_frozen"]
    assert any("15.0x" in line and "on whole epochs: NOT met" in line for line in lines)
    memory = [line for line in lines if line.startswith("vit_b_all")][-1].split()
    assert memory[1] == "32768" and memory[-1] == "fits"  # cpu-32gb: 32 GiB


def test_installing_nano_keeps_the_replaced_weights_listed_for_their_runs(tmp_path):
    """``train_nano.py --install`` replaced the packaged weights only: the frozen-encoder
    runs begun on them could no longer be completed (registry.EARLIER_NANO)."""
    import train_nano

    from napari_samtune.core.download import file_digest

    registry_file = tmp_path / "registry.py"
    source = (BENCHMARKS.parent / "src/napari_samtune/core/registry.py").read_text()
    registry_file.write_text(source)
    target = tmp_path / "nano.pth"
    target.write_bytes(b"the weights shipped so far")
    digest = file_digest(target, "sha256")
    kept = train_nano.keep_earlier(target, registry_file)
    assert kept == tmp_path / f"nano-{digest[:8]}.pth" and kept.read_bytes() == target.read_bytes()
    namespace: dict = {}
    text = registry_file.read_text()
    start = text.index("EARLIER_NANO:")
    exec(text[start : text.index(")  # fmt: skip", start) + 1], namespace)  # the tuple alone
    assert namespace["EARLIER_NANO"][0] == (kept.name, f"sha256:{digest}")
    assert len(namespace["EARLIER_NANO"]) == 2  # the one listed before stays
    train_nano.keep_earlier(target, registry_file)  # again: listed once
    assert registry_file.read_text() == text


def test_the_resource_study_keeps_its_models_out_of_the_users_folder(tmp_path, monkeypatch, capsys):
    import resource_study

    mine = tmp_path / "my-models"
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(mine))
    folders = []

    def run(args, preset, start, train_pairs, val_pairs, test_pairs, out):
        folders.append(os.environ["SAMTUNE_MODELS_DIR"])  # where train() registers
        return {"best_epoch": 0, "time_to_best_s": 1.0, "box_iou": 0.5, "point_iou": 0.4}

    monkeypatch.setattr(resource_study, "one_run", run)
    argv = ["--presets", "cpu-8gb", "--sizes", "1", "--starts", "nano", "--n-val", "1"]
    assert resource_study.main([*argv, "--n-test", "1", "--out", str(tmp_path / "study")]) == 0
    assert folders == [str(tmp_path / "study" / "user-models")]
    assert os.environ["SAMTUNE_MODELS_DIR"] == str(mine)  # given back
    assert "| cpu-8gb | nano | 1 | 1/8 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--n-val", "0"], ["--n-test", "0"], ["--sizes", "1", "0"]])
def test_the_resource_study_refuses_a_study_without_images(argv, capsys):
    import resource_study

    with pytest.raises(SystemExit):
        resource_study.parse_args(argv)
    assert "must be at least 1" in capsys.readouterr().err
