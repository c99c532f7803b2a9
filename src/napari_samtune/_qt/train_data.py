"""Where training data comes from: (image layer, labels layer) pairs and TIFF folders.

A :class:`PairSourceWidget` holds a list of layer pairs chosen in the viewer and,
optionally, an image folder and a labels folder. Its ``check()`` runs the core's
checks (:func:`napari_samtune.core.data.check_pair`, cheap: the training worker prepares
the layers' data; for the folders in a worker, see
:mod:`napari_samtune._qt.train_folders`) and writes every problem in red under the
field that causes it, before any training starts.

Layers are never modified: :meth:`PairSourceWidget.snapshot` copies their data,
so the worker trains on what was there at Start while the user keeps annotating.
A stack (labels with one more axis than a 2D image) becomes one pair per plane
that has objects (:func:`napari_samtune.core.data.split_planes`, as for TIFF files).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_samtune._qt.layer_pairs import (
    best_labels_for,
    is_preview_layer,
    layer_pairs,
    pair_problem,
)
from napari_samtune._qt.task_messages import user_message
from napari_samtune._qt.train_folders import (
    FolderCheck,
    FolderSource,
    check_folder_pairs,
    folder_signature,
    shared_images_note,
)
from napari_samtune._qt.train_run import annotation_widgets
from napari_samtune._qt.workers import TaskRunner
from napari_samtune.core.annotation_files import starting_annotation_folder
from napari_samtune.core.data import ImageLabelPair, empty_planes_message
from napari_samtune.core.images import parse_channels
from napari_samtune.core.label_files import LABEL_SUFFIXES, match_files

FOLDER_CHECK_TASK = "checking folders"

ERROR_STYLE = "color: #ff6b6b;"


def note_label() -> QLabel:
    """A word-wrapped label that is hidden while it has no text (see :func:`show_problem`)."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setVisible(False)
    return label


def error_label() -> QLabel:
    """A red :func:`note_label`."""
    label = note_label()
    label.setStyleSheet(ERROR_STYLE)
    return label


def show_problem(label: QLabel, message: str) -> None:
    """Show ``message`` in ``label`` (hide the label when the message is empty)."""
    label.setText(message)
    label.setVisible(bool(message))


class PairSourceWidget(QWidget):
    """Layer pairs added one by one, plus an optional pair of TIFF folders.

    Args:
        viewer: the napari viewer whose layers are offered.
        title: what the data is for, e.g. "training" (used in messages).
        required: an empty source (no pair, no folders) is a problem.
    """

    folders_checked = Signal()  # a background check of the folders ended (see check_folders)
    sources_changed = Signal()  # pairs added or removed, folders edited: red messages redone

    def __init__(
        self, viewer, title: str, required: bool = False, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.title = title
        self.required = required
        self._pairs: list[tuple[Image, Labels | Image]] = []
        self._folder_check: FolderCheck | None = None  # the latest finished folder check
        self.channels_like: PairSourceWidget | None = None  # whose channels an empty field takes
        self.run_going_on: Callable[[], bool] = lambda: False  # the panel's: a run reads a copy
        self._folder_messages = ("", "")  # the folder check's problem and note shown
        self._removal_notes: list[str] = []  # pairs gone with removed layers, said soon
        self._say_removals_soon = QTimer(self, singleShot=True, interval=0)
        self._say_removals_soon.timeout.connect(self._say_removals)
        self._build()
        self.folder_runner = TaskRunner(self.folder_progress, self.folder_status)
        self.add_button.clicked.connect(self.add_current_pair)
        self.remove_button.clicked.connect(self.remove_selected_pair)
        self.image_dir_button.clicked.connect(lambda: self._browse(self.image_dir_edit))
        self.labels_dir_button.clicked.connect(lambda: self._browse(self.labels_dir_edit))
        self.autosaves_button.clicked.connect(self.use_autosave_folder)
        for edit in (self.image_dir_edit, self.labels_dir_edit, self.channels_edit):
            edit.editingFinished.connect(self._on_folders_edited)
        viewer.layers.events.inserted.connect(self.refresh_layer_choices)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.events.renamed.connect(self._on_layer_renamed)
        self.refresh_layer_choices()

    def shut_down(self) -> None:
        """Stop following the viewer's layers (the panel was closed): a closed panel kept
        re-ranking its pairs at every layer added or renamed, and told of pairs removed."""
        events = self.viewer.layers.events
        for event, callback in (
            (events.inserted, self.refresh_layer_choices),
            (events.removed, self._on_layer_removed),
            (events.renamed, self._on_layer_renamed),
        ):
            event.disconnect(callback)

    def _build(self) -> None:
        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        self.image_combo.currentTextChanged.connect(self._suggest_labels)
        self._labels_chosen = False  # by a person: then the choice is kept
        self._offered: dict[QComboBox, list] = {}  # the layers each combo box lists, in order
        self.labels_combo.activated.connect(lambda _index: setattr(self, "_labels_chosen", True))
        self.add_button = QPushButton("Add pair")
        self.pair_error = error_label()
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(90)
        self.remove_button = QPushButton("Remove selected pair")
        self.list_error = error_label()
        self.image_dir_edit, self.labels_dir_edit = QLineEdit(), QLineEdit()
        self.image_dir_edit.setPlaceholderText("folder of image .tif files (optional)")
        self.labels_dir_edit.setPlaceholderText("label .tif: same name or name_mask.tif")
        self.labels_dir_edit.setToolTip(
            "Label files pair with images by name: cell_1.tif with cell_1.tif, "
            f"or with one of {', '.join(LABEL_SUFFIXES)} added (cell_1_mask.tif). "
            "It may be the image folder itself."
        )
        self.image_dir_button, self.labels_dir_button = QPushButton("…"), QPushButton("…")
        self.autosaves_button = QPushButton("autosaves")
        self.autosaves_button.setToolTip(
            "Take the labels from the annotation widget's autosave folder (and, if empty, the "
            "image folder from the file it annotates): train on the images of the image "
            "folder annotated so far (the others are left out)"
        )
        self.channels_edit = QLineEdit()
        self.channels_edit.setPlaceholderText("gray or RGB files: empty; else e.g. 1 or 0,1,2")
        self.channels_edit.setToolTip(
            "Multichannel image files: the channel SAM sees as gray (e.g. 1 for the second), "
            "or three channels as RGB (0,1,2); the short first or last axis holds them"
        )
        self.folder_error = error_label()
        self.folder_note = note_label()  # what training leaves out: files without a partner, ...
        self.folder_progress, self.folder_status = QProgressBar(), note_label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        form.addRow("image layer", self.image_combo)
        form.addRow("labels layer", _row(self.labels_combo, self.add_button))
        layout.addLayout(form)
        layout.addWidget(self.pair_error)
        layout.addWidget(self.pair_list)
        layout.addWidget(self.remove_button)
        layout.addWidget(self.list_error)
        folders = QFormLayout()
        folders.addRow("image folder", _row(self.image_dir_edit, self.image_dir_button))
        folders.addRow(
            "labels folder",
            _row(self.labels_dir_edit, self.labels_dir_button, self.autosaves_button),
        )
        folders.addRow("channels", self.channels_edit)
        layout.addLayout(folders)
        layout.addWidget(self.folder_error)
        layout.addWidget(self.folder_note)
        layout.addWidget(self.folder_progress)
        layout.addWidget(self.folder_status)

    # -- layer pairs ----------------------------------------------------------------------
    def refresh_layer_choices(self, event=None) -> None:
        """Offer the viewer's current image and labels layers (keeps the layers chosen, also
        when they were renamed)."""
        layers = list(self.viewer.layers)
        images = [layer for layer in layers if isinstance(layer, Image)]
        # A mask file opened by drag and drop becomes an Image layer: offer those too. The
        # annotation widget's preview is no annotation: never offered.
        labels = [
            layer for layer in layers if isinstance(layer, Labels) and not is_preview_layer(layer)
        ]
        labels += [layer for layer in layers if isinstance(layer, Image) and not layer.rgb]
        for combo, offered in ((self.image_combo, images), (self.labels_combo, labels)):
            shown, index = self._offered.get(combo, []), combo.currentIndex()
            current = shown[index] if 0 <= index < len(shown) else None
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([layer.name for layer in offered])
            kept = [i for i, layer in enumerate(offered) if layer is current]
            if kept:  # by identity: a renamed layer is still the one chosen
                combo.setCurrentIndex(kept[0])
            combo.blockSignals(False)
            self._offered[combo] = offered
        if not self._labels_chosen:
            self._suggest_labels()

    def _suggest_labels(self, _name: str = "") -> None:
        """Offer the labels that pair with the image chosen (until a person picks some): of
        its shape, holding objects, named after it (a sample's ``<image> labels``, not the
        annotation widget's still empty ``<image> annotations``), never the annotation
        widget's layers of another image, nor the image's uncommitted preview."""
        name = self.image_combo.currentText()
        if name not in self.viewer.layers:
            return
        image, combo = self.viewer.layers[name], self.labels_combo
        others = [combo.itemText(i) for i in range(combo.count()) if combo.itemText(i) != name]
        best = best_labels_for(image, [self.viewer.layers[o] for o in others], self.viewer)
        if best is not None:
            combo.setCurrentText(best.name)

    def add_current_pair(self) -> bool:
        """Add the pair chosen in the two combo boxes if the core accepts it; returns success."""
        image_name, labels_name = self.image_combo.currentText(), self.labels_combo.currentText()
        if not image_name or not labels_name:
            show_problem(self.pair_error, "add an image layer and a labels layer to the viewer")
            return False
        pair = (self.viewer.layers[image_name], self.viewer.layers[labels_name])
        if any(p[0] is pair[0] and p[1] is pair[1] for p in self._pairs):
            show_problem(self.pair_error, f"{image_name} / {labels_name} is already in the list")
            return False
        problem = pair_problem(pair)
        show_problem(self.pair_error, problem)
        if problem:
            return False
        self._pairs.append(pair)
        self._refresh_list()
        return True

    def remove_selected_pair(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self._pairs):
            del self._pairs[row]
            self._refresh_list()

    @property
    def layer_pairs(self) -> list[tuple[Image, Labels]]:
        """The (image layer, labels layer) pairs in the list."""
        return list(self._pairs)

    def _refresh_list(self) -> None:
        self.pair_list.clear()
        self.pair_list.addItems(
            [f"{image.name}  ⟷  {labels.name}" for image, labels in self._pairs]
        )
        self._recheck_list()

    def _recheck_list(self) -> None:
        """The pairs or folders changed: a red message under the list may be out of date."""
        if self.list_error.text():
            show_problem(self.list_error, self._list_problems())
        self.sources_changed.emit()

    def _on_layer_removed(self, event) -> None:
        gone = [pair for pair in self._pairs if event.value in pair]
        self._pairs = [pair for pair in self._pairs if event.value not in pair]
        if gone:  # the list shrank unsaid: a run would train on fewer pairs than expected
            names = ", ".join(f"{image.name} / {labels.name}" for image, labels in gone)
            going_on = (
                "; the run in progress goes on with the data it started with, and the next "
                "run trains without them"
                if self.run_going_on()
                else ""
            )
            self._removal_notes.append(
                f"layer {event.value.name!r} was removed, and with it the {self.title} "
                f"pair(s) {names}{going_on}"
            )
            self._say_removals_soon.start()
        self._refresh_list()
        self.refresh_layer_choices()

    def _say_removals(self) -> None:
        """Once the layers removed together are gone, say which pairs went with them; not
        when no layer is left (``viewer.close()`` removes every layer first: the closing
        viewer told of each pair, mid-run as if the run went on)."""
        notes, self._removal_notes = self._removal_notes, []
        if len(self.viewer.layers):
            for note in notes:
                show_info(note)

    def _on_layer_renamed(self, event=None) -> None:
        self._refresh_list()
        self.refresh_layer_choices()

    # -- folders --------------------------------------------------------------------------
    def _browse(self, edit: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"{self.title} folder", edit.text())
        if folder:
            edit.setText(folder)
            self._on_folders_edited()

    def use_autosave_folder(self) -> None:
        """Labels from where the annotation widget autosaves (the docked widget's folder);
        an empty image folder becomes the folder of the file being annotated there."""
        docked = annotation_widgets(self.viewer)
        folder = docked[0].annotation_folder() if docked else starting_annotation_folder()
        self.labels_dir_edit.setText(str(folder))
        image = docked[0].image_layer if docked else None
        source = getattr(getattr(image, "source", None), "path", None)
        if source and not self.image_dir_edit.text().strip():
            self.image_dir_edit.setText(str(Path(source).parent))
        self._on_folders_edited()

    def _on_folders_edited(self) -> None:
        self.check_folders()
        self._recheck_list()  # folders instead of pairs: "add at least one" is answered

    def folder_source(self) -> FolderSource | None:
        """The two folders and the channels, or None when neither folder is set.
        ``ValueError`` when the channels field holds no channel list."""
        images, labels = self.image_dir_edit.text().strip(), self.labels_dir_edit.text().strip()
        if not images and not labels:
            return None
        text = self.channels_edit.text()
        taken = not text.strip() and self.channels_like is not None  # validation: training's
        text = self.channels_like.channels_edit.text() if taken else text
        try:
            channels = parse_channels(text)
        except ValueError as err:
            raise ValueError(f"channels: {err}") from None
        images, labels = Path(images).expanduser(), Path(labels).expanduser()
        return FolderSource(images, labels, channels, channels_taken=taken)

    def take_channels_of(self, other: PairSourceWidget) -> None:
        """An empty channels field takes ``other``'s channels (validation folders those of
        the training folders: left empty, validation scored the RGB composite of files
        whose channel 1 alone trained, unsaid)."""
        self.channels_like = other
        self.channels_edit.setPlaceholderText(f"empty: as the {other.title} folders")
        other.sources_changed.connect(self._other_folders_changed)

    def check_folders(self) -> bool | None:
        """Check the folders: at once that both are set and their files pair by name, then
        in the background that every pair reads and passes the core's checks. Problems show
        in red, pairs that training leaves out (no object) under the folders.

        Returns True or False when the current files' check is known, None while it runs
        (:attr:`folders_checked` is emitted when it ends).
        """
        try:
            source = self._quick_folder_check()
            signature = folder_signature(source) if source is not None else None
        except (ValueError, TypeError, OSError) as err:
            self._show_folder_check(f"{self.title} folders: {err}", "")
            return False
        if source is None:
            self._show_folder_check()
            return True
        done = self._folder_check
        if done is not None and done.signature == signature:
            self._show_folder_check(done.problem, done.note)
            return not done.problem
        if not self.folder_runner.is_running(FOLDER_CHECK_TASK):
            self._show_folder_check()

            def failed(err: BaseException) -> None:  # kept, so it is not retried in a loop
                problem = f"{self.title} folders: {user_message(err)}"
                self._remember_folder_check(FolderCheck(signature, problem, ""))

            self.folder_runner.start(
                FOLDER_CHECK_TASK, check_folder_pairs, source, self.title,
                self.folder_runner.report, on_return=self._remember_folder_check,
                on_error=failed, on_finish=self._on_folder_check_ended,
            )  # fmt: skip
        return None

    def _quick_folder_check(self) -> FolderSource | None:
        """The folders (None when neither is set) after the checks that need no reading."""
        texts = [edit.text().strip() for edit in (self.image_dir_edit, self.labels_dir_edit)]
        if any(texts) and not all(texts):
            raise ValueError("set both the image folder and the labels folder, or neither")
        source = self.folder_source()
        if source is not None:
            match_files(source.images, source.labels)  # at least one pair
        return source

    def _remember_folder_check(self, result: FolderCheck) -> None:
        self._folder_check = result

    def folder_images(self) -> tuple:
        """The digests of the pairs the latest folder check kept (see :mod:`train_repeats`)."""
        return self._folder_check.images if self._folder_check is not None else ()

    def _on_folder_check_ended(self) -> None:
        if self.check_folders() is not None:  # else the files changed meanwhile: checked again
            self.folders_checked.emit()

    def _show_folder_check(self, problem: str = "", note: str = "") -> None:
        self._folder_messages = (problem, note)
        show_problem(self.folder_error, problem)
        show_problem(self.folder_note, "\n".join(filter(None, [self._same_images_note(), note])))

    def _other_folders_changed(self) -> None:
        """The folders of the source :meth:`take_channels_of` took changed: the note on
        images they share is said again (or no more)."""
        self._show_folder_check(*self._folder_messages)

    def _same_images_note(self) -> str:
        """For validation folders whose images are the training folders' (see
        :meth:`take_channels_of`): said as they are typed, where the run said it only at
        Start, once its data was read."""
        other = self.channels_like
        if other is None:
            return ""
        mine, theirs = (s.image_dir_edit.text() for s in (self, other))
        return shared_images_note(mine, theirs, self.title, other.title)

    # -- everything -----------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not self._pairs and not any(
            edit.text().strip() for edit in (self.image_dir_edit, self.labels_dir_edit)
        )

    def check(self) -> bool | None:
        """Check every pair and the folders with the core: True when all are usable, None
        while the folders are being checked in the background (see :meth:`check_folders`)."""
        problems = self._list_problems()
        show_problem(self.list_error, problems)
        folders = self.check_folders()
        return False if problems or folders is False else folders

    def empty_problem(self) -> str:
        """What to add when this source is required and empty; "" otherwise."""
        if not self.required or not self.is_empty():
            return ""
        return f"add at least one (image layer, labels layer) pair, or {self.title} folders"

    def _list_problems(self) -> str:
        """Why the source cannot be used, as shown under the pair list; "" when it can."""
        return self.empty_problem() or "\n".join(p for p in map(pair_problem, self._pairs) if p)

    def error_labels(self) -> list[QLabel]:
        """The red labels under the fields (empty text: nothing wrong there)."""
        return [self.pair_error, self.list_error, self.folder_error]

    def snapshot(self) -> tuple[list[ImageLabelPair], FolderSource | None]:
        """The layer pairs' planes with objects, viewing the layers' arrays (the training
        worker copies them as it begins: :func:`.layer_pairs.copied`), and the folders (read
        by the worker); the planes of stacks without objects are left out, with a note."""
        empty: list[str] = []
        pairs = [p for pair in self._pairs for p in layer_pairs(*pair, False, empty)]
        if empty:
            show_info(f"{self.title} data: {empty_planes_message(empty)}")
        return pairs, self.folder_source()


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
