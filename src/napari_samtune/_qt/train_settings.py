"""What to finetune and how: resource preset, model, and the advanced settings.

The preset defaults to the one :func:`~napari_samtune.core.presets.detect_preset`
picks for this machine; a line under it says what it means for the chosen model on
the chosen device (what trains, objects per batch, expected memory). Choosing a
preset or a model refills the advanced fields with that preset's values for that
model; the user may then change them. :meth:`TrainSettingsWidget.build_config`
turns everything into a :class:`~napari_samtune.core.presets.TrainConfig` through
:func:`~napari_samtune.core.presets.config_from_preset`, which refuses settings
the preset cannot fit.

A weights file's architecture is read in a background worker (large files take
seconds); registry models are looked up at once. The advanced fields a person
changes while the file is read keep their values when the preset's are filled in.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_samtune._qt.model_picker import ModelPickerWidget
from napari_samtune._qt.preset_text import PART_LABELS, describe_preset, in_field_terms
from napari_samtune._qt.task_messages import user_message
from napari_samtune._qt.train_data import error_label, show_problem
from napari_samtune._qt.workers import TaskRunner
from napari_samtune.core.architectures import SamArchitecture
from napari_samtune.core.config_checks import MODEL_PARTS
from napari_samtune.core.model_lookup import get_model_spec
from napari_samtune.core.preset_memory import memory_short
from napari_samtune.core.presets import (
    PRESETS,
    MachineResources,
    ResourcePreset,
    TrainConfig,
    config_from_preset,
    detect_on,
    for_model,
    get_preset,
    measure_machine,
)
from napari_samtune.core.user_settings import (
    FINETUNE_MODEL,
    default_output_folder,
    starting_output_folder,
)

READ_TASK = "reading model file"


def _spin(low: int, high: int, special: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    if special:
        box.setSpecialValueText(special)  # shown for the minimum value
    return box


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


class TrainSettingsWidget(QWidget):
    """Preset, model and (collapsible) advanced settings of a finetuning run.

    Args:
        machine: measured resources for preset detection; measured here when None.
    """

    architecture_known = Signal()  # the chosen model's architecture was (re)determined

    def __init__(self, machine: MachineResources | None = None, parent=None) -> None:
        super().__init__(parent)
        machine = self.machine = machine or measure_machine()
        self.detected, self.detect_reason = detect_on(machine)  # with its note (a busy GPU)
        self._architectures: dict[str, SamArchitecture] = {}  # weights file -> architecture
        self._read_error: tuple[str, str] | None = None  # (file, why it cannot be used)
        # the architecture the advanced fields were filled for: the preset's values depend
        # on it alone, so another model of it (e.g. a finetuned one) keeps what was typed
        self._filled_for: SamArchitecture | None = None
        self._before_read: dict | None = None  # the advanced fields when a file's read began
        self._read_again = False  # another file was chosen during a read: read it after
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._build_main())
        layout.addWidget(self._build_advanced())
        self.runner = TaskRunner(self.read_bar, self.read_label)
        self.preset_combo.currentIndexChanged.connect(self.apply_defaults)
        self.model_picker.selection_changed.connect(self._on_model_changed)
        self.model_picker.path_edit.editingFinished.connect(lambda: self._on_model_changed(True))
        self.model_picker.file_chosen.connect(lambda: self._on_model_changed(True))
        self.out_dir_button.clicked.connect(self._browse_output)
        self._on_model_changed()

    def _build_main(self) -> QFormLayout:
        self.preset_combo = QComboBox()
        for preset in PRESETS:
            detected = " (detected)" if preset is self.detected else ""
            self.preset_combo.addItem(f"{preset.name}{detected}", preset.key)
        self.preset_combo.setCurrentIndex(self.preset_combo.findData(self.detected.key))
        self.preset_combo.setToolTip(self.detect_reason)
        self.preset_label = QLabel("")
        self.preset_label.setWordWrap(True)
        self.model_picker = ModelPickerWidget(remembered_as=FINETUNE_MODEL)
        self.read_bar, self.read_label = QProgressBar(), QLabel("")
        self.settings_error = error_label()
        form = QFormLayout()
        form.addRow("preset", self.preset_combo)
        form.addRow(self.preset_label)
        form.addRow(self.model_picker)
        form.addRow(self.read_bar)
        form.addRow(self.read_label)
        form.addRow(self.settings_error)
        return form

    def _build_advanced(self) -> QCollapsible:
        self.epochs_spin = _spin(1, 100000)
        self.lr_edit = QLineEdit()
        self.objects_spin = _spin(1, 10000)
        self.samples_spin = _spin(1, 1000000)
        self.samples_spin.setToolTip(
            "at least this many training patches per epoch (images are sampled again to "
            "reach it); an epoch has one patch per annotated image plane where there are more"
        )
        self.patch_spin = _spin(0, 8192, "model input size")
        self.patch_spin.setSingleStep(64)
        self.freeze_checks = {part: QCheckBox(PART_LABELS[part]) for part in MODEL_PARTS}
        self.lora_spin = _spin(0, 1024, "no LoRA")
        self.early_spin = _spin(0, 100000, "never")
        self.early_spin.setSuffix(" epochs")
        self.early_spin.setToolTip("stop after this many epochs without a better validation IoU")
        self.out_dir_edit = QLineEdit(str(starting_output_folder()))
        self.out_dir_button = QPushButton("…")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("automatic: <model>-finetuned-<date>")
        content = QWidget()
        form = QFormLayout(content)
        form.addRow("epochs", self.epochs_spin)
        form.addRow("learning rate", self.lr_edit)
        form.addRow("objects per batch", self.objects_spin)
        form.addRow("patches per epoch", self.samples_spin)
        form.addRow("patch size", self.patch_spin)
        freeze = QVBoxLayout()  # stacked: side by side they would widen the whole dock
        for check in self.freeze_checks.values():
            freeze.addWidget(check)
        form.addRow("freeze", freeze)
        form.addRow("LoRA rank", self.lora_spin)
        form.addRow("early stopping", self.early_spin)
        form.addRow("output folder", _row(self.out_dir_edit, self.out_dir_button))
        form.addRow("new model name", self.name_edit)
        self.advanced = QCollapsible("Advanced settings")
        self.advanced.addWidget(content)
        return self.advanced

    # -- preset and model -----------------------------------------------------------------
    @property
    def preset(self) -> ResourcePreset:
        return get_preset(self.preset_combo.currentData())

    def preset_for(self, arch: SamArchitecture | None) -> tuple[ResourcePreset, str]:
        """The preset chosen, for ``arch``: the detected one steps down to the largest with a
        setting for it (:func:`~napari_samtune.core.presets.for_model`), with a note."""
        preset = self.preset
        if arch is None or preset is not self.detected:
            return preset, ""
        return for_model(preset, arch)

    def model_text(self) -> str:
        """The model as ``TrainConfig.model`` takes it: a registry name or a file path."""
        return str(self.model_picker.model_source())

    def architecture(self) -> SamArchitecture | None:
        """The chosen model's architecture; None while unknown (file unread or unreadable)."""
        try:
            source = self.model_picker.model_source()
        except ValueError:
            return None
        if isinstance(source, Path):
            return self._architectures.get(str(source))
        try:
            return get_model_spec(source).resolve_architecture()
        except ValueError:  # a user model removed or broken since the list was read
            return None

    def _on_model_changed(self, retry: bool = False) -> None:
        problem = self._architecture_problem()
        path = self._file()
        if path is not None and path.is_file() and str(path) not in self._architectures:
            if retry or self._read_error is None or self._read_error[0] != str(path):
                self._read_architecture(path)
                return
        if problem:
            self._show_settings_problem(problem)
            return
        # the same architecture (another device, a file read again, a model finetuned from
        # this one): keep what the person set
        self._apply_preset(fill=self.architecture() != self._filled_for)

    def _read_architecture(self, path: Path) -> None:
        if self.runner.is_running(READ_TASK):  # look again once the current read ends
            # (by a flag: the read's thread may have ended already, its signals still
            # queued, and a connection to its worker now would never be called)
            self._read_again = True
            return
        from napari_samtune.core.model_source import architecture_of

        self.preset_label.setText(f"reading {path.name}…")
        if self._before_read is None:  # else a read still to be applied took it, earlier
            self._before_read = self._shown()

        def remember(arch: SamArchitecture) -> None:
            self._architectures[str(path)] = arch
            self._on_model_changed()

        def failed(err: BaseException) -> None:
            self._read_error = (str(path), f"cannot use {str(path)!r}: {user_message(err)}")
            self._before_read = None  # nothing of this file will be filled in
            self._on_model_changed()

        self.runner.start(
            READ_TASK,
            architecture_of,
            str(path),
            on_return=remember,
            on_error=failed,
            on_finish=self._after_read,
        )

    def _after_read(self) -> None:
        """A read ended: read the file chosen meanwhile, if one was (before the runner says
        the task finished, so that a queued Start goes on waiting for it)."""
        if self._read_again:
            self._read_again = False
            self._on_model_changed(retry=True)

    def model_being_read(self) -> bool:
        """Whether the chosen model's file is being read, or waits for a read to end."""
        return self.runner.is_running(READ_TASK) or self._read_again

    def apply_defaults(self, _index=None) -> None:
        """Fill the advanced fields with the preset's values for the chosen model."""
        self._apply_preset(fill=True)

    def _apply_preset(self, fill: bool) -> None:
        """Describe the preset for the chosen model; ``fill``: also fill the advanced fields
        with its values."""
        problem = self._architecture_problem()
        if problem:
            self._show_settings_problem(problem)
            return
        arch = self.architecture()
        preset, note = self.preset_for(arch)
        try:
            shown = Path(self.model_text()).name if self._file() else self.model_text()
            line = describe_preset(preset, shown, arch, self.device())
            line = f"{line} ({note})" if note else line
            short = memory_short(preset, self.machine, self.device(), arch)  # in the line
            if self.preset is self.detected and self.device() == preset.device:
                short = ""  # the smallest, on a machine with less: the tooltip says so
            short = self.device_problem() or short  # a GPU preset here without CUDA: at once
            self.preset_label.setText(f"{line}. Warning: {short}" if short else line)
            base = config_from_preset(preset, self.model_text(), arch, check=False)
        except ValueError as err:
            self._show_settings_problem(str(err))
            return
        show_problem(self.settings_error, "")
        typed = self._typed_during_read()
        if fill:
            self._show_config(base, keep=typed)
            self._filled_for = arch
        self.architecture_known.emit()

    def _file(self) -> Path | None:
        """The chosen weights file, or None (a registry model, or no file typed yet)."""
        try:
            source = self.model_picker.model_source()
        except ValueError:
            return None
        return source if isinstance(source, Path) else None

    def _architecture_problem(self) -> str:
        """Why the chosen model's architecture is unknown, or ""."""
        try:
            source = self.model_picker.model_source()
        except ValueError as err:
            return str(err)
        if not isinstance(source, Path):
            try:
                get_model_spec(source)
            except ValueError as err:
                return f"{err}; refresh the model list (↻)"
            return ""
        if not source.is_file():  # also one read before, then moved or deleted
            return (
                f"checkpoint file {str(source)!r} does not exist (moved or deleted?); choose "
                "it again with Browse… or type its path"
            )
        if str(source) in self._architectures:
            return ""
        if self._read_error is not None and self._read_error[0] == str(source):
            return self._read_error[1]
        return f"reading {source.name}…"

    def show_model_problem(self) -> None:
        """Show only what is wrong with the chosen model, if anything (a complaint about
        another setting, from an earlier Start, is out of date)."""
        show_problem(self.settings_error, self._architecture_problem())

    def show_start_problem(self, message: str) -> None:
        """Why Start was refused; one about the advanced fields (all but the model's own)
        opens them, so that the field it names is in view."""
        show_problem(self.settings_error, message)
        if message != self._architecture_problem():
            self.advanced.expand(animate=False)

    def _show_settings_problem(self, message: str) -> None:
        self.preset_label.setText(self.preset.name)
        show_problem(self.settings_error, message)

    def _spins(self) -> dict[str, QSpinBox]:
        """The advanced spin boxes by the ``TrainConfig`` field they set (0 shows None)."""
        return {
            "epochs": self.epochs_spin,
            "n_objects_per_batch": self.objects_spin,
            "min_samples_per_epoch": self.samples_spin,
            "patch_size": self.patch_spin,
            "lora_rank": self.lora_spin,
            "early_stopping": self.early_spin,
        }

    def _shown(self) -> dict[str, object]:
        """What the advanced fields hold, by ``TrainConfig`` field, as typed (unchecked)."""
        shown: dict[str, object] = {name: spin.value() for name, spin in self._spins().items()}
        shown["learning_rate"] = self.lr_edit.text()
        shown["freeze"] = tuple(p for p, check in self.freeze_checks.items() if check.isChecked())
        return shown

    def _typed_during_read(self) -> set[str]:
        """The advanced fields changed since a weights file's read began, which its preset
        values must not replace; the person typed them for the file being read. Asked once
        per read: later fills (another model, preset) replace them as usual."""
        before, self._before_read = self._before_read, None
        if before is None:
            return set()
        return {name for name, value in self._shown().items() if value != before[name]}

    def _show_config(self, config: TrainConfig, keep: Collection[str] = ()) -> None:
        """Show ``config`` in the advanced fields, but for the ``TrainConfig`` fields in
        ``keep``."""
        for name, spin in self._spins().items():
            if name not in keep:
                spin.setValue(getattr(config, name) or 0)
        if "learning_rate" not in keep:
            self.lr_edit.setText(f"{config.learning_rate:g}")
        if "freeze" not in keep:
            for part, check in self.freeze_checks.items():
                check.setChecked(part in config.freeze)

    # -- the result -----------------------------------------------------------------------
    def learning_rate(self) -> float:
        """The learning rate field's number; ValueError when it holds none."""
        text = self.lr_edit.text().strip()
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"learning rate {text!r} is not a number; write it like 1e-5 or 0.0001"
            ) from None

    def overrides(self) -> dict:
        """The advanced fields as ``TrainConfig`` overrides; ValueError for a bad entry."""
        return {
            "epochs": self.epochs_spin.value(),
            "learning_rate": self.learning_rate(),
            "n_objects_per_batch": self.objects_spin.value(),
            "min_samples_per_epoch": self.samples_spin.value(),
            "patch_size": self.patch_spin.value() or None,
            "freeze": tuple(p for p, check in self.freeze_checks.items() if check.isChecked()),
            "lora_rank": self.lora_spin.value(),
            "early_stopping": self.early_spin.value() or None,
            "device": self.device(),
        }

    def device(self) -> str:
        """The device chosen for training: the preset's when the picker says "auto"."""
        device = self.model_picker.device()
        return self.preset.device if device == "auto" else device

    def build_config(self) -> TrainConfig:
        """The run's config (the core's checks included); ValueError/TypeError when refused."""
        problem = self._architecture_problem()
        if problem:
            raise ValueError(problem)
        try:
            arch = self.architecture()
            config = config_from_preset(
                self.preset_for(arch)[0], self.model_text(), arch, **self.overrides()
            )
        except (ValueError, TypeError) as err:  # the core's words are its field names
            raise type(err)(in_field_terms(str(err))) from None
        problem = self.device_problem()  # after the settings' own problems
        if problem:
            raise ValueError(problem)
        return config

    def device_problem(self) -> str:
        """A GPU preset (or device cuda) on a machine without CUDA, or device mps without
        Apple's MPS: the run was started and failed in the background."""
        from napari_samtune.core.devices import cuda_available, mps_available, why_no_cuda

        if self.device() == "mps" and not mps_available():  # listed on every system
            return "the device is mps, but Apple MPS is not available here; choose cpu or auto"
        if self.device() != "cuda" or cuda_available():
            return ""
        why = f"CUDA is not available here {why_no_cuda()}"
        if self.model_picker.device() == "auto":  # the preset's device
            return (
                f"the preset {self.preset.name} trains on cuda, but {why}; set the device to "
                "cpu to train with its settings on the CPU, or choose a CPU preset"
            )
        return f"the device is cuda, but {why}; choose cpu (or auto with a CPU preset)"

    def model_name(self) -> str:
        """The name the new model gets: the field's text, else ``<model>-finetuned-<time>``."""
        text = self.name_edit.text().strip()
        if text:
            return text
        from napari_samtune.core.train_export import automatic_model_name, unique_model_name

        base = Path(self.model_text()).stem if self._file() is not None else self.model_text()
        return unique_model_name(automatic_model_name(base, datetime.now()))

    def output_folder(self) -> Path:
        text = self.out_dir_edit.text().strip()
        return Path(text).expanduser() if text else default_output_folder()

    def _browse_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", self.out_dir_edit.text())
        if folder:
            self.out_dir_edit.setText(folder)
