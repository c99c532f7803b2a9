"""``samtune export``: a training checkpoint -> a plain SAM state dict (LoRA merged)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from napari_samtune.cli import not_empty, option_wording, output_file
from napari_samtune.cli.console import shell_path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a training checkpoint as a plain SAM model file",
        description=(
            "Write the model of a napari-samtune training checkpoint (best.pt or last.pt) "
            "as a plain Segment Anything state dict, LoRA adapters merged, which the "
            "official segment_anything code loads with strict loading."
        ),
    )
    parser.add_argument(
        "checkpoint",
        type=not_empty,
        help="a training checkpoint (best.pt / last.pt), or a run's folder (its best.pt, "
        "else its last.pt)",
    )
    parser.add_argument(
        "-o", "--output", type=output_file("model.pth"), required=True, help="model file to write"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace -o if it is a model file already (never a checkpoint or another file)",
    )
    parser.add_argument("--register", metavar="NAME", help="also register it as user model NAME")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = checkpoint_to_export(args.checkpoint)
    check_not_the_checkpoint(checkpoint, Path(args.output))
    check_not_the_base(checkpoint, Path(args.output))
    check_nothing_is_replaced(Path(args.output), args.overwrite)
    with option_wording({"model_name": "--register"}):
        return _export(checkpoint, args)


def checkpoint_to_export(given: str) -> Path:
    """The checkpoint file ``given`` names: the file itself, or for a run's folder (as
    ``train --out`` made it, or its checkpoints folder) its best.pt, the model that training
    exports, else its last.pt (a run stopped before an epoch ended)."""
    from napari_samtune.core.train_checkpoints import resolve_checkpoint
    from napari_samtune.core.train_export import RunFiles

    best = RunFiles.named_by(given).best
    if Path(given).is_dir() and best.is_file():
        return best
    return resolve_checkpoint(given)


def check_not_the_checkpoint(checkpoint: Path, output: Path) -> None:
    """``ValueError`` if ``output`` is ``checkpoint`` itself: the plain model would replace
    the training checkpoint (a last.pt could no longer be resumed)."""
    same = output.resolve() == checkpoint.resolve()
    if not same and output.exists() and checkpoint.exists():
        same = os.path.samefile(output, checkpoint)  # a link, or a case-insensitive disk
    if same:
        raise ValueError(
            f"-o {output} is the checkpoint being exported ({checkpoint}); the plain model "
            "would replace it, and the run could no longer be resumed from it. Give another "
            f"file name, e.g. -o {_suggestion(checkpoint)}"
        )


def check_not_the_base(checkpoint: Path, output: Path) -> None:
    """``ValueError`` if ``output`` is the file of the base model that ``checkpoint``, or
    another checkpoint of its run, completes where the model exported differs from it in
    the parts taken from it (LoRA adapters merged into its encoder): replaced by that
    model (with --overwrite), the run could no longer be exported or resumed, and the fix
    then named (put the base model back as it was) had no copy left. A run that trained
    parts of the model without LoRA exports the base's other parts as they are."""
    if not output.is_file():
        return
    run = [checkpoint]
    if checkpoint.parent.name == "checkpoints":  # its run's best.pt and last.pt alike
        run += [checkpoint.with_name(name) for name in ("best.pt", "last.pt")]
    for path in dict.fromkeys(p for p in run if p.is_file()):
        base = _lora_base_file(path)
        if base is not None and base.is_file() and os.path.samefile(base, output):
            raise ValueError(
                f"-o {output} is the file of the base model that {path} completes (it holds "
                "only the weights its run trained, and LoRA adapters that change that "
                "model's encoder once merged): replaced, the run could no longer be "
                f"exported or resumed. Give another file name, e.g. -o {_suggestion(output)}"
            )


def _lora_base_file(checkpoint: Path) -> Path | None:
    """The base model file a checkpoint of only its trained weights, with LoRA adapters,
    completes; None for any other checkpoint (or one that cannot be read: export says)."""
    import torch

    try:  # mapped: only the entries read are read
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(saved, dict) or saved.get("model_state_complete", True):
        return None
    config = saved.get("config") or {}
    from napari_samtune.core.model_lookup import model_file

    return model_file(str(config.get("model", ""))) if config.get("lora_rank") else None


def check_nothing_is_replaced(output: Path, overwrite: bool = False) -> None:
    """``ValueError`` if writing ``output`` would destroy what the plain model cannot stand
    in for: a file that is no PyTorch file (an image, a table), a training checkpoint (of
    another run, or the best.pt beside a last.pt), or a registered user model's file (the
    registry then finds its file changed); or, without ``overwrite``, any existing model
    file (another run's model.pth), as ``samtune segment`` replaces no labels file."""
    from napari_samtune.core.checkpoints import is_project_checkpoint
    from napari_samtune.core.registry import user_models_dir

    models = user_models_dir().resolve()
    if output.resolve().is_relative_to(models):
        here = not Path.cwd().resolve().is_relative_to(models)
        elsewhere = Path(output.name) if here else models.parent / output.name
        raise ValueError(
            f"-o {output} is in the user models folder ({models}), whose files belong to "
            "the models registered there ('samtune models' lists them); write the model "
            f"elsewhere, e.g. -o {shell_path(elsewhere)}, and add --register NAME to "
            "register it"
        )
    if output.is_file() and not _is_torch_file(output):
        raise ValueError(
            f"-o {output} exists and is not a PyTorch model file; the model would replace it. "
            f"Give the model a file name of its own, e.g. -o {_suggestion(output)}"
        )
    if output.is_file() and is_project_checkpoint(output):
        raise ValueError(
            f"-o {output} is a napari-samtune training checkpoint; the plain model would "
            "replace it, and its run could no longer be resumed or exported from it. Give "
            f"another file name, e.g. -o {_suggestion(output)}"
        )
    if output.is_file() and not overwrite:
        raise ValueError(
            f"-o {output} exists already (a model file); pass --overwrite to replace it, or "
            f"give another name, e.g. -o {_suggestion(output)}"
        )


TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, its legacy pickle


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` may be replaced by a model: a file torch.save wrote (a model exported
    before, whose replacement is the point of exporting again), or an empty one."""
    with path.open("rb") as handle:
        start = handle.read(4)
    return not start or start.startswith(TORCH_FILE_STARTS)


def _exported_before(checkpoint: Path) -> str:
    """For a checkpoint in a run's folder, the whole model the run exported when it ended,
    which needs no base model."""
    from napari_samtune.core.train_export import RunFiles

    folder = checkpoint.resolve().parent  # 'last.pt' given in its folder: '.' named none
    model = RunFiles(folder.parent).model
    if folder.name != "checkpoints" or not model.is_file():
        return ""
    return f". The model the run exported when it ended, {model}, is whole and needs none"


def _suggestion(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}-model.pth")


def _export(checkpoint: Path, args: argparse.Namespace) -> int:
    from napari_samtune.core.checkpoint_fields import exporting_to
    from napari_samtune.core.checkpoint_models import BaseModelUnavailable, export_model
    from napari_samtune.core.train_export import check_registration

    # before writing; "" too: a script's unset $NAME registered nothing, unsaid
    name = check_registration(args.register) if args.register is not None else None
    try:
        with exporting_to(Path(args.output)):  # a damaged checkpoint's advice names -o
            exported, arch = export_model(checkpoint, args.output)
    except BaseModelUnavailable as err:  # last.pt needs it too
        raise ValueError(f"{checkpoint}: {err}{_exported_before(checkpoint)}") from None
    print(f"exported the {arch.name} model of {shell_path(checkpoint)}: {shell_path(exported)}")
    _tidy_run_of(checkpoint)
    if name:
        from napari_samtune.core.user_models import ModelNameTaken, register_user_model

        try:
            path = register_user_model(exported, name, arch, {"exported_from": str(checkpoint)})
        except ModelNameTaken:  # checked above: another registration finished meanwhile
            raise ValueError(
                f"--register {name} was taken by another model while {checkpoint} was "
                f"exported; the model is in {exported}: register it under another name "
                f"with samtune export {shell_path(checkpoint)} -o "
                f"{shell_path(exported)} --overwrite --register NAME"
            ) from None
        print(f"registered as {name!r}: {path}")
    return 0


def _tidy_run_of(checkpoint: Path) -> None:
    """Delete the temporary files a killed run left in the run folder of ``checkpoint``
    (hidden, each as large as a checkpoint), unless a run trains there now: after a kill,
    export is the advice, and only a run resumed in the folder deleted them. model.pth's
    only when untouched for an hour: another export of the run may be writing it. A
    folder it may not change (an archive, another user's) is left as it is."""
    from contextlib import suppress

    from napari_samtune.core.run_lock import remove_unfinished_writes, training_process
    from napari_samtune.core.train_export import RunFiles

    run = RunFiles.named_by(checkpoint.parent)
    if checkpoint.parent == run.checkpoints and training_process(run.checkpoints.parent) is None:
        with suppress(OSError):  # the export (and its registration) stands
            remove_unfinished_writes(run.checkpoints.parent)
