"""A reusable model + device picker: registry models, or any checkpoint file.

The list comes from :func:`napari_samtune.core.model_lookup.list_models` (official SAM,
MobileSAM, micro-sam generalists, then the user's own finetuned models); the last
entry lets the user choose a weights file instead. Loading is left to the owner
widget, which runs it in a background worker. An owner that names a setting has its last
model used (:meth:`ModelPickerWidget.remember`) chosen first in the next napari session.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_samtune.core.devices import DEVICE_CHOICES
from napari_samtune.core.download import download_status
from napari_samtune.core.model_lookup import list_models
from napari_samtune.core.registry import ModelSpec, builtin_model
from napari_samtune.core.user_model_rename import renamed_to
from napari_samtune.core.user_models import user_model_spec
from napari_samtune.core.user_settings import read_setting, write_setting

FILE_ENTRY = "checkpoint file…"
DEFAULT_MODEL = "vit_t_lm"  # micro-sam's light-microscopy generalist: small, fast on a CPU
WEIGHT_FILES = "SAM weights (*.pth *.pt *.ckpt *.bin);;All files (*)"


def _describe(spec: ModelSpec) -> str:
    status = "user model" if spec.is_user_model else download_status(spec)
    if spec.packaged:  # (a file of the package: nothing to download)
        status = "packaged"
    status = {
        "missing": "downloads on first use",
        "verified": "downloaded",
        "present": "a file is there, not verified yet: its hash is checked when it is used "
        "(a file that does not match is set aside and downloaded again)",
    }.get(status, status)
    return f"{spec.description or spec.name}\nsource: {spec.source}; {status}"


class ModelPickerWidget(QWidget):
    """Model choice (registry name or checkpoint file) and device choice."""

    selection_changed = Signal()
    file_chosen = Signal()  # Browse… chose a file, perhaps the same one again (to read anew)

    def __init__(self, parent: QWidget | None = None, remembered_as: str | None = None) -> None:
        super().__init__(parent)
        self._setting = remembered_as  # the user setting keeping the last model used
        self.model_combo = QComboBox()
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setToolTip("Refresh the list (finetuned models appear here)")
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path to a .pth / .pt checkpoint")
        self.browse_button = QPushButton("Browse…")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self._build_layout()
        self.model_combo.currentIndexChanged.connect(self._on_selection)
        self.path_edit.textChanged.connect(self.selection_changed)
        self.device_combo.currentIndexChanged.connect(self.selection_changed)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.browse_button.clicked.connect(self._browse)
        self.refresh_models()
        self._select_first_choice()

    def _select_first_choice(self) -> None:
        """The model last used here (:meth:`remember`) where it is still there (a user model
        not removed, a file not moved), else :data:`DEFAULT_MODEL`."""
        kept = read_setting(self._setting) if self._setting is not None else None
        # renamed since: its new name, looked up (every description read) only then
        for choose in (lambda: kept, lambda: renamed_to(kept), lambda: DEFAULT_MODEL):
            name = choose()
            if name is None:
                continue
            try:
                self.select_model(name)
            except ValueError:
                continue
            return

    def remember(self, source: str | Path) -> None:
        """Keep ``source`` (a registry name or a weights file) as the model chosen first in
        the next napari session; only for a picker created with ``remembered_as``."""
        if self._setting is None:
            return
        if str(source) not in self.model_names() and Path(source).is_file():
            source = Path(source).resolve()  # the file, wherever napari starts next
        write_setting(self._setting, str(source))

    def _build_layout(self) -> None:
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.refresh_button)
        layout.addRow("model", row)
        file_row = QHBoxLayout()
        file_row.addWidget(self.path_edit, 1)
        file_row.addWidget(self.browse_button)
        layout.addRow("file", file_row)
        layout.addRow("device", self.device_combo)

    def refresh_models(self) -> None:
        """Re-read the registry (keeps the current choice when it still exists)."""
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for spec in list_models():
            self.model_combo.addItem(f"{spec.name}  ({spec.source})", spec.name)
            self.model_combo.setItemData(
                self.model_combo.count() - 1, _describe(spec), Qt.ToolTipRole
            )
        self.model_combo.addItem(FILE_ENTRY, FILE_ENTRY)
        index = self.model_combo.findData(current)
        broken = _broken(current) if index < 0 else None
        if broken is not None:  # weights moved away (a share not mounted): still the choice
            index = self.model_combo.count() - 1  # before the checkpoint-file entry
            self.model_combo.insertItem(index, f"{current}  (broken)", current)
            self.model_combo.setItemData(index, broken, Qt.ToolTipRole)
            show_warning(broken)
        renamed = renamed_to(current) if index < 0 else None
        if renamed is not None and self.model_combo.findData(renamed) >= 0:
            index = self.model_combo.findData(renamed)
            show_info(f"user model {current!r} was renamed {renamed!r}; it stays chosen")
        self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)
        if renamed is not None and index >= 0:
            self._on_selection()  # the same weights under another name
        elif index < 0:  # a new list, or the chosen model is gone
            if current is not None:  # e.g. removed by `samtune models rm`: not silently
                show_warning(
                    f"model {current!r} is no longer in the model list (removed?); "
                    f"{self.model_combo.currentData()!r} is chosen instead: choose the model "
                    "to use"
                )
            self._on_selection()
        # else the choice is the same: owners keep what they set for it (no signal)

    def listed_source(self) -> str | Path | None:
        """:meth:`model_source`, re-reading the list first where the chosen name has left the
        registry since (``samtune models --remove`` or ``--rename``, a script): a renamed
        model stays chosen under its new name; a removed one is said, and None returned.
        ``ValueError`` as :meth:`model_source`, and for a user model that is broken (its
        weights file gone, say: the list leaves it out), saying its fix; it stays chosen."""
        source = self.model_source()
        if not isinstance(source, str) or builtin_model(source) is not None:
            return source
        if user_model_spec(source) is not None:  # broken: ValueError with its fix, kept
            return source
        self.refresh_models()  # says which, and what is chosen now
        new = renamed_to(source)
        return new if new is not None and self.model_source() == new else None

    def model_names(self) -> list[str]:
        """The registry names offered (without the checkpoint-file entry)."""
        names = [self.model_combo.itemData(i) for i in range(self.model_combo.count())]
        return [name for name in names if name != FILE_ENTRY]

    def select_model(self, name: str) -> None:
        """Choose the registry model ``name``, or a weights file when ``name`` is a path."""
        index = self.model_combo.findData(name)
        if index < 0 and Path(name).is_file():
            self.path_edit.setText(str(name))
            index = self.model_combo.findData(FILE_ENTRY)
        if index < 0:
            raise ValueError(
                f"model {name!r} is not in the list {self.model_names()!r}; "
                "refresh the list, or give the path of a weights file"
            )
        self.model_combo.setCurrentIndex(index)

    def model_source(self) -> str | Path:
        """The registry name, or the checkpoint path, to pass to ``load_model``."""
        name = self.model_combo.currentData()
        if name != FILE_ENTRY:
            return name
        text = self.path_edit.text().strip()
        if not text:
            raise ValueError("no checkpoint file chosen: click 'Browse…' or type its path")
        return Path(text).expanduser()

    def device(self) -> str:
        """The chosen device name: 'auto', 'cpu', 'cuda' or 'mps'."""
        return self.device_combo.currentText()

    def _on_selection(self) -> None:
        is_file = self.model_combo.currentData() == FILE_ENTRY
        self.path_edit.setEnabled(is_file)
        self.browse_button.setEnabled(is_file)
        self.selection_changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM weights", "", WEIGHT_FILES)
        if path:
            self.path_edit.setText(path)
            self.file_chosen.emit()


def _broken(name: object) -> str | None:
    """Why user model ``name`` cannot be used and its fix, where it is registered but broken
    (its weights file gone or unreadable: :func:`.model_lookup.list_models` leaves it out);
    None for a model removed, or never registered."""
    if not isinstance(name, str):
        return None
    try:
        user_model_spec(name)
    except ValueError as err:
        return str(err)
    return None
