"""What the training worker runs, and where its result goes afterwards.

:func:`iter_training_job` runs in a napari thread worker: it holds the run's
folder as ``samtune train`` does (so that neither another window nor the command
line writes into it meanwhile), checks the part held out of a single training image,
downloads the model if needed (with progress, and stopped by Stop), reads the TIFF
folders (slow preparing and file reading stay off the main thread), then yields the
core's training events from :func:`napari_samtune.core.train.iter_train` unchanged. It
receives the layers' planes, never layers, and copies them before anything else: what is
painted after the run began is not in it (a stroke painted while its plane is copied may be
in part).

:func:`annotation_widgets` finds the "Annotate with SAM" widgets docked in the
same viewer, so a finished model can be offered there at once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from napari.utils.notifications import show_info

from napari_samtune._qt.continued_runs import PastEpoch
from napari_samtune._qt.dock_life import main_window_of
from napari_samtune._qt.downloads import Reporter, fetch_model_file
from napari_samtune._qt.layer_pairs import copied
from napari_samtune._qt.model_picker import FILE_ENTRY
from napari_samtune._qt.preset_text import PART_LABELS
from napari_samtune._qt.task_messages import logged_notes, user_message
from napari_samtune._qt.train_folders import FolderSource, load_folder_pairs, resolved_folder
from napari_samtune._qt.workers import TaskRefused
from napari_samtune.core.checkpoint_models import BASE_MODEL_FIX, BaseModelUnavailable
from napari_samtune.core.checkpoints import first_free
from napari_samtune.core.data import ImageLabelPair, prepare_pairs
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.run_lock import InUseWords, training_lock
from napari_samtune.core.train import TrainEvent, iter_train
from napari_samtune.core.validation_split import (
    EmptyPartError,
    others_without_objects,
    split_validation,
)

TRAIN_TASK = "training"  # the TaskRunner name of a training run
# BASE_MODEL_FIX in the panel's terms (no --model, no --whole-checkpoints here)
PANEL_BASE_MODEL_FIX = (
    "put the base model back as the run had it (the file at that path, or registered again "
    "under that name, with the same weights), then press Continue… again; or, where the "
    "run has a model.pth (it holds every weight), finetune that further: choose "
    f"'{FILE_ENTRY}' as the model, Browse… to RUN/model.pth, and press Start"
)

# The settings the widget shows that a continued run keeps as they were (it takes the
# epochs, learning rate and device set), by ``TrainConfig`` field, named as in the widget.
KEPT_BY_CONTINUE = {
    "model": "model", "preset": "preset", "n_objects_per_batch": "objects per batch",
    "min_samples_per_epoch": "patches per epoch", "patch_size": "patch size",
    "freeze": "freeze", "lora_rank": "LoRA rank", "early_stopping": "early stopping",
}  # fmt: skip


# a run folder in use (by another panel of this napari, another window, samtune train):
# refused in the words of the panel, before Start and by the run's hold on it
ANOTHER_PANEL = "this napari, another Finetune panel"
# every Finetune panel of this process (napari's windows each dock their own): a model one
# of them trains is offered in all of them to finetune further
FINETUNE_PANELS: weakref.WeakSet = weakref.WeakSet()
NEW_RUN_IN_USE = InUseWords(
    "the new run's folder", "wait for it to finish, or give the new model another name",
    ANOTHER_PANEL,
)  # fmt: skip
CONTINUED_RUN_IN_USE = InUseWords(
    "the run", "wait for it to finish, then continue it", ANOTHER_PANEL
)


@dataclass(frozen=True)
class TrainRequest:
    """Everything one training run needs, fixed when Start is pressed."""

    config: TrainConfig  # checked by the core
    train_pairs: tuple[ImageLabelPair, ...]  # the chosen layers' planes (the worker copies them)
    train_folders: FolderSource | None  # TIFF folders, read by the worker
    val_pairs: tuple[ImageLabelPair, ...]  # empty: held out automatically ...
    val_folders: FolderSource | None  # ... unless folders are given
    out_dir: Path  # the run's folder (checkpoints, metrics, model.pth)
    model_name: str | None  # user-model name to register under; None: the resumed run's
    resume_from: Path | None = None  # a run's last.pt to continue from
    history: tuple[PastEpoch, ...] = ()  # the continued run's epochs, for the plot


class RunFolderInUse(ValueError, TaskRefused):
    """Another training run (another window, ``samtune train``) holds the run's folder: this
    run did not start and wrote nothing there."""


class HeldOutPartEmpty(ValueError, TaskRefused):
    """The only training image's part held out for validation, or the part left for
    training, has no object (see :func:`held_out_message`): the run did not train."""


class ModelNotDownloaded(OSError, TaskRefused):
    """The run's built-in model could not be downloaded (offline, say): training did not
    begin; the message names the file, where to save it by hand, and the other fixes."""


def iter_training_job(
    request: TrainRequest, stop_event: threading.Event, report: Reporter, notes: list[str]
) -> Iterator[TrainEvent]:
    """Hold the run's folder for the whole run, read folder data, check the part held out of
    the only training image (see :func:`held_out_checked`), download the model if needed
    (progress to ``report``; ``stop_event`` stops it, see :func:`fetch_model_file`; what the
    download says besides, a damaged cached file moved aside, is appended to ``notes``),
    then yield every event of the core's training run; :class:`RunFolderInUse` when another
    run holds the folder, :class:`HeldOutPartEmpty` when a held-out part has no object,
    :class:`ModelNotDownloaded` when the model's download fails.
    Problems of the data are told before the download (which may take minutes)."""
    with ExitStack() as held:
        try:
            words = NEW_RUN_IN_USE if request.resume_from is None else CONTINUED_RUN_IN_USE
            held.enter_context(training_lock(request.out_dir, words))
        except ValueError as err:  # told apart from training's errors: nothing began
            raise RunFolderInUse(str(err)) from None
        # the layers' planes, copied here (not at Start, where the viewer froze meanwhile):
        # what is painted from now on is not in the run
        train_data = [*copied(request.train_pairs), *load_folder_pairs(request.train_folders)]
        val_data = [*copied(request.val_pairs), *load_folder_pairs(request.val_folders)]
        train_data = held_out_checked(train_data, bool(val_data), request.config)
        with logged_notes("napari_samtune.core.download", notes):
            try:
                fetch_model_file(request.config.model, report, stop_event)
            except OSError as err:  # the core's DownloadError: nothing trained yet
                raise ModelNotDownloaded(user_message(err)) from None
        try:
            yield from iter_train(
                request.config,
                train_data,
                val_data or None,
                out_dir=request.out_dir,
                stop_event=stop_event,
                resume_from=request.resume_from,
                model_name=request.model_name,
            )
        except EmptyPartError as err:  # a split held_out_checked could not check
            raise HeldOutPartEmpty(held_out_message(err)) from None
        except BaseModelUnavailable as err:  # its fix was in the command line's terms
            fix = str(err).replace(BASE_MODEL_FIX, PANEL_BASE_MODEL_FIX)
            raise BaseModelUnavailable(fix) from None


def held_out_checked(train_data: list, has_val: bool, config: TrainConfig) -> list:
    """``train_data``, the run's training pairs (layers' and folders'). The only one, when
    there is no validation data, is prepared here, so that the run trains on it as it is,
    and a part of it to be held out for validation (or left for training) without any object
    is refused with :class:`HeldOutPartEmpty` before the model is loaded. A pair the core
    refuses is left for the run to refuse in its own words."""
    if len(train_data) != 1 or has_val:
        return train_data
    try:
        prepared = prepare_pairs(train_data)
    except (ValueError, TypeError):
        return train_data
    try:
        split_validation(prepared, config.val_fraction, config.seed)
    except EmptyPartError as err:
        raise HeldOutPartEmpty(held_out_message(err)) from None
    return prepared


def held_out_message(err: EmptyPartError) -> str:
    """The core's :class:`EmptyPartError` in the widget's terms (it has no val_fraction)."""
    return (
        f"{err.image!r} is the only training image{others_without_objects(err.left_out)}, "
        "so part of it is held out for "
        f"validation, and its {err.where} (the {err.part} part) hold no object: annotate "
        "an object there, add another annotated image, or tick 'separate validation "
        "data' and choose validation data"
    )


# the folders of the runs Finetune widgets of this napari have started and not yet seen end:
# a second widget's Start, before the first run's worker made its folder, chose the same one
RUN_FOLDERS_IN_USE: set[Path] = set()


def run_folder(output_folder: Path, model_name: str) -> Path:
    """A folder for a new run under ``output_folder`` that no earlier run has used (nor a
    file of the same name: the run could not make its folder there), nor a run of this
    napari going on (:data:`RUN_FOLDERS_IN_USE`)."""

    def used(name: str) -> bool:
        folder = output_folder / name
        if folder.resolve() in RUN_FOLDERS_IN_USE:
            return True
        return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))

    return output_folder / first_free(model_name, used)


def settings_kept_message(run: TrainConfig, here: TrainConfig) -> str:
    """What to tell a person who continues the run whose config is ``run`` with the widget's
    settings (``here``, the config Start would use): the :data:`KEPT_BY_CONTINUE` settings
    that differ, with the run's value and the one set, and how to train with the new ones;
    "" when none differs."""
    kept = []
    for field, label in KEPT_BY_CONTINUE.items():
        own, set_here = getattr(run, field), getattr(here, field)
        if field == "preset" and own is None:  # recorded by newer runs only
            continue
        if field == "freeze":
            own, set_here = sorted(own), sorted(set_here)
        if own != set_here:
            kept.append(f"{label} ({_setting(field, own)}; {_setting(field, set_here)} set here)")
    if not kept:
        return ""
    return (
        f"the run continues with its own {', '.join(kept)}: a continued run takes only the "
        "epochs, learning rate and device set here; to train with the new settings, press "
        "Start for a new run"
    )


def _setting(field: str, value) -> str:
    """``value`` of ``field`` as the widget shows it."""
    if field == "freeze":
        return " + ".join(PART_LABELS.get(part, part) for part in value) or "nothing frozen"
    if value is None:
        return {"patch_size": "model input size", "early_stopping": "never"}.get(field, "none")
    return "no LoRA" if field == "lora_rank" and value == 0 else str(value)


def annotation_widgets(viewer) -> list:
    """The annotation widgets (``AnnotateWidget``) docked in ``viewer``'s window."""
    from napari_samtune._qt.annotate import AnnotateWidget

    return docked_widgets(viewer, AnnotateWidget)


def annotation_panels(viewer) -> list:
    """The annotation widgets docked in ``viewer``'s window, then those docked in napari's
    other windows of this process: a run reads the folder another window's panel saves to
    as much (Start in one window trained on the last save of the other's edits, unsaid)."""
    from napari_samtune._qt.annotate import OPEN_PANELS

    own = annotation_widgets(viewer)
    return own + [panel for panel in list(OPEN_PANELS) if panel not in own and _docked(panel)]


def finetune_panels(viewer) -> list:
    """The Finetune panels docked in napari's windows of this process, ``viewer``'s first."""
    docked = [panel for panel in list(FINETUNE_PANELS) if _docked(panel)]
    own = [panel for panel in docked if panel.viewer is viewer]
    return own + [panel for panel in docked if panel not in own]


def _docked(widget) -> bool:
    try:
        return main_window_of(widget) is not None
    except RuntimeError:  # its window was deleted
        return False


def docked_widgets(viewer, kind: type) -> list:
    """The widgets of class ``kind`` docked in ``viewer``'s window."""
    window = getattr(viewer, "window", None)
    try:
        docked = list(window.dock_widgets.values())
    except (AttributeError, RuntimeError):  # no window (headless viewer) or closing
        return []
    return [widget for widget in docked if isinstance(widget, kind)]


def flush_autosaves(viewer, labels_folders: list | None = None) -> None:
    """Write what the docked annotation widgets still save in the background: a run on
    their autosave folder reads it as it starts, and must see the last commit.

    ``labels_folders``: the labels folders the run reads; widgets saving elsewhere are not
    waited for (a 30 x 2048 x 2048 stack's save held the viewer 1.8 s at Start of a run on
    layer pairs). None, or a glob among them: every widget."""
    read = _folders_read(labels_folders)
    for widget in annotation_panels(viewer):
        if read is None or {resolved_folder(f) for f in widget.save_folders()} & read:
            widget.flush_autosave()


def _folders_read(labels_folders: list | None) -> set[Path] | None:
    """The resolved folders of ``labels_folders`` (of a file named there, its folder); None
    when it is None or holds a glob."""
    if labels_folders is None or any(set(str(f)) & set("*?[") for f in labels_folders):
        return None
    paths = [resolved_folder(folder) for folder in labels_folders]
    return {path if path.is_dir() else path.parent for path in paths}


def unsaved_annotations_message(viewer, request: TrainRequest) -> str:
    """The warning that a docked annotation widget holds edits not saved to a labels folder
    this run reads (its autosave folder, e.g. through *autosaves*): the run trains on the
    last save, not on what the viewer shows; "" when there are none."""
    folders = [f.labels for f in (request.train_folders, request.val_folders) if f is not None]
    read = _folders_read(folders)  # None: a glob, which may match any folder
    for widget in annotation_panels(viewer):
        names = widget.unsaved_images()
        folder = resolved_folder(widget.annotation_folder())
        if names and (read is None or folder in read):
            return (
                f"the annotations of {', '.join(map(repr, names))} have edits not saved to "
                f"{folder} (autosave unticked, or a save failed): this run trains on their "
                "last save there, and leaves out an image never saved there; to train on the "
                "edits, stop, press Save now in the annotation widget and start again"
            )
    return ""


def offer_model(viewer, name: str, use_it: bool) -> int:
    """Refresh the model lists of the docked annotation widgets; select + load ``name``
    when ``use_it``. A widget that keeps an older copy of ``name`` (a continued run
    registers anew under the same name) says so, and that Load model takes the new one.

    The annotation widgets of napari's other windows list it too (it is not loaded there:
    that window's person may be annotating with another model).

    Returns how many annotation widgets of ``viewer``'s window were updated.
    """
    from napari_samtune._qt.annotate_jobs import LOAD_TASK

    widgets = annotation_widgets(viewer)
    for widget in annotation_panels(viewer)[len(widgets) :]:
        widget.refresh_models()
    for widget in widgets:
        loading, propagated = widget.runner.is_running(LOAD_TASK), widget.held_propagation()
        loads_it = use_it and not loading and not propagated
        widget.refresh_models(say_if_older=not loads_it)  # its older copy is replaced now
        if not use_it:
            continue
        if loading:  # it would refuse: its picker must name
            show_info(  # the model that load puts in use, not this one
                f"the annotation widget is loading another model; to annotate with {name!r}, "
                "choose it there and press Load model"
            )
            continue
        if propagated:  # a run ending in the background cleared the person's work
            images = " and ".join(map(repr, propagated))
            show_info(
                f"{name!r} was not loaded for annotation: another model would clear the "
                f"propagated object of {images} waiting to be committed (or stop the "
                f"propagation running); commit it (C) first, then choose {name!r} there and "
                "press Load model"
            )
            continue
        widget.select_model(name)
        widget.load_model()
    return len(widgets)
