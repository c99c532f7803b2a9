"""Save now and Load annotations… in thread workers, as autosave is: writing or reading a
large stack (60 x 2048 x 2048 labels, zlib-compressed) takes seconds, which on the GUI
thread froze the viewer.

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``ui``, ``runner`` and ``session`` and :class:`~napari_samtune._qt.annotate_files.
AnnotateFilesMixin`), kept apart so each module stays short.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog

from napari_samtune._qt.annotate_jobs import AUTO_TASK, SAVE_TASK
from napari_samtune._qt.label_edits import UndoEntry
from napari_samtune._qt.task_messages import user_message
from napari_samtune.core.annotation_files import count_objects
from napari_samtune.core.annotation_files import load_annotations as read_annotations
from napari_samtune.core.label_files import LABELS_SUFFIX
from napari_samtune.core.metrics import mask_regions

LOAD_FILE_TASK = "loading annotations"
# autosaves first; any label TIFF too, e.g. `samtune segment` output (<image>_labels.tif)
LOAD_FILTERS = f"Annotations (*{LABELS_SUFFIX});;Label images (*.tif *.tiff)"


def read_for_loading(path: str | Path) -> tuple[np.ndarray, dict, int]:
    """The labels and record saved in ``path``, and how many objects the labels hold
    (counted here: a second for a large stack)."""
    labels, record = read_annotations(path)
    return labels, record, count_objects(labels)


def read_to_load(path: str | Path, shape: tuple[int, ...]) -> tuple[np.ndarray, dict, int, bool]:
    """:func:`read_for_loading` for Load annotations… into annotations of ``shape``, and
    whether the file was a foreground mask: one id over several separate regions (0/255
    from Fiji's Convert to Mask), in the whole or, for a stack, in a plane, as training
    judges its planes. Its regions then get one id each (8-connected in a plane, 26 in a
    stack). Loaded as it was, it made one object of every cell. Labels of one axis more,
    of length 1 ((H, W, 1), a common TIFF export, or (1, H, W)), are read without it, as
    training reads them; they were refused as another image's."""
    labels, record, n_objects = read_for_loading(path)
    for axis in (-1, 0):
        if labels.ndim == len(shape) + 1 and labels.shape[axis] == 1:
            if np.squeeze(labels, axis).shape == tuple(shape):
                labels = np.squeeze(labels, axis)
                break
    if n_objects != 1 or not _is_mask(labels):  # (several ids: no mask, no pass more)
        return labels, record, n_objects, False
    split, n_regions = _regions(labels != 0)
    return split, record, n_regions, True


def _is_mask(labels: np.ndarray) -> bool:
    """A stack whose cells touch from plane to plane (moving cells of a time series) is one
    region in 3D, yet each of its planes a mask that training refuses."""
    return bool(mask_regions(labels)) or (
        labels.ndim == 3 and any(mask_regions(plane) for plane in labels)
    )


def _regions(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """One id per region of ``foreground``: per 3D region of a stack, unless that leaves a
    plane with one id over separate regions (which training refuses as a mask): then per
    region of each plane, numbered on from the planes before."""
    from scipy import ndimage

    split, n_regions = ndimage.label(foreground, np.ones((3,) * foreground.ndim, bool))
    if foreground.ndim == 3 and any(mask_regions(plane) for plane in split):
        n_regions = 0
        for index, plane in enumerate(foreground):
            split[index], found = ndimage.label(plane, np.ones((3, 3), bool))
            split[index][split[index] > 0] += n_regions
            n_regions += found
    return split.astype(np.uint32), n_regions


def loaded_note(path, n_objects: int, was_mask: bool) -> str:
    """What Load annotations… says it did."""
    if not was_mask:
        return f"loaded {n_objects} objects from {path} (U brings back what they replaced)"
    return (
        f"{path} gives one id to {n_objects} separate regions, as a foreground mask does: "
        f"loaded them as {n_objects} objects, one id each (U brings back what they replaced)"
    )


def other_image(record: dict, fingerprint: str) -> str | None:
    """Which other image a loaded file's record says its annotations were saved for
    (another image's autosave, e.g. a namesake's, loaded by mistake), or None: the record
    names this image's pixels, or no image (a label TIFF of another program)."""
    saved_for = record.get("image_fingerprint")
    if not saved_for or saved_for == fingerprint:
        return None
    name = record.get("image")
    return f"image {name!r} (other pixels)" if name else "an image with other pixels"


def say_loaded(session, path, record: dict, n_objects: int, was_mask: bool) -> None:
    """Say what Load annotations… did: a warning where the file was a foreground mask or
    another image's annotations (loaded as asked, said: an autosave of another image of the
    same shape went in unsaid, though its record names that image)."""
    note = loaded_note(path, n_objects, was_mask)
    other = other_image(record, session.fingerprint)
    if other is not None:
        note += (
            f". Its record says they were saved for {other}, not for "
            f"{session.image_layer.name!r}: if that was not meant, U undoes the load"
        )
    (show_warning if was_mask or other else show_info)(note)


def read_to_replace(
    path: str | Path, annotations: np.ndarray
) -> tuple[np.ndarray, dict, int, bool, UndoEntry | None]:
    """:func:`read_to_load`, and the undo entry of replacing ``annotations`` with the
    labels: the pixels that changes, which undo puts back (found here too: for 24 x 2048 x
    2048 labels with 30% of pixels set, 0.3-1.8 s and 450 MB that the GUI thread spent). The
    annotations are read while the GUI thread may edit them; such an edit stops the load
    (see ``_loaded``), so what was read of them then is never used. None when the shapes
    differ (the load is refused, saying so)."""
    labels, record, n_objects, was_mask = read_to_load(path, annotations.shape)
    if annotations.shape != labels.shape:
        return labels, record, n_objects, was_mask, None
    replacement = UndoEntry()
    replacement.remember_replacement(annotations, labels)
    return labels, record, n_objects, was_mask, replacement


class AnnotateFileJobsMixin:
    """Save now and Load annotations…: at once (for scripts and tests), or in the
    background (the buttons)."""

    def save_annotations(self, folder: str | Path | None = None) -> Path | None:
        """Save labels and prompts now (synchronously); returns the labels path."""
        if self.session is None:
            show_info("nothing to save: pick an image first")
            return None
        if self._waits_for_restore("save"):
            return None
        folder = self.annotation_folder() if folder in (None, False) else Path(folder)
        # a background save still writing an older snapshot would otherwise land after this
        # one and replace it; its file is noted as this session's (waited for alone, it was
        # taken for another program's, and this save went beside it)
        self.flush_autosave()
        try:
            labels_path, _ = self.session.save(folder)
        except (OSError, ValueError) as err:
            show_error(f"saving failed: {user_message(err)}")
            return None
        self._forget_not_autosaved(self.session)
        self.annotations_saved.emit(str(labels_path))
        show_info(f"saved annotations to {labels_path}")
        return labels_path

    def load_annotations(self, path: str | Path | None = None) -> int | None:
        """Replace the annotations with a saved ``*.labels.tif`` or any label TIFF of the
        image's shape (e.g. from ``samtune segment``); returns its object count."""
        path = self._file_to_load(path)
        if path is None:
            return None
        try:
            shape = self.session.axes.spatial_shape
            labels, record, n_objects, was_mask = read_to_load(path, shape)
            self.session.apply_loaded(labels, record, path, undoable=True)
        except (OSError, ValueError) as err:
            show_error(f"loading annotations failed: {user_message(err)}")
            return None
        say_loaded(self.session, path, record, n_objects, was_mask)
        self._autosave()  # else the image's autosave, restored next time, is what they replaced
        return n_objects

    def _file_to_load(self, path: str | Path | None) -> str | Path | None:
        """The annotations file to load into the image annotated now: ``path``, else the
        one chosen in a file dialog; None (said why) when there is none or no load may start."""
        if self.session is None:
            show_info("pick the image these annotations belong to first")
            return None
        if self._job_writes_here(AUTO_TASK):  # its later planes would land on the file's
            show_info("wait for the automatic segmentation to finish, then load annotations")
            return None
        if self._waits_for_restore("load annotations"):
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Annotations", str(self.annotation_folder()), LOAD_FILTERS
            )
        return path or None

    def start_save_now(self):
        """Save the annotations of the image annotated now in the background (after the
        save that runs, if any: saves run one at a time, into one buffer); says where once
        written. Returns the worker, or None when nothing started yet."""
        session = self.session
        if session is None:
            show_info("nothing to save: pick an image first")
            return None
        if self._waits_for_restore("save"):
            return None
        self._forget_not_autosaved(session)  # kept again if this save fails (see below)
        self.runner.say_next_failure(SAVE_TASK)  # asked for: said, even if autosaves failed so
        self.ui.status_label.setText(f"saving the annotations of {session.image_layer.name!r}…")
        if self.runner.is_running(SAVE_TASK):
            self._save_now_waiting = session  # see _autosave_next and flush_autosave
            return None
        return self._start_save(session, announce=True)

    def _saved_now(self, session, labels_path: Path) -> None:
        session.saved_to(labels_path)
        if self._save_failed is session:
            self._save_failed = None
        self.annotations_saved.emit(str(labels_path))
        self.ui.status_label.setText(f"saved {labels_path.name}")  # it said 'saving …'
        show_info(f"saved annotations to {labels_path}")

    def _save_now_failed(self, session) -> None:
        """The runner said why; the edits are still unsaved, and closing napari must say so
        (with autosave ticked too: the window closed unasked, the edits on no disk)."""
        self._save_failed = session
        self.ui.status_label.setText("saving failed")
        self._remember_not_autosaved(session)

    def start_loading_annotations(self, path: str | Path | None = None):
        """:meth:`load_annotations` with the file read in a worker; what it read replaces
        the annotations only if they were not edited meanwhile (else it says so, and
        nothing is replaced). Returns the worker, or None when nothing started."""
        if self.runner.is_running(LOAD_FILE_TASK):
            show_info("annotations are still loading: wait for them, then load others")
            return None
        path = self._file_to_load(path)
        if path is None:
            return None
        session, before = self.session, self._edit_state()
        return self.runner.start(
            LOAD_FILE_TASK,
            read_to_replace,
            path,
            session.annotations,
            on_return=lambda loaded: self._loaded(session, before, path, *loaded),
        )

    def _edit_state(self) -> tuple:
        """What changes with every edit of the annotations: a commit, undo or automatic
        segmentation (the undo history) and a brush, fill or eraser stroke (counted)."""
        undo_stack = self.session.undo_stack
        return undo_stack.peek(), len(undo_stack), self._strokes

    def _loaded(
        self,
        session,
        before: tuple,
        path,
        labels,
        record: dict,
        n_objects: int,
        was_mask: bool,
        replacement,
    ) -> None:
        name = session.image_layer.name
        if self.session is not session:
            show_warning(
                f"{path} was not loaded: another image was picked while it was read. Pick "
                f"{name!r} and load it again"
            )
            return
        (top, depth, strokes), now = before, self._edit_state()
        if now[0] is not top or now[1:] != (depth, strokes) or self._job_writes_here(AUTO_TASK):
            show_warning(
                f"{path} was not loaded: {name!r} was edited while it was read, and it would "
                "have replaced those edits. Load it again to replace them"
            )
            return
        try:
            session.apply_loaded(labels, record, path, undoable=True, replacement=replacement)
        except ValueError as err:
            show_error(f"loading annotations failed: {user_message(err)}")
            return
        say_loaded(session, path, record, n_objects, was_mask)
        self._autosave()  # else the image's autosave, restored next time, is what they replaced
