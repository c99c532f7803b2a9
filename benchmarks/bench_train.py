"""Training speed and memory of the CPU presets' configurations, against a stock baseline.

Configurations (taken from the presets table, random weights: nothing can be
downloaded here; 1024-pixel patches of crowded synthetic images, 2 corrective
clicks after the first prompt, Adam):

* ``vit_t_all``: MobileSAM (vit_t), everything trained, 5 objects (``cpu-16gb``);
* ``vit_t_frozen``: vit_t with the image encoder frozen, 1 object (``cpu-8gb``);
* ``vit_b_frozen``: SAM ViT-B with the image encoder frozen, 1 object (``cpu-8gb``);
* ``vit_b_all``: SAM ViT-B, everything trained, 10 objects (``cpu-32gb``).

Every measurement runs in a fresh child process with ``--threads`` torch threads:

* ``stock``: a straightforward loop over the ``segment_anything`` modules written
  here, in float32 with SAM's own attention: ``image_encoder`` -> per pass
  ``prompt_encoder`` + ``mask_decoder`` (dense positional encoding fetched each
  pass, as ``Sam.forward`` does), the same loss, data, prompts and corrective
  clicks, Adam, with the targets and clicks computed the straightforward way
  (``bench_host``'s). With a frozen encoder the embedding is computed (without
  gradient) in every step: the plain loop has no cache.
* ``fast``: the project's real training loop (``iter_train``) with the config
  the preset gives (mixed precision "auto": bf16 where the CPU runs it faster than fp32,
  fast attention and decoding on;
  with a frozen encoder, checkpoints of the trained weights only).

Seconds per step include the step's data preparation in both (the fast run's
are the intervals between ``StepDone`` events); the first step of each run is
a warm-up and not counted. Stock and fast children alternate, ``--repeats``
times; the table shows the best (lowest) time of each. With a frozen encoder
the fast child trains ``--epoch-samples`` samples per epoch for three epochs
and reports the training time of each epoch (epoch start to its last step)
and the whole epoch including its checkpoint, in an empty embeddings cache; then the first
epoch of a second run, which reads the embeddings the first run stored. Peak memory is each child's
``VmHWM`` (peak resident set) from ``/proc/self/status``.

With ``--device cuda`` the configurations are those of the 8, 16 and 32 GB GPU presets
(``gtx1080``, ``rtx5000``, ``v100``; every model each was set up for, named
``preset:model``; the 80 GB ``a100``'s when named with ``--only``), both loops run on the
GPU, and peak memory is the most GPU memory each child held
(``bench_device.peak_memory_mb``), against the preset's budget.

Run: ``.venv/bin/python benchmarks/bench_train.py [--device cpu] [--threads 2] [--repeats 3]
[--steps 3] [--only vit_t_frozen ...] [--variants fast fast-fp32 fast-stock-paths
fast-whole-checkpoints]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    preset: str  # the preset whose setting for ``model`` this is
    model: str  # architecture name


CONFIGS = {
    "vit_t_all": BenchConfig("cpu-16gb", "vit_t"),
    "vit_t_frozen": BenchConfig("cpu-8gb", "vit_t"),
    "vit_b_frozen": BenchConfig("cpu-8gb", "vit_b"),
    "vit_b_all": BenchConfig("cpu-32gb", "vit_b"),
}
GPU_PRESETS = ("gtx1080", "rtx5000", "v100")  # the 8, 16 and 32 GB GPU presets
LARGE_GPU_PRESETS = ("a100",)  # measured when named with --only, on a GPU of 80 GB or more


def configurations(device: str, presets: tuple[str, ...] = GPU_PRESETS) -> dict[str, BenchConfig]:
    """The configurations measured on ``device``: the CPU presets', or every model setting
    of the GPU presets in ``presets`` (named ``preset:model``)."""
    if device == "cpu":
        return CONFIGS
    from napari_samtune.core.presets import get_preset

    return {
        f"{key}:{s.model}": BenchConfig(key, s.model)
        for key in presets
        for s in get_preset(key).settings
    }


# TrainConfig overrides of the fast variants; "fast" is what the trainer does by default.
VARIANTS = {
    "fast": {},
    "fast-fp32": {"mixed_precision": "no"},
    "fast-stock-paths": {"fast_attention": False},
    "fast-whole-checkpoints": {"checkpoint_trainable_only": False},  # frozen parts written too
}
N_ITERATIVE_PROMPTS = 2
LEARNING_RATE = 1e-5
TARGET_SPEEDUP, TARGET_EPOCH_RATIO = 1.5, 20.0


def setting(name: str):
    """The preset's ModelSetting (frozen parts, objects per patch) for configuration ``name``."""
    from napari_samtune.core.architectures import ARCHITECTURES
    from napari_samtune.core.presets import get_preset

    bench = _config(name)
    return get_preset(bench.preset).setting_for(ARCHITECTURES[bench.model])


def _config(name: str) -> BenchConfig:
    if name in CONFIGS:
        return CONFIGS[name]
    return configurations("cuda", GPU_PRESETS + LARGE_GPU_PRESETS)[name]


def dataset(n_images: int = 2):
    """Crowded 1024 x 1024 synthetic images: each is exactly one patch (its augmentations vary)."""
    from napari_samtune.core.synthetic import SyntheticStyle, make_dataset

    crowded = SyntheticStyle(n_objects=(40, 60))
    return make_dataset(n_images, shape=(1024, 1024), style=crowded, seed=0)


# -- the stock baseline -----------------------------------------------------------------------


def stock_pass_loss(sam, embedding, points, labels, boxes, mask_input, multimask, inp):
    """One plain ``Sam`` decoder pass: (loss, logits, predicted IoU), as ``Sam.forward`` decodes."""
    import torch

    from napari_samtune.core.losses import sam_loss

    sparse, dense = sam.prompt_encoder(
        points=None if points is None else (points, labels), boxes=boxes, masks=mask_input
    )
    logits, iou = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    loss, best = sam_loss(logits, iou, inp.targets, "dice_bce")
    picked = logits[torch.arange(len(best), device=logits.device), best][:, None]
    return loss, picked, iou


def stock_click(logits, inp):
    """The corrective click after a pass: the centre of the largest low-res error."""
    import torch
    from bench_host import stock_corrective_points

    rows, cols = (-(-s // 4) for s in inp.input_size)
    prediction = (logits[:, 0, :rows, :cols] > 0).cpu().numpy()
    truth = (inp.targets[:, 0, :rows, :cols] > 0.5).cpu().numpy()
    points, labels = stock_corrective_points(prediction, truth)
    device = logits.device
    points = torch.as_tensor(points[:, None] * 4 + 1.5, dtype=torch.float32, device=device)
    return points, torch.as_tensor(labels[:, None], device=device)


def stock_loss(sam, embedding, inp):
    """First prompts plus N_ITERATIVE_PROMPTS corrective passes; mean loss over passes."""
    import torch

    points, labels, mask_input, multimask = inp.points, inp.point_labels, None, inp.multimask
    total = 0.0
    for iteration in range(1 + N_ITERATIVE_PROMPTS):
        loss, chosen, _ = stock_pass_loss(
            sam, embedding, points, labels, inp.boxes, mask_input, multimask, inp
        )
        total = total + loss
        if iteration == N_ITERATIVE_PROMPTS:
            break
        new_points, new_labels = stock_click(chosen.detach(), inp)
        if points is None:
            points, labels = new_points, new_labels
        else:
            points, labels = torch.cat([points, new_points], 1), torch.cat([labels, new_labels], 1)
        mask_input, multimask = chosen.detach(), False
    return total / (1 + N_ITERATIVE_PROMPTS)


def stock_input(sam, patch, ids, device):
    """The patch's input as the project prepared it before its host work was made cheaper:
    full-size masks, and the targets made from them as float32 masks (``bench_host``'s)."""
    from bench_host import stock_targets_of_masks
    from segment_anything.utils.transforms import ResizeLongestSide

    from napari_samtune.core.train_step import PatchInput, _pixels

    img_size = sam.image_encoder.img_size
    input_size = ResizeLongestSide.get_preprocess_shape(*patch.labels.shape, img_size)
    masks = patch.labels[None] == ids.astype(patch.labels.dtype)[:, None, None]
    targets = stock_targets_of_masks(masks, input_size, img_size, device)
    pixels = _pixels(sam, patch.rgb, input_size, device)
    return PatchInput(patch.key, pixels, input_size, patch.labels.shape, masks, targets)


def measure_stock(name: str, steps: int, device_name: str) -> dict:
    """``steps`` + 1 optimizer steps of the plain loop; returns step times and peak memory."""
    import numpy as np
    import torch
    from bench_device import peak_memory_mb, synchronize

    from napari_samtune.core.data import as_pairs, prepare_pairs
    from napari_samtune.core.model_source import load_base_model
    from napari_samtune.core.patches import PatchSampler
    from napari_samtune.core.train_step import with_first_prompts

    model_setting = setting(name)
    frozen = "image_encoder" in model_setting.freeze
    sam, arch, _ = load_base_model(f"random:{_config(name).model}", seed=0)
    device = torch.device(device_name)
    sam.to(device).train()
    sam.image_encoder.requires_grad_(not frozen)
    if frozen:
        sam.image_encoder.eval()
    optimizer = torch.optim.Adam([p for p in sam.parameters() if p.requires_grad], LEARNING_RATE)
    sampler = PatchSampler(prepare_pairs(as_pairs(dataset())), arch.img_size, 16, steps + 1, 0)
    times = []
    for index in sampler.epoch_order(0).tolist():
        start = time.perf_counter()
        patch = sampler.patch(index, 0)
        ids = sampler.sample_objects(patch, model_setting.n_objects_per_batch, index, 0)
        inp = stock_input(sam, patch, ids, device)
        inp = with_first_prompts(inp, np.random.default_rng([0, 3, index, 0]), 0.1)
        optimizer.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(not frozen):
            embedding = sam.image_encoder(inp.pixels[None])
        stock_loss(sam, embedding, inp).backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"step_s": times[1:], "peak_mb": peak_memory_mb(device)}


# -- the project's trainer --------------------------------------------------------------------


def train_config(name: str, variant: str, samples: int, epochs: int, device: str = "cpu"):
    """The preset's config (its model setting and checkpoint kind) with the benchmark's
    training lengths, learning rate and prompts, and the variant's changes."""
    from napari_samtune.core.presets import config_from_preset

    bench = _config(name)
    return config_from_preset(
        bench.preset,
        f"random:{bench.model}",
        check=False,
        device=device,
        learning_rate=LEARNING_RATE,
        n_iterative_prompts=N_ITERATIVE_PROMPTS,
        epochs=epochs,
        min_samples_per_epoch=samples,
        val_fraction=0.0,
        early_stopping=None,
        **VARIANTS[variant],
    )


def measure_fast(
    name: str, variant: str, steps: int, epoch_samples: int, device_name: str = "cpu"
) -> dict:
    """Run ``iter_train``; step times per epoch, epoch times, peak memory.

    Full finetuning: one epoch of ``steps`` + 1 steps. Frozen encoder: three epochs
    of ``epoch_samples`` steps on as many images, so that every sample of the first epoch
    is a patch of its own whose embedding is computed (later epochs reuse them all), in an
    empty embeddings cache; then a second run's first epoch, which reads what the first stored.
    """
    import torch
    from bench_device import peak_memory_mb

    from napari_samtune.core.train import EpochDone, StepDone, iter_train

    frozen = "image_encoder" in setting(name).freeze
    samples, epochs = (epoch_samples, 3) if frozen else (steps + 1, 1)
    config = train_config(name, variant, samples, epochs, device_name)
    data = dataset(samples if frozen else 2)
    step_s, epoch_train_s, epoch_total_s = [[] for _ in range(epochs)], [], []
    with tempfile.TemporaryDirectory() as out:
        os.environ["SAMTUNE_MODELS_DIR"] = str(Path(out) / "models")
        # no embeddings stored by an earlier run: the first epoch runs the encoder on each
        os.environ["SAMTUNE_CACHE_DIR"] = str(Path(out) / "cache")
        last = epoch_start = time.perf_counter()
        for event in iter_train(config, data, out_dir=Path(out) / "run"):
            now = time.perf_counter()
            if isinstance(event, StepDone):
                step_s[event.epoch].append(now - last)
                if event.step == event.steps_per_epoch:
                    epoch_train_s.append(now - epoch_start)
            elif isinstance(event, EpochDone):  # yielded once its checkpoints are written
                epoch_total_s.append(now - epoch_start)
            last = time.perf_counter()
            if not isinstance(event, StepDone):  # started, or an epoch (and its checkpoint) done
                epoch_start = last
        rerun_s = _rerun_first_epoch_s(config, data, Path(out) / "rerun") if frozen else None
    return {
        "rerun_first_epoch_s": rerun_s,
        "step_s": step_s[0][1:],
        "cached_step_s": [t for epoch in step_s[1:] for t in epoch],
        "epoch_train_s": epoch_train_s,
        "epoch_total_s": epoch_total_s,
        "precision": config.mixed_precision,
        "peak_mb": peak_memory_mb(torch.device(device_name)),
    }


def _rerun_first_epoch_s(config, data, out: Path) -> float:
    """A second run's first epoch (its training steps), with the embeddings the first run
    stored: train, annotate more, train again."""
    from dataclasses import replace

    from napari_samtune.core.train import StepDone, TrainingStarted, iter_train

    for event in iter_train(replace(config, epochs=1), data, out_dir=out):
        if isinstance(event, TrainingStarted):
            start = time.perf_counter()
        elif isinstance(event, StepDone) and event.step == event.steps_per_epoch:
            return time.perf_counter() - start
    raise RuntimeError("the second run ended before its first epoch did")


def frozen_step_flops(name: str) -> tuple[float, float]:
    """FLOPs of one patch's encoder pass and of one training step on its cached embedding.

    Matrix products and convolutions only (torch's FlopCounterMode), the step's forward and
    backward over all prompt passes. At equal speed per FLOP, a cached epoch can be at most
    (encoder + step) / step times faster than the first, which pays for both.
    """
    import numpy as np
    import torch
    from bench_embedding import UNLISTED_OP_FLOPS
    from torch.utils.flop_counter import FlopCounterMode

    from napari_samtune.core.accelerate import use_fast_paths
    from napari_samtune.core.data import as_pairs, prepare_pairs
    from napari_samtune.core.fast_encoder import encode
    from napari_samtune.core.model_source import load_base_model
    from napari_samtune.core.patches import PatchSampler
    from napari_samtune.core.train_step import SamTrainingStep, prepare_input, with_first_prompts

    model_setting = setting(name)
    sam, arch, _ = load_base_model(f"random:{_config(name).model}", seed=0)
    use_fast_paths(sam).image_encoder.requires_grad_(False)
    sampler = PatchSampler(prepare_pairs(as_pairs(dataset())), arch.img_size, 16, 1, 0)
    patch = sampler.patch(0, 0)
    ids = sampler.sample_objects(patch, model_setting.n_objects_per_batch, 0, 0)
    inp = prepare_input(sam, patch, ids, torch.device("cpu"))
    inp = with_first_prompts(inp, np.random.default_rng(0), 0.1)
    with FlopCounterMode(display=False, custom_mapping=UNLISTED_OP_FLOPS) as encoder_flops:
        with torch.no_grad():
            embedding = encode(sam, inp.pixels[None])
    with FlopCounterMode(display=False, custom_mapping=UNLISTED_OP_FLOPS) as step_flops:
        SamTrainingStep(sam, N_ITERATIVE_PROMPTS, "dice_bce")([inp], embedding).backward()
    return float(encoder_flops.get_total_flops()), float(step_flops.get_total_flops())


# -- parent: run children, print the tables --------------------------------------------------


def run_child(kind: str, name: str, args) -> dict:
    command = [sys.executable, __file__, "--child", kind, name, "--threads", str(args.threads)]
    command += ["--steps", str(args.steps), "--epoch-samples", str(args.epoch_samples)]
    command += ["--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def collect(args) -> dict[tuple[str, str], list[dict]]:
    """Every (kind, configuration) child ``args.repeats`` times, stock and fast interleaved."""
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for name in args.only:
            for kind in ("stock", *args.variants):
                result = run_child(kind, name, args)
                results.setdefault((kind, name), []).append(result)
                best = min(result["step_s"])
                print(f"  [{repeat + 1}/{args.repeats}] {name:<13} {kind:<17} best step "
                      f"{best:6.2f} s  peak {result['peak_mb']:6.0f} MiB  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    return results


def best(runs: list[dict], field: str) -> float:
    return min(min(r[field]) for r in runs if r[field])


def print_steps(results, args) -> None:
    print(f"\nseconds per step (best of {args.repeats} runs x {args.steps} steps; "
          f"frozen: first epoch / later epochs)")  # fmt: skip
    print(f"{'configuration':<13} {'preset':<9} {'variant':<17} {'stock':>7} {'fast':>14} "
          f"{'speed-up':>9}  target")  # fmt: skip
    for name in args.only:
        stock = best(results[("stock", name)], "step_s")
        for variant in args.variants:
            runs = results[(variant, name)]
            fast = best(runs, "step_s")
            if runs[0]["cached_step_s"]:
                cached = best(runs, "cached_step_s")
                text = f"{fast:.2f} / {cached:.2f}"
                ratio = f"{stock / fast:.1f}x/{stock / cached:.0f}x"
            else:
                text, ratio = f"{fast:.2f}", f"{stock / fast:.2f}x"
            verdict = _step_verdict(stock / fast, bool(runs[0]["cached_step_s"]))
            print(f"{name:<13} {_config(name).preset:<9} {variant:<17} {stock:>7.2f} {text:>14} "
                  f"{ratio:>9}  {verdict}")  # fmt: skip


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _step_verdict(speedup: float, frozen: bool) -> str:
    """The speed-up target (full finetuning) with its verdict; a frozen encoder's target is
    its epochs' ratio (see print_epochs)."""
    if frozen:
        return f"epochs after the first >= {TARGET_EPOCH_RATIO:.0f}x faster: see below"
    return f">= {TARGET_SPEEDUP}x: {_verdict(speedup >= TARGET_SPEEDUP)}"


def print_epochs(results, args) -> None:
    for name in args.only:
        for variant in args.variants:
            runs = [r for r in results[(variant, name)] if r["cached_step_s"]]
            if not runs:
                continue
            print(f"\n{name} ({variant}): epochs of {args.epoch_samples} samples, real Trainer "
                  f"(seconds; training steps / whole epoch with checkpoint)")  # fmt: skip
            for r in runs:
                train, total = r["epoch_train_s"], r["epoch_total_s"]
                print("  run: " + "  ".join(f"epoch {i + 1} {t:.2f}/{w:.2f}"
                      for i, (t, w) in enumerate(zip(train, total, strict=True))))  # fmt: skip
            first = min(r["epoch_train_s"][0] for r in runs)
            later = min(min(r["epoch_train_s"][1:]) for r in runs)
            first_w = min(r["epoch_total_s"][0] for r in runs)
            later_w = min(min(r["epoch_total_s"][1:]) for r in runs)
            # judged on whole epochs (validation and checkpoint included): what a person
            # waits for; the training steps alone are printed beside them
            ratio = first_w / later_w
            print(f"  best: whole epochs {first_w:.2f} / {later_w:.2f} s: {ratio:.1f}x "
                  f"(training steps alone {first:.2f} / {later:.2f} s: {first / later:.1f}x); "
                  f"target >= {TARGET_EPOCH_RATIO:.0f}x on whole epochs: "
                  f"{_verdict(ratio >= TARGET_EPOCH_RATIO)}")  # fmt: skip
            reruns = [r["rerun_first_epoch_s"] for r in runs if r.get("rerun_first_epoch_s")]
            if reruns:
                print(f"  a second run's first epoch, reading the embeddings the first stored: "
                      f"{min(reruns):.2f} s ({first / min(reruns):.1f}x faster than the first "
                      "run's)")  # fmt: skip
            encoder, step = frozen_step_flops(name)
            print(f"  FLOPs per sample: encoder {encoder / 1e9:.1f} G, cached training step "
                  f"{step / 1e9:.1f} G: at equal speed per FLOP a later epoch is at most "
                  f"{(encoder + step) / step:.1f}x faster than the first")  # fmt: skip


def print_memory(results, args) -> None:
    from bench_device import memory_kind

    from napari_samtune.core.presets import get_preset

    # presets' sizes are GiB, as the machine's memory is measured (core/machine.py)
    print(f"\n{memory_kind(args.device)}, MiB, max over runs; budget: the preset's GiB in MiB")
    print(f"{'configuration':<13} {'budget':>8} {'stock':>8} " + " ".join(
        f"{v:>17}" for v in args.variants))  # fmt: skip
    for name in args.only:
        budget = get_preset(_config(name).preset).memory_gb * 1024
        peaks = [max(r["peak_mb"] for r in results[(k, name)]) for k in args.variants]
        stock = max(r["peak_mb"] for r in results[("stock", name)])
        fits = "fits" if max(peaks) <= budget else "OVER BUDGET"
        print(f"{name:<13} {budget:>8.0f} {stock:>8.0f} "
              + " ".join(f"{p:>17.0f}" for p in peaks) + f"  {fits}")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (CPU presets) or cuda (GPU presets)")
    parser.add_argument(
        "--threads", type=int, help="torch threads per child (default: 2 on cpu, up to 8 on cuda)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run")
    parser.add_argument("--epoch-samples", type=int, default=10, help="frozen: samples/epoch")
    parser.add_argument("--only", nargs="+", help="configurations (default: all of the device's)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["fast"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from bench_device import resolve

    args.device = str(resolve(args.device))
    default = configurations("cpu" if args.device == "cpu" else "cuda")
    known = (
        default if args.device == "cpu" else configurations("cuda", GPU_PRESETS + LARGE_GPU_PRESETS)
    )
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown and not args.child:
        parser.error(f"--only {unknown}: on {args.device} the configurations are {sorted(known)}")
    args.only = args.only or list(default)
    if args.threads is None:
        args.threads = 2 if args.device == "cpu" else min(8, os.cpu_count() or 1)
    return args


def main() -> None:
    args = parse_args()
    import torch
    from bench_device import describe

    torch.set_num_threads(args.threads)
    if args.child:
        kind, name = args.child
        if kind == "stock":
            print(json.dumps(measure_stock(name, args.steps, args.device)))
        else:
            print(json.dumps(measure_fast(name, kind, args.steps, args.epoch_samples, args.device)))
        return
    print(f"{describe(torch.device(args.device))}, {args.threads} threads per child, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    results = collect(args)
    print_steps(results, args)
    print_epochs(results, args)
    print_memory(results, args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
