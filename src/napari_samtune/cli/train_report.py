"""What ``samtune train`` says when a run ends: its summary, or, when it was aborted or
crashed, what it left on disk and how to continue it (and, out of memory, what to ask for
instead)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from napari_samtune.cli.console import shell_path, torchrun_world_size


def memory_advice(err: BaseException, resumed: bool = False, config=None) -> str:
    """What a run out of memory can ask for instead; "" for other errors. A ``resumed`` run,
    or one whose folder holds a checkpoint to resume from, keeps its preset and what it
    trains (--resume refuses --preset and --freeze): those need a new run. Only what
    ``config`` (the run's) can still lower is named. The patch size is not named: smaller
    patches are resized up to the model's input, the same memory."""
    from napari_samtune.core.devices import is_out_of_memory
    from napari_samtune.core.preset_memory import (
        nothing_smaller,
        or_list,
        smaller_settings,
        trains_adapters,
    )

    if not is_out_of_memory(err):
        return ""
    room = smaller_settings(config)
    lower = [
        text
        for key, text in (("objects", "fewer --n-objects"), ("batch", "a smaller --batch-size"))
        if key in room
    ]
    anew = ["a --preset for less memory (samtune presets)"] if "preset" in room else []
    if "freeze" in room:
        lora = "--lora-rank 0 " if trains_adapters(config) else ""
        anew.append(f"{lora}--freeze image_encoder")
    if resumed:
        ways = [f"resume with {' or '.join(lower)}"] if lower else []
        if anew:
            ways.append(f"start a new run in another --out with {' or '.join(anew)}")
        told = ", or ".join(ways)
    else:
        told = f"choose {or_list(anew[:1] + lower + anew[1:])}" if anew or lower else ""
    return f"out of memory: {told or nothing_smaller(config)}"


def aborted_note(
    out: Path,
    resumed: str | None = None,
    session=None,
    first_epoch: int | None = None,
    data: str | None = None,
) -> str:
    """What an aborted run left in ``out`` and how to continue it; "" with no checkpoint.
    ``resumed``: the checkpoint the run resumed from; ``session``: the run's
    :class:`~napari_samtune.core.presets.TrainConfig`, whose epochs and early stopping count
    (a resumed run's last.pt, before its first checkpoint, holds those of the session
    before: fewer epochs, or less patience, and the run was called done, its model not
    registered); ``first_epoch``: the epoch the session started training at; ``data``: the
    run's data options, quoted, for the command that continues it (else placeholders)."""
    from napari_samtune.core.train_export import (
        RunFiles,
        registered_since_export,
        unique_model_name,
    )

    files = RunFiles(out)
    data = data or (
        "--images ... --labels ... (and its --val-images and --val-labels, if it had them)"
    )
    if not files.last.is_file():
        return _best_only_note(files.best, out, resumed, data)
    saved = ", ".join(str(p) for p in (files.last, files.best) if p.is_file())
    if _training_done(files.last, session, first_epoch):  # stopped while exporting
        source = shell_path(files.best if files.best.is_file() else files.last)
        name = unique_model_name(out.name)  # as training names it, or the next free name
        model = shell_path(files.model)
        registered = registered_since_export(out) if files.model.is_file() else None
        if registered is not None:  # what failed came after (its summary.json: a full disk)
            return (
                f"its training is done, its model exported to {model} and registered as "
                f"{registered!r} (samtune models lists it): nothing is left to redo; only a "
                f"file written after that failed, as said below (its checkpoints are whole: "
                f"{saved})"
            )
        if files.model.is_file():  # exported: its registration failed (a full models folder)
            return (
                f"its training is done and its model exported to {model}, but not registered:"
                f" samtune export {source} -o {model} --overwrite --register {name} registers "
                f"it (its checkpoints: {saved})"
            )
        return (
            f"its training is done, but its model was not exported: samtune export {source} "
            f"-o {model} --register {name} (its checkpoints: {saved})"
        )
    folder = shell_path(out)
    more = f" --epochs {session.epochs}" if session is not None else ""
    note = (
        f"the run did not finish; its checkpoints are on disk: {saved}; continue it with: "
        f"{train_command()} --resume {folder} --out {folder}{more} {data}"
    )
    if files.best.is_file():
        best = shell_path(files.best)
        note += f", or export its best model so far: samtune export {best} -o model.pth"
    return note


def train_command() -> str:
    """How the run is started again: as it was, under torchrun when it ran there."""
    world_size = torchrun_world_size()
    if world_size <= 1:
        return "samtune train"
    local = os.environ.get("LOCAL_WORLD_SIZE", "")  # processes per machine
    per_node = local if local.isdigit() else world_size
    return f"torchrun --nproc-per-node {per_node} ... -m napari_samtune.cli train"


def _best_only_note(best: Path, out: Path, resumed: str | None, data: str) -> str:
    """The note for a run stopped between the best.pt and the last.pt of its first epoch in
    ``out`` (a full disk, an abort): usable weights, and nothing to continue from in ``out``
    but the checkpoint it resumed from, if any; "" without best.pt."""
    if not best.is_file():
        return ""
    export = f"samtune export {shell_path(best)} -o model.pth"
    if resumed is not None and Path(resumed).is_file():
        again = f"{train_command()} --resume {shell_path(resumed)} --out {shell_path(out)}"
        return (
            f"the run did not finish and wrote no last.pt in {out}; continue it from the "
            f"checkpoint it resumed from: {again} {data}, or export the "
            f"weights of its best epoch so far: {export}"
        )
    return (
        f"the run did not finish and cannot be continued (it wrote no last.pt), but the "
        f"weights of its best epoch so far are in {best}: export them with: {export} (or "
        f"train again; copy {best.name} elsewhere first to keep it)"
    )


def _training_done(last: Path, session=None, first_epoch: int | None = None) -> bool:
    """Whether checkpoint ``last`` has trained all the epochs of the run's ``session`` (a
    ``TrainConfig``; by default its own), or stopped early by its patience: only in a
    checkpoint written after ``first_epoch``, where the session started (one from before
    was resumed, so its patience was not spent, or its best epoch was chosen anew). Mapped,
    not read: it may be GBs; False when that cannot be told."""
    import torch

    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        saved = checkpoint["config"]
        target = int(saved["epochs"]) if session is None else session.epochs
        patience = saved.get("early_stopping") if session is None else session.early_stopping
        flat = int(checkpoint.get("progress", {}).get("epochs_without_improvement", 0))
        epoch = int(checkpoint["epoch"])
        written_here = first_epoch is None or epoch > first_epoch
        return epoch >= target or (written_here and patience is not None and flat >= patience)
    except Exception:  # a damaged file: the note names it, as before
        return False


def _best_line(finished, before: str) -> str:
    """The best epoch and its score; without validation images, by the training loss (it
    was "best negative train loss -0.9094", which a microscopist could not read)."""
    epoch = finished.best_epoch + 1
    if finished.metric_name != "negative train loss":
        return f"best {finished.metric_name} {finished.best_metric:.4f} at epoch {epoch}{before}"
    return (
        f"best epoch {epoch} by training loss {-finished.best_metric:.4f} (no validation "
        "images: --val-images and --val-labels, or --val-fraction above 0, give some)"
    )


def print_summary(finished) -> None:
    """The summary of a finished (or stopped) run on stdout, from its ``TrainingFinished``."""
    if finished.exported_model_path is None:  # stopped before the first step
        print(finished.outcome_message())
        return
    if finished.stopped_by_user:
        print(f"stopped on request after {finished.trained_summary()}; checkpoint written")
    elif finished.stopped_early:
        print("stopped early: no improvement")
    if finished.best_epoch is not None:  # none when stopped within the first epoch
        before = (
            f" ({finished.start_metric:.4f} before training)"
            if math.isfinite(finished.start_metric)
            else ""
        )
        print(_best_line(finished, before))
        print(f"time to best epoch: {finished.time_to_best_s:.1f} s")
    print(f"total training time: {finished.total_time_s:.1f} s")
    print(f"last checkpoint: {shell_path(finished.last_checkpoint_path)}")
    choose = "; --name gives it a name of your own" if finished.folder_name_taken else ""
    print(f"registered model: {finished.registered_name}{finished.name_note()}{choose}")
    print(f"exported model: {shell_path(finished.exported_model_path)}")
    if finished.no_better_message():
        print(f"warning: {finished.no_better_message()}", file=sys.stderr, flush=True)
    if finished.stopped_by_user and torchrun_world_size() > 1:
        print(TORCHRUN_STOP_NOTE, file=sys.stderr, flush=True)


# torchrun takes Ctrl+C, passes it on to the workers (which stop as above) and then ends
# with its own SignalException traceback and exit code 1, whatever they did: torch's
# launcher, not this program, so all that can be done here is to say what it means.
TORCHRUN_STOP_NOTE = (
    "note: torchrun passed the Ctrl+C on to this run, which stopped cleanly with its "
    "checkpoint written; torchrun itself now reports the Ctrl+C as an error of its own "
    "(a SignalException traceback and exit code 1)"
)
# SIGTERM (a batch job's time limit) likewise: the run ends at once with its exit code 143,
# and torchrun then reports the signal as a SignalException and exits 1 of its own
TORCHRUN_TERM_NOTE = (
    "note: torchrun sent this process SIGTERM, as it does when the job is stopped (a time "
    "limit, kill, a second Ctrl+C) and when another process of the run failed (its error is "
    "above then); the run ended with the checkpoints above, if any; torchrun itself now "
    "reports the signal as an error of its own (a SignalException traceback and exit code 1, "
    "not this run's 143)"
)
