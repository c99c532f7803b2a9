"""``samtune train``: finetune SAM on annotated images with a resource preset.

Runs under ``torchrun --nproc-per-node N --no-python samtune train ...`` for
multi-GPU (or multi-process CPU) training; then only rank 0 prints and writes.
Ctrl+C stops cooperatively: the current step finishes, a checkpoint is written
and the model exported; a second Ctrl+C, or SIGTERM (a batch job's time limit), aborts,
saying which checkpoints are on disk and how to continue from them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

from napari_samtune.cli import (
    SKIP_UNPAIRED_HELP,
    Terminated,
    add_channel_options,
    model_argument,
    not_empty,
    option_wording,
    output_folder,
    read_annotated,
)
from napari_samtune.cli.console import (
    is_main_process,
    report_error,
    sigterm_interrupts,
    started_by_torchrun,
    torchrun_rank,
)
from napari_samtune.cli.train_config import (
    NONE_MEANS,
    OPTION_NAMES,
    OVERRIDES,
    data_options,
    make_config,
)
from napari_samtune.cli.train_report import TORCHRUN_TERM_NOTE, aborted_note
from napari_samtune.cli.train_report import memory_advice as _memory_advice
from napari_samtune.cli.train_report import print_summary as _print_summary
from napari_samtune.cli.train_resume import (
    out_folder,
)
from napari_samtune.core.config_checks import (
    MASK_LOSSES,
    MIXED_PRECISION_MODES,
    MODEL_PARTS,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="finetune a SAM model on images and instance labels",
        description=(
            "Finetune Segment Anything on your annotated images. Settings come from a "
            "resource preset (see 'samtune presets'); every one can be overridden. The best "
            "model is exported as a plain SAM state dict and registered as a user model."
        ),
    )
    parser.add_argument("--preset", help="'auto' (the default) or a preset key (not with --resume)")
    parser.add_argument(
        "--model",
        type=model_argument,
        help="model name, weights file, or random:<arch> (not with --resume)",
    )
    paths = {"type": not_empty, "nargs": "+"}  # '' is refused, naming the option
    parser.add_argument("--images", **paths, required=True, help="image files, folder or glob")
    parser.add_argument("--labels", **paths, required=True, help="label files, folder or glob")
    parser.add_argument("--val-images", **paths, help="validation images (optional)")
    parser.add_argument("--val-labels", **paths, help="validation labels (optional)")
    add_channel_options(parser)
    parser.add_argument(
        "--out",
        type=output_folder,
        help="folder for checkpoints and the model: required, except with --resume (then "
        "the run's own folder unless given)",
    )
    parser.add_argument(
        "--name",
        help="register the model under this name (default: the name the run's folder registered "
        "before, when resumed there; else the folder's name)",
    )
    parser.add_argument(
        "--resume",
        type=not_empty,
        metavar="RUN",
        help="continue a run: its folder (as --out made it) or its checkpoints/last.pt; "
        "with its settings (overrides still apply)",
    )
    _add_overrides(parser)
    parser.add_argument("--skip-unpaired", action="store_true", help=SKIP_UNPAIRED_HELP)
    parser.add_argument("--force", action="store_true", help="skip the preset's memory checks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("overrides of the preset")
    for field, option, kind, text in OVERRIDES:
        group.add_argument(option, dest=field, type=kind, help=text)
    group.add_argument(
        "--freeze",
        action="append",
        choices=(*MODEL_PARTS, "none"),
        help="part to keep fixed (repeat for several; 'none' trains everything)",
    )
    group.add_argument("--loss", dest="mask_loss", choices=MASK_LOSSES, help="mask loss")
    group.add_argument(
        "--mixed-precision", dest="mixed_precision", choices=MIXED_PRECISION_MODES, help="autocast"
    )
    group.add_argument(
        "--stock-attention",
        dest="fast_attention",
        action="store_false",
        default=None,
        help="use SAM's original attention code instead of fused SDPA (slower, more memory)",
    )
    checkpoints = group.add_mutually_exclusive_group()
    checkpoints.add_argument(
        "--trainable-only",
        dest="checkpoint_trainable_only",
        action="store_true",
        default=None,
        help="checkpoints hold only the trained weights (the default with a frozen image "
        "encoder); loaded, they complete the base model, which must then still be there",
    )
    checkpoints.add_argument(
        "--whole-checkpoints",
        dest="checkpoint_trainable_only",
        action="store_false",
        default=None,
        help="checkpoints hold the whole model, frozen parts too",
    )


def run(args: argparse.Namespace) -> int:
    with option_wording(OPTION_NAMES, NONE_MEANS):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from napari_samtune.core.run_lock import InUseWords, check_not_in_use, training_lock
    from napari_samtune.core.train_export import check_registration

    given_out, args.out = args.out, out_folder(args)
    # held by a run still going: said first, naming the option that gave the folder (a
    # resume was told its --out was in use; a new run there, to continue with --resume)
    if is_main_process():
        check_not_in_use(
            Path(args.out), InUseWords("--out" if given_out is not None else "--resume")
        )
    resumed_run = Path(args.out) if args.resume else None
    check_registration(args.name, resumed_run)  # as training would, before the data is read
    config, origin = make_config(args)
    if bool(args.val_images) != bool(args.val_labels):
        raise ValueError("give both --val-images and --val-labels, or neither")
    verbose = is_main_process()
    options = (args.skip_unpaired, verbose, (args.channel_axis, args.channels))
    train_pairs = read_annotated(args.images, args.labels, "training", *options)
    val_pairs = None
    if args.val_images:
        val_pairs = read_annotated(args.val_images, args.val_labels, "validation", *options)
    _download_model(config.model, show=verbose and not args.no_progress)
    if verbose:
        print(origin)
        if args.preset and args.preset.strip().lower() != "auto":  # auto: it fits
            from napari_samtune.core.preset_memory import preset_memory_short

            short = preset_memory_short(config)
            if short:
                print(f"warning: {short}", file=sys.stderr)
    with training_lock(Path(args.out)) if verbose else nullcontext():  # torchrun: rank 0's
        finished = _train(config, train_pairs, val_pairs, args, verbose)
    if verbose:
        _print_summary(finished)
    return 0


def _download_model(model: str, show: bool) -> None:
    """Download ``model``, a built-in one not on this computer yet, before training loads
    it, with a progress bar only if ``show``. (Loaded by training, its download drew a bar
    whatever --no-progress said, in each of torchrun's processes.)"""
    from napari_samtune.cli.segment_planes import download_bar
    from napari_samtune.core.download import ensure_model_file
    from napari_samtune.core.model_lookup import get_model_spec
    from napari_samtune.core.models import is_registered_name

    if not is_registered_name(model):  # a file, or random weights
        return
    spec = get_model_spec(model)
    if spec.url is None:  # a user or packaged model: nothing to download, checked as loaded
        return
    with download_bar(show) as progress:
        ensure_model_file(spec, progress=progress)


def _train(config, train_pairs, val_pairs, args: argparse.Namespace, verbose: bool):
    """Train with Ctrl+C and SIGTERM handled (SIGTERM aborts at once, as a second Ctrl+C
    does: a batch job's time limit may leave no time to finish the step); the
    ``TrainingFinished`` event."""
    stop = threading.Event()
    previous = stop_on_ctrl_c(stop, verbose)
    try:
        with sigterm_interrupts():  # what the handlers below set is undone as it ends
            return _train_reporting(config, train_pairs, val_pairs, args, stop, verbose)
    finally:
        signal.signal(signal.SIGINT, previous)


def _aborted_note(args: argparse.Namespace, config, started: list[int]) -> str:
    """:func:`aborted_note` of this run, its continue command with the data options given."""
    first_epoch = started[0] if started else None
    return aborted_note(Path(args.out), args.resume, config, first_epoch, data_options(args))


def _train_reporting(config, train_pairs, val_pairs, args, stop, verbose: bool):
    """:func:`_train_with_progress`, saying what is saved when it is aborted or fails."""
    started: list[int] = []  # the epoch training started at, once it has
    try:
        return _train_with_progress(config, train_pairs, val_pairs, args, stop, verbose, started)
    except KeyboardInterrupt as err:  # the second Ctrl+C, or SIGTERM: what is saved, what next
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # see below
        note = _aborted_note(args, config, started) if verbose else ""
        if verbose and isinstance(err, Terminated) and started_by_torchrun():
            # before a checkpoint too: torchrun's traceback follows a bare "terminated"
            note = f"{note}\n{TORCHRUN_TERM_NOTE}" if note else TORCHRUN_TERM_NOTE
        raise type(err)(note) from None
    except Exception as err:  # a crash (out of memory, a full disk): its error, what is saved
        # torchrun sends SIGTERM as soon as another process fails: raised while this was
        # said, it left a bare "terminated" instead (the run ends here anyway)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from napari_samtune.core.train_export import RunFiles

        resumable = bool(args.resume) or RunFiles(Path(args.out)).last.is_file()
        advice = _memory_advice(err, resumed=resumable, config=config)
        if verbose:
            # Before the start, --out's checkpoints may be another run's that the core
            # refused to mix with this one: they are not this run's to report.
            saved = ""
            if started:
                saved = _aborted_note(args, config, started)
            for line in (saved, advice):
                if line:
                    print(f"samtune train: {line}", file=sys.stderr, flush=True)
        elif advice:  # said by the first process if it ran out too, else here after a wait
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun ends the wait
            report_error(f"samtune train (process {torchrun_rank()}): {advice}")
        raise


def stop_on_ctrl_c(
    stop: threading.Event, verbose: bool = True, only_while: threading.Event | None = None
):
    """The first Ctrl+C stops after the step (said by the main process only: torchrun hands
    it to every worker); the second aborts, and so does any while ``only_while`` (the demo's
    finetuning) is given and not set. Returns the handler it replaces."""

    def handler(signum, frame):
        if stop.is_set() or (only_while is not None and not only_while.is_set()):
            raise KeyboardInterrupt
        stop.set()
        if verbose:
            print("\nstopping after this step (Ctrl+C again to abort) ...", file=sys.stderr)

    return signal.signal(signal.SIGINT, handler)


def _train_with_progress(config, train_pairs, val_pairs, args, stop, verbose, started):
    """Drain the training events, printing them if ``verbose``; ``started`` gets the epoch
    training started at, once it has (its model loaded, ``--out`` taken)."""
    from napari_samtune.core.train import TrainingStarted, iter_train, with_progress

    finished = None
    events = iter_train(
        config, train_pairs, val_pairs, args.out, stop, args.resume, model_name=args.name
    )
    if verbose:
        events = with_progress(events, config.epochs, bar=not args.no_progress)
    for event in events:
        if isinstance(event, TrainingStarted):
            started.append(event.start_epoch)
            if verbose:
                print("effective config:\n" + json.dumps(asdict(event.config), indent=2))
                print(
                    f"{event.n_train} training / {event.n_val} validation images on {event.device}"
                )
                if event.left_out:
                    print(event.left_out_message())
                for warning in [*event.data_warnings(), *event.notes]:
                    print(f"warning: {warning}", file=sys.stderr, flush=True)
        finished = event
    return finished
