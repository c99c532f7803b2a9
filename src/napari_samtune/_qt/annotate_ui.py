"""The controls of the annotation dock widget, laid out in groups (no behaviour here)."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_samtune._qt.model_picker import ModelPickerWidget
from napari_samtune.core.automatic import AutoSegmentConfig
from napari_samtune.core.user_settings import ANNOTATE_MODEL

SINGLE_MODE = "one object from all prompts"
BATCHED_MODE = "one object per box / positive point"
SCOPE_PLANE = "plane in view"
SCOPE_STACK = "all planes"


def _spin(low: float, high: float, value: float, step: float, decimals: int = 2):
    box = QDoubleSpinBox() if decimals else QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    if decimals:
        box.setDecimals(decimals)
    box.setValue(value)
    return box


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


class AnnotateControls:
    """Every control of :class:`~napari_samtune._qt.annotate.AnnotateWidget`, built and laid out."""

    def __init__(self, parent: QWidget) -> None:
        layout = QVBoxLayout(parent)
        layout.addWidget(self._model_group())
        layout.addWidget(self._image_group())
        layout.addWidget(self._prompt_group())
        layout.addWidget(self._stack_group())
        layout.addWidget(self._automatic_group())
        layout.addWidget(self._files_group())
        self.progress_bar = QProgressBar()
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip(
            "Stop the automatic segmentation, propagation or embedding running in the "
            "background after the tile or batch in work; what it finished is kept"
        )
        self.stop_button.setEnabled(False)  # while one of those runs
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addLayout(_row(self.progress_bar, self.stop_button))
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    def _model_group(self) -> QGroupBox:
        group = QGroupBox("Model")
        layout = QVBoxLayout(group)
        self.model_picker = ModelPickerWidget(remembered_as=ANNOTATE_MODEL)
        self.load_button = QPushButton("Load model")
        self.cancel_load_button = QPushButton("Cancel")
        self.cancel_load_button.setToolTip(
            "Stop loading the model; a download stops and keeps what arrived, and the next "
            "Load model resumes it"
        )
        self.cancel_load_button.setEnabled(False)  # while a model loads
        self.model_label = QLabel("no model loaded")
        self.model_label.setWordWrap(True)
        layout.addWidget(self.model_picker)
        layout.addLayout(_row(self.load_button, self.cancel_load_button, self.model_label))
        return group

    def _image_group(self) -> QGroupBox:
        group = QGroupBox("Image")
        form = QFormLayout(group)
        self.image_combo = QComboBox()
        self.channels_first_check = QCheckBox("channels on first axis")
        self.channel_combo = QComboBox()
        self.channel_combo.setEnabled(False)
        self.embed_all_button = QPushButton("Embed all planes")
        self.embed_all_button.setToolTip(
            "Compute (and cache) the embeddings of every plane now, in the background; "
            "otherwise each plane is embedded when it comes into view"
        )
        form.addRow("image", self.image_combo)
        form.addRow(self.channels_first_check, self.channel_combo)
        form.addRow(self.embed_all_button)
        return group

    def _prompt_group(self) -> QGroupBox:
        group = QGroupBox("Interactive")
        form = QFormLayout(group)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems([SINGLE_MODE, BATCHED_MODE])
        self.positive_check = QCheckBox("new points are positive (T toggles)")
        self.positive_check.setChecked(True)
        self.overwrite_check = QCheckBox("commit may overwrite other objects")
        self.commit_button = QPushButton("Commit [C]")
        self.clear_button = QPushButton("Clear [Shift+C]")
        self.undo_button = QPushButton("Undo [U]")
        self.undo_button.setToolTip(
            "undo the last commit (its prompts come back), automatic segmentation or loaded "
            "file; right after a clear, bring the prompts it took back"
        )
        form.addRow("mode", self.mode_combo)
        form.addRow(self.positive_check)
        form.addRow(self.overwrite_check)
        form.addRow(_row(self.commit_button, self.clear_button, self.undo_button))
        return group

    def _stack_group(self) -> QGroupBox:
        group = QGroupBox("Stacks")
        form = QFormLayout(group)
        self.area_ratio_spin = _spin(1.1, 20.0, 2.0, 0.1)
        self.area_ratio_spin.setToolTip(
            "Propagation stops at a plane where the object's area grows or shrinks by more "
            "than this factor from the plane before, or where it vanishes (a slow drift "
            "through many planes passes: check the planes reached)"
        )
        self.propagate_button = QPushButton("Propagate object through planes")
        form.addRow("stop at area change ×", self.area_ratio_spin)
        form.addRow(self.propagate_button)
        return group

    def _automatic_group(self) -> QGroupBox:
        group = QGroupBox("Automatic segmentation")
        form = QFormLayout(group)
        self.auto_scope_combo = QComboBox()
        self.auto_scope_combo.addItems([SCOPE_PLANE, SCOPE_STACK])
        self.points_per_side_spin = _spin(4, 128, 32, 4, decimals=0)
        self.iou_spin = _spin(0.0, 1.0, 0.88, 0.01)
        self.stability_spin = _spin(0.0, 1.0, 0.95, 0.01)
        self.min_area_spin = _spin(0, 100000, 25, 5, decimals=0)
        self.show_auto_config(AutoSegmentConfig())
        self.auto_button = QPushButton("Segment automatically")
        form.addRow("scope", self.auto_scope_combo)
        form.addRow("points per side", self.points_per_side_spin)
        form.addRow("min predicted IoU", self.iou_spin)
        form.addRow("min stability", self.stability_spin)
        form.addRow("min area (px)", self.min_area_spin)
        form.addRow(self.auto_button)
        return group

    def show_auto_config(self, config: AutoSegmentConfig) -> None:
        """Set the automatic-segmentation controls to ``config``'s values."""
        self.points_per_side_spin.setValue(config.points_per_side)
        self.iou_spin.setValue(config.pred_iou_thresh)
        self.stability_spin.setValue(config.stability_score_thresh)
        self.min_area_spin.setValue(config.min_area)

    def _files_group(self) -> QGroupBox:
        group = QGroupBox("Save")
        form = QFormLayout(group)
        self.folder_edit = QLineEdit()
        self.folder_button = QPushButton("…")
        self.autosave_check = QCheckBox("autosave after every commit")
        self.autosave_check.setChecked(True)
        self.save_button = QPushButton("Save now")
        self.load_file_button = QPushButton("Load annotations…")
        form.addRow("folder", _row(self.folder_edit, self.folder_button))
        form.addRow(self.autosave_check)
        form.addRow(_row(self.save_button, self.load_file_button))
        return group
