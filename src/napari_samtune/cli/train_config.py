"""The config of a ``samtune train`` run: the preset chosen (automatic, for the device
trained on), the options given over it, a resume's settings held to its run's, and the
commands its messages advise, with the options as typed."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from napari_samtune.cli import (
    in_option_terms,
)
from napari_samtune.cli.console import (
    shell_path,
)
from napari_samtune.cli.train_report import train_command
from napari_samtune.cli.train_resume import (
    check_saved_device,
    resume_checkpoint,
    resumed_device,
)
from napari_samtune.core.config_checks import (
    freeze_from_choices,
)
from napari_samtune.core.presets import MORE_MEMORY, SKIP_CHECKS, TrainConfig

# (TrainConfig field, option, type, help): the overrides of a preset's settings.

OVERRIDES: tuple[tuple[str, str, type, str], ...] = (
    ("epochs", "--epochs", int, "at most this many epochs"),
    ("learning_rate", "--lr", float, "Adam learning rate"),
    ("n_objects_per_batch", "--n-objects", int, "objects sampled per patch"),
    ("batch_size", "--batch-size", int, "patches per step"),
    ("patch_size", "--patch-size", int, "patch side in pixels (default: model input size)"),
    ("lora_rank", "--lora-rank", int, "train rank-r LoRA adapters in the encoder (0: off)"),
    ("lora_alpha", "--lora-alpha", float, "LoRA scale numerator (default: the rank)"),
    ("early_stopping", "--early-stopping", int, "epochs without improvement (0: never stop)"),
    ("min_samples_per_epoch", "--min-samples", int, "patches per epoch (oversampling)"),
    ("n_iterative_prompts", "--iterative-prompts", int, "corrective clicks per object"),
    ("seed", "--seed", int, "random seed"),
    ("grad_accumulation", "--grad-accumulation", int, "batches per optimizer step"),
    ("device", "--device", str, "auto, cpu, cuda, cuda:1, ..."),
    ("val_fraction", "--val-fraction", float, "held out when no validation data is given"),
    ("embedding_cache_size", "--embedding-cache", int, "frozen encoder: embeddings kept"),
    ("min_object_area", "--min-object-area", int, "pixels; smaller objects skipped beside larger"),
    ("box_jitter", "--box-jitter", float, "box noise, fraction of the box side"),
    ("scheduler_patience", "--scheduler-patience", int, "epochs before the LR is reduced"),
    ("scheduler_factor", "--scheduler-factor", float, "LR multiplier per reduction"),
)

# The core's parameter names as the options that set them, for its error messages.
OPTION_NAMES: dict[str, str] = {
    **{field: option for field, option, *_ in OVERRIDES},
    "freeze": "--freeze",
    "mask_loss": "--loss",
    "mixed_precision": "--mixed-precision",
    "model": "--model",
    "model_name": "--name",
    "out_dir": "--out",
    "resume_from": "--resume",
    "channel_axis": "--channel-axis",
    "channels": "--channels",
    "checkpoint_trainable_only": "--trainable-only",
}
# What to type where the core's message offers None, which a command line cannot give.
NONE_MEANS: dict[str, str] = {
    "early_stopping": "0 (never stop)",
    "patch_size": "no --patch-size (the model's input size)",
}


def overrides_from(args: argparse.Namespace) -> dict:
    """The ``TrainConfig`` fields given on the command line."""
    names = [f for f, *_ in OVERRIDES] + ["mask_loss", "mixed_precision"]
    names += ["checkpoint_trainable_only", "fast_attention"]
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if overrides.get("early_stopping") == 0:
        overrides["early_stopping"] = None
    if args.freeze:
        overrides["freeze"] = freeze_from_choices(args.freeze)
    return overrides


def choose_preset(key: str, device: str | None, model: str) -> tuple[object, str]:
    """The preset named ``key``, or the one auto-detection picks for ``device`` (--device)
    and ``model`` (--model), with the reason."""
    from napari_samtune.core.model_source import architecture_of
    from napari_samtune.core.presets import get_preset, resolve_preset

    if key.strip().lower() != "auto":
        return get_preset(key), f"chosen with --preset {key}"
    return resolve_preset(key, device, architecture_of(model))


def make_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The run's config and a line saying where its settings came from."""
    from napari_samtune.core.checkpoint_fields import epochs_done
    from napari_samtune.core.presets import config_from_preset, device_kind
    from napari_samtune.core.train_checkpoints import (
        check_resumable,
        read_checkpoint,
        unexported_note,
    )
    from napari_samtune.core.train_export import RunFiles
    from napari_samtune.core.train_setup import continued_precision
    from napari_samtune.core.trainer_files import models_replaced

    _refuse_a_restart(args)
    if args.resume:
        if args.model:
            raise ValueError("--resume continues with the checkpoint's model; leave out --model")
        if args.preset:  # its settings would not be used: say so rather than ignore it
            raise ValueError(
                "--resume continues with the run's settings; leave out --preset (give the "
                "settings to change as options, e.g. --batch-size)"
            )
        args.resume = str(resume_checkpoint(args.resume))
        checkpoint = read_checkpoint(args.resume, settings_only=True)  # the trainer's is whole
        overrides = overrides_from(args)
        saved = TrainConfig.from_dict(checkpoint["config"])
        _keep_model_setup(saved, overrides)
        config = replace(saved, **overrides)
        if not args.force:
            check_resumed_fits(checkpoint, saved, config)
        if "device" not in overrides:
            config = replace(config, device=resumed_device(config.device))
            check_saved_device(config.device, args.resume)
        if "mixed_precision" not in overrides:  # an older run's resolved "fp16" on a CPU
            precision = continued_precision(config.mixed_precision, config.device)
            config = replace(config, mixed_precision=precision)
        done = epochs_done(checkpoint, args.resume)  # epochs completed before the resume
        if config.epochs <= done:
            raise ValueError(
                f"{args.resume} has done {done} epoch(s) and the run's epochs are "
                f"{config.epochs}: nothing is left to train; pass --epochs above {done}"
                # killed before its export
                + unexported_note(Path(args.resume), done, checkpoint.get("run_id"))
            )
        check_resumable(checkpoint, config, args.resume)  # as training would, before the data
        return config, f"settings of {args.resume}"
    files = RunFiles(Path(args.out))
    if files.last.exists():  # the core would refuse too, naming its Python argument
        # the whole command, quoted: "--resume <folder>" alone was refused for lacking
        # --images, and with the options given here for its --model
        raise ValueError(
            f"--out {shell_path(args.out)} already holds a training run; continue it "
            f"with: {_continue_command(args)} --epochs N (N above the epochs it has done; its "
            "model and settings are the run's), or choose another --out folder"
        )
    replaced = models_replaced(files)  # an exported model.pth, a kept best.pt
    if replaced:  # before the data is read
        raise ValueError(f"--out {args.out} {replaced}")
    if not args.model:
        raise ValueError("--model is required: a model name, a weights file or random:<arch>")
    preset, reason = choose_preset(args.preset or "auto", args.device, args.model)
    overrides = overrides_from(args)
    if device_kind(overrides.get("device")) == "auto":  # the default, given or not: checked
        _check_preset_device(preset.device, args.preset or "auto")  # (A100 sizes on a CPU)
    try:
        config = config_from_preset(preset, args.model, check=not args.force, **overrides)
    except ValueError as err:  # beyond the preset: it may still fit this machine's memory
        said = str(err).replace(SKIP_CHECKS, "add --force")
        if said.endswith(MORE_MEMORY):
            raise ValueError(f"{said}, or add --force to train so anyway") from None
        if said != str(err):
            raise ValueError(said) from None
        raise
    return config, f"preset {preset.name} ({preset.key}): {reason}"


def _continue_command(args: argparse.Namespace) -> str:
    """The command that continues the run in ``--out`` (all but its --epochs), quoted: with
    "--resume <folder>" alone it was refused for lacking --images, and with the options
    given here for its --model."""
    return f"{train_command()} --resume {shell_path(args.out)} {data_options(args)}"


def _refuse_a_restart(args: argparse.Namespace) -> None:
    """torchrun --max-restarts runs the command that started the run again after a failure;
    where the run's checkpoints are in --out by then, that command cannot continue it (a
    new run's --out is taken; a resume into another folder finds a run of its own there,
    "another training run"): said, with the command that continues it. A resume in its
    own folder goes on from its newest checkpoint."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0").strip() in ("", "0"):
        return
    from napari_samtune.core.train_export import RunFiles

    out = Path(args.out)
    if not RunFiles(out).last.exists():
        return
    if args.resume and resume_checkpoint(args.resume).resolve() == RunFiles(out).last.resolve():
        return
    raise ValueError(
        "torchrun restarted this run's processes after a failure, and a restart runs the "
        f"command that started the run, which cannot continue it: its checkpoints are in "
        f"--out {shell_path(args.out)}; continue it with: {_continue_command(args)} "
        "--epochs N (N above the epochs it has done)"
    )


def data_options(args: argparse.Namespace) -> str:
    """The data options given, to repeat in a command advised (a resume without the
    --val-images given held out validation images of its own, its best epoch chosen anew)."""
    words = []
    for option, paths in (("--images", args.images), ("--labels", args.labels)):
        words += [option, *map(shell_path, paths)]
    for option, paths in (("--val-images", args.val_images), ("--val-labels", args.val_labels)):
        words += [option, *map(shell_path, paths)] if paths else []
    words += ["--skip-unpaired"] if args.skip_unpaired else []
    if args.channel_axis is not None:
        words += ["--channel-axis", str(args.channel_axis)]
    if args.channels is not None:
        words += ["--channels", ",".join(map(str, args.channels))]
    return " ".join(words)


def _keep_model_setup(saved: TrainConfig, overrides: dict) -> None:
    """A resumed run keeps what trains: --freeze or --lora-rank changed on resume was first
    checked as a new setup ("LoRA with a frozen encoder: set --lora-rank 0"), advice that
    resume then refused."""
    from napari_samtune.core.checkpoint_fields import RESUME_MUST_MATCH

    for field in RESUME_MUST_MATCH:
        if field in overrides and overrides[field] != getattr(saved, field):
            kept = in_option_terms(f"{field}={getattr(saved, field)!r}", OPTION_NAMES)
            raise ValueError(
                f"--resume continues the run's model setup ({kept}); leave out "
                f"{OPTION_NAMES[field]}, or start a new run (--model RUN/model.pth) to "
                "train other parts"
            )


def check_resumed_fits(checkpoint: dict, saved: TrainConfig, config: TrainConfig) -> None:
    """Settings changed on resume are held to the run's preset as a new run's are (a run
    that was forced past its preset is left as it was)."""
    from napari_samtune.core.architectures import SamArchitecture
    from napari_samtune.core.presets import check_fits, get_preset

    try:
        preset = get_preset(saved.preset or "")
        arch = SamArchitecture.from_dict(checkpoint["architecture"])
        check_fits(preset, arch, saved)
    except (ValueError, KeyError, TypeError):  # no preset recorded, or forced past it
        return
    try:
        check_fits(preset, arch, config)
    except ValueError as err:  # a resumed run keeps its preset: that advice cannot be taken
        said = str(err).replace(f", or {MORE_MEMORY}", "").replace(f" or {MORE_MEMORY}", "")
        kept = f" (the run keeps its preset {preset.key}), or add --force"
        raise ValueError(said + kept) from None


def _check_preset_device(device: str, preset: str) -> None:
    """A GPU preset chosen on a machine without CUDA: say so in the words typed."""
    from napari_samtune.core.devices import cuda_available, why_no_cuda

    if device == "cuda" and not cuda_available():
        raise ValueError(
            f"--preset {preset} trains on cuda, but CUDA is not available here "
            f"{why_no_cuda()}; add --device cpu to train with its "
            "settings on the CPU, or choose a CPU preset ('samtune presets' lists them)"
        )
