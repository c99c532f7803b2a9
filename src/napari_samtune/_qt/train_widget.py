"""The training dock widget: finetune SAM on the annotations in the viewer, then use the model.

Open it from Plugins > SAM tune > Finetune SAM. Pick (image, labels) layer pairs
and/or TIFF folders, a preset (the detected one by default) and a model, press
Start. Training runs in a napari thread worker fed by the core's
:func:`~napari_samtune.core.train.iter_train` generator; its events move the
progress bar and the live plot on the main thread, so the viewer stays usable.
Stop asks the core to finish the current step, write a checkpoint and export the model
(stopped before the first step, nothing is saved); so does closing the viewer during a run
(a person is asked first), and the window goes once the model is exported. Stop also
cancels a Start that waits for the check of the data folders, the reading of the model
file, or the comparing of layer pairs with the folders (see :mod:`train_request`).
Continue… resumes a stopped or finished run (this session's or one chosen on disk) from
its last checkpoint, up to the epochs and with the learning rate set (lower it for a run
that diverged); its other settings stay the run's, and a warning names those set
otherwise here. A run holds its folder as ``samtune train`` does: Start or
Continue… into a folder that another run (another window, the command line) is writing
is refused.
The finished model is registered as a user model by the core; this widget then
refreshes the model list of the "Annotate with SAM" widget (and, if asked, loads the new
model there) and says where the model was saved.

The widget never modifies a layer: the worker trains on copies of their data.
"""

from __future__ import annotations

from napari_samtune._qt.llvm_guard import keep_triton_away

keep_triton_away()  # again, before torch's extras: a viewer made since may have loaded libLLVM

import threading
from pathlib import Path

import napari
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_samtune._qt.continued_runs import PastEpoch
from napari_samtune._qt.dock_life import on_removed
from napari_samtune._qt.train_close import TrainCloseMixin
from napari_samtune._qt.train_continue import kept_settings_warning
from napari_samtune._qt.train_data import PairSourceWidget, error_label, show_problem
from napari_samtune._qt.train_plot import TrainingPlotWidget
from napari_samtune._qt.train_progress import TrainProgressMixin
from napari_samtune._qt.train_request import REPEAT_TASK, TrainRequestMixin
from napari_samtune._qt.train_run import (
    FINETUNE_PANELS,
    RUN_FOLDERS_IN_USE,
    TRAIN_TASK,
    TrainRequest,
    flush_autosaves,
    iter_training_job,
    unsaved_annotations_message,
)
from napari_samtune._qt.train_settings import TrainSettingsWidget
from napari_samtune._qt.workers import TaskRunner
from napari_samtune.core.presets import MachineResources, TrainConfig
from napari_samtune.core.train import TrainingFinished, TrainingStarted
from napari_samtune.core.user_settings import FINETUNE_FOLDER, write_setting


class TrainWidget(TrainProgressMixin, TrainCloseMixin, TrainRequestMixin, QWidget):
    """Dock widget: finetune SAM on annotated layers or TIFF folders of ``viewer``.

    Args:
        viewer: the napari viewer.
        machine: resources to detect the default preset from; measured when None.
    """

    training_started = Signal(object)  # TrainingStarted
    epoch_done = Signal(object)  # EpochDone
    training_finished = Signal(object)  # TrainingFinished (also after Stop)
    run_ended = Signal()  # the worker ended: finished, stopped or failed

    def __init__(
        self, viewer: napari.viewer.Viewer, machine: MachineResources | None = None, parent=None
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        FINETUNE_PANELS.add(self)
        self.stop_event: threading.Event | None = None
        self.run_folder: Path | None = None  # of the running (or last) run
        self._folder_in_use: Path | None = None  # run_folder while its run goes on
        self._run_before: Path | None = None  # the last run's, while a run may be refused
        self.started: TrainingStarted | None = None  # the running (or last) run
        self.steps_seen = 0
        self.download_notes: list[str] = []  # the worker's, of the model's download
        self.result: TrainingFinished | None = None  # the last finished run
        self.history: tuple[PastEpoch, ...] = ()  # the epochs before it of a continued run
        self._queued: tuple[Path | None] | None = None  # a Start waiting for folder checks
        self.train_data = PairSourceWidget(viewer, "training", required=True)
        self.val_data = PairSourceWidget(viewer, "validation")
        self.val_data.take_channels_of(self.train_data)
        self.settings = TrainSettingsWidget(machine)
        self.plot = TrainingPlotWidget()
        self._build_layout()
        self.runner = TaskRunner(self.progress_bar, self.status_label)
        self.start_button.clicked.connect(self.start)
        self.continue_button.clicked.connect(self._choose_run_to_continue)
        self.stop_button.clicked.connect(self.stop)
        self.separate_val_check.toggled.connect(self._on_separate_validation)
        for source in (self.train_data, self.val_data):
            source.run_going_on = lambda: self.is_running
            source.folders_checked.connect(self._launch_queued)
            source.folders_checked.connect(self._update_start_error)
            source.sources_changed.connect(self._update_start_error)
        self.settings.architecture_known.connect(self._update_start_error)
        self.settings.runner.task_finished.connect(lambda _name: self._launch_queued())
        self._on_separate_validation(False)
        self._set_running(False)
        on_removed(self, self._on_panel_closed)

    def _on_panel_closed(self) -> None:
        """The panel's close button (napari sends no close event): a run stops after its
        step and saves its checkpoint and model, as with Stop; a waiting start is dropped."""
        if self.is_running and self.steps_seen:
            show_info(
                "the Finetune SAM panel was closed: training stops after this step and saves "
                f"its checkpoint and model in {self.run_folder}"
            )
        elif self.is_running:  # the model loading or the data read: no step to save yet
            show_info(
                "the Finetune SAM panel was closed before the run's first training step: it "
                "stops, and saves nothing new"
            )
        self.stop()
        self._stop_following_layers()

    def _stop_following_layers(self) -> None:
        for source in (self.train_data, self.val_data):
            source.shut_down()

    def _build_layout(self) -> None:
        """What to train on and with scrolls; the run's controls and plot stay in view."""
        layout = QVBoxLayout(self)
        self.setup_area = QScrollArea()
        self.setup_area.setWidgetResizable(True)
        self.setup_area.setFrameShape(QFrame.NoFrame)
        self.setup_area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setup_area.setWidget(self._setup_panel())
        layout.addWidget(self.setup_area, 3)
        self.start_button, self.stop_button = QPushButton("Start"), QPushButton("Stop")
        self.continue_button = QPushButton("Continue…")
        self.continue_button.setToolTip(
            "Continue a stopped, finished or failed run from its last checkpoint, up to the "
            "epochs and with the learning rate set above, on the training data chosen now; "
            "its other settings stay the run's own"
        )
        self.start_error = error_label()
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.continue_button)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        layout.addWidget(self.start_error)
        self.progress_bar, self.status_label = QProgressBar(), QLabel("")
        self.status_label.setWordWrap(True)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.use_model_check = QCheckBox("use the new model for annotation")
        self.use_model_check.setChecked(True)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.plot, 2)
        layout.addWidget(self.use_model_check)
        layout.addWidget(self.result_label)

    def _setup_panel(self) -> QWidget:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(_group("Training data", self.train_data))
        self.separate_val_check = QCheckBox("separate validation data")
        self.val_hint = QLabel(
            f"without it, {TrainConfig().val_fraction:.0%} of the training images (at least "
            "one) are held out for validation (of a single image: that share of its area)"
        )
        self.val_hint.setWordWrap(True)
        layout.addWidget(
            _group("Validation data", self.separate_val_check, self.val_hint, self.val_data)
        )
        layout.addWidget(_group("Model", self.settings))
        layout.addStretch(1)
        return panel

    def _on_separate_validation(self, checked: bool) -> None:
        self.val_data.setVisible(checked)
        self.val_hint.setVisible(not checked)
        self.val_data.required = checked  # ticked but empty: refused, not held out silently
        self._update_start_error()  # unticked, the validation data's red messages are moot

    # -- start / stop ---------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self.runner.is_running(TRAIN_TASK)

    def start(self):
        """Check everything and start training in the background; returns the worker or None."""
        return self._launch(None)

    def continue_run(self, folder: str | Path):
        """Continue the run in ``folder`` from its last checkpoint, up to the epochs and with
        the learning rate set, on the training data chosen now (its other settings and its
        optimizer state are the run's: those set otherwise here are named in a warning);
        returns the worker or None. The result updates the run's registered model."""
        return self._launch(Path(folder))

    def _choose_run_to_continue(self) -> None:
        last = self.run_folder  # a run's folder deleted since: the output folder instead
        start_in = last if last is not None and last.is_dir() else self.settings.output_folder()
        folder = QFileDialog.getExistingDirectory(self, "Run to continue", str(start_in))
        if folder:
            self.continue_run(folder)

    def _launch(self, resume: Path | None):
        if self._comparing is not None:  # a Start before this one, not yet training
            show_warning(
                "the run started before is comparing the layer pairs with the folders; it "
                "trains then: stop it (Stop) to start another instead"
            )
            return None
        if self.is_running:
            show_warning("training is already running: stop it (or wait) before starting again")
            return None
        # else the folder checked and read lacks the last commit
        flush_autosaves(self.viewer, self._labels_folders())
        waiting = self._checks_running(resume)
        if waiting:  # reading the files here would freeze the viewer
            self._queued = (resume,)
            self._set_queued(waiting)
            return None
        self._queued = None
        if resume is None and not self._model_still_listed():
            return None
        request = self._request(resume)
        if request is None or self._compare_repeats(request, resume):  # trains after it
            return None
        return self._train(request, resume)

    def _model_still_listed(self) -> bool:
        """The chosen user model renamed since the list was read (``samtune models
        --rename``) stays chosen under its new name, as Annotate's Load model takes it (Start
        was refused as an unknown model); False, said, where it was removed."""
        try:
            return self.settings.model_picker.listed_source() is not None
        except ValueError:  # no file chosen, a broken model: the settings' check says why
            return True

    def _train(self, request: TrainRequest, resume: Path | None):
        """Start the run's worker; returns it."""
        unsaved = unsaved_annotations_message(self.viewer, request)
        if unsaved:
            show_warning(unsaved)
        if resume is None:  # chosen first in the next napari session (a continued run's is its)
            self.settings.model_picker.remember(request.config.model)
            write_setting(FINETUNE_FOLDER, str(request.out_dir.parent.resolve()))
        self.stop_event = threading.Event()
        self._close_when_ended = None  # a close asked for during an earlier run is not this one's
        self.result = self.started = None
        self.steps_seen = 0  # training steps of this run the widget was told of
        self._run_before, self.run_folder = self.run_folder, request.out_dir
        self._folder_in_use = request.out_dir.resolve()  # a refused run forgets run_folder
        RUN_FOLDERS_IN_USE.add(self._folder_in_use)
        self.history = request.history  # plotted, as the last run's goes, when training starts
        self.progress_bar.setFormat("%p%")  # a download's percent, not the last run's epoch
        self._set_running(True)
        self.download_notes = []  # shown when training starts, or however the run ends
        worker = self.runner.start(
            TRAIN_TASK,
            iter_training_job,
            request,
            self.stop_event,
            self.runner.report,
            self.download_notes,
            on_yield=self._on_event,
            on_error=self._on_error,
            on_finish=self._on_run_ended,
            memory_advice=self.memory_advice,
            cancel_event=self.stop_event,
        )
        self.status_label.setText(f"loading {request.config.model} and preparing the data…")
        self._watch_window_close(True)
        message = kept_settings_warning(self.settings, request.config) if resume is not None else ""
        if message:  # the settings changed here that the continued run keeps
            show_warning(message)
        return worker

    def _folders_being_checked(self) -> bool:
        sources = [self.train_data, *([self.val_data] if self._separate_val() else [])]
        return any([source.check_folders() is None for source in sources])  # start every check

    def _checks_running(self, resume: Path | None) -> str:
        """What a Start (or Continue) waits for, e.g. "checking the data folders", or "";
        starts the check of every folder not checked yet."""
        waiting = ["checking the data folders"] if self._folders_being_checked() else []
        if resume is None and self.settings.model_being_read():  # sets the defaults
            waiting.insert(0, "reading the model file")
        return " and ".join(waiting)

    def _set_queued(self, waiting: str) -> None:
        """A Start (or Continue) waits for the folder checks or the model file; Stop
        cancels it."""
        self.start_button.setEnabled(False)
        self.continue_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status_label.setText(
            f"{waiting}; training starts then, unless a problem is found (Stop cancels)…"
        )

    def _launch_queued(self) -> None:
        """A folder check or the model file's reading ended: start what Start (or Continue)
        asked for, if anything."""
        if self._queued is not None and not self._checks_running(self._queued[0]):
            (resume,) = self._queued
            self._set_running(False)  # the buttons of a refused start
            self.status_label.setText("")
            self._launch(resume)

    def stop(self) -> None:
        """Ask the run to stop after its current step (it then saves and exports the model);
        a start still waiting for the folder checks, the model file or the comparing of
        layer pairs with the folders is cancelled."""
        if self._queued is not None or self._comparing is not None:
            self._queued = self._comparing = None
            self.runner.forget(REPEAT_TASK)  # a comparing that ends later starts nothing
            self._set_running(False)
            self.status_label.setText("start cancelled; training did not begin")
            return
        if not self.is_running or self.stop_event is None:
            return
        self.stop_event.set()
        self.stop_button.setEnabled(False)
        if self.steps_seen:
            self.status_label.setText("stopping after this step: saving and exporting the model…")
        else:  # the model loading or the data read: the run ends before its first step
            self.status_label.setText("stopping before the first training step: nothing to save")

    def _labels_folders(self) -> list[Path] | None:
        """The labels folders the run would read; None when a source's fields are not
        usable (Start then refuses them)."""
        sources = [self.train_data, *([self.val_data] if self._separate_val() else [])]
        try:
            folders = [source.folder_source() for source in sources]
        except ValueError:
            return None
        return [folder.labels for folder in folders if folder is not None]

    def _separate_val(self) -> bool:
        return self.separate_val_check.isChecked()

    def _update_start_error(self) -> None:
        """Take back "fix the problems marked in red" once none is marked any more."""
        sources = [self.train_data, *([self.val_data] if self._separate_val() else [])]
        marked = [self.settings.settings_error, *(e for s in sources for e in s.error_labels())]
        if not any(label.text() for label in marked):
            show_problem(self.start_error, "")

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.continue_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.setup_area.widget().setEnabled(not running)  # a run keeps the settings it began with

    def _on_run_ended(self) -> None:
        RUN_FOLDERS_IN_USE.discard(self._folder_in_use)
        if self.run_folder is not None and not self.run_folder.is_dir():  # nothing was made
            self._forget_run_folder()
        self._show_download_notes()  # a download that failed or was stopped
        self._set_running(False)
        self.stop_event = None
        self._watch_window_close(False)
        self.run_ended.emit()
        self._close_window_if_asked()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.stop()  # a run in progress saves its checkpoint and exports
        self._stop_following_layers()
        super().closeEvent(event)


def _group(title: str, *widgets: QWidget) -> QGroupBox:
    group = QGroupBox(title)
    layout = QVBoxLayout(group)
    for widget in widgets:
        layout.addWidget(widget)
    return group
