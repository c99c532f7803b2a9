"""The files of the image being annotated (:class:`SessionFilesMixin` of
:class:`~napari_samtune._qt.annotate_session.AnnotationSession`): the name its annotations
are saved under in a folder (its own, or beside another image's or a file changed on disk),
saving and loading them, and following the image when it is renamed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_warning

from napari_samtune._qt.annotate_notes import shape_phrase
from napari_samtune._qt.disk_states import file_state
from napari_samtune._qt.label_edits import UndoEntry, brush_past
from napari_samtune._qt.saved_renames import (
    follow_saved_rename,
    holds_earlier,
    take_earlier_name,
    taken_notes,
)
from napari_samtune.core.annotation_files import (
    ChangedMeanwhile,
    annotation_paths,
    count_objects,
    load_annotations,
    load_record,
    save_annotations,
    save_name,
    saved_shape,
    unchanged_since,
    unreadable_reason,
)
from napari_samtune.core.label_files import (
    image_fingerprint,
    labels_file_name,
    namesake_name,
    saved_fingerprint,
)

SAVED_FILE_KEY = "samtune_saved_file"  # annotations layer metadata: [path, its state]
# annotations layer metadata: the records of edits a closed panel left unsaved in the layer
UNSAVED_KEY = "samtune_unsaved_records"
SAVE_ATTEMPTS = 3  # a save that finds its file written meanwhile goes beside it: this often


class SessionFilesMixin:
    """Saving, loading and naming the annotations of a session's image (see the module)."""

    def save(self, folder: str | Path, labels: np.ndarray | None = None) -> tuple[Path, Path]:
        """Write labels (default: the annotations) and records to ``folder``, atomically."""
        labels = self.annotations if labels is None else labels
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            file_name, before_write = self.target_to_save(folder)
            try:
                paths = save_annotations(
                    folder, self.image_layer.name, labels, self.document(), file_name, before_write
                )
                break
            except ChangedMeanwhile as err:  # the next attempt goes beside that file
                self.written_meanwhile(err.labels_path)
                if attempt == SAVE_ATTEMPTS:
                    raise
        self.saved_to(paths[0])
        return paths

    def target_to_save(self, folder: str | Path) -> tuple[str, Callable[[Path], None]]:
        """:meth:`name_to_save` (its note shown), and the check for the save to run under
        the folder's lock: that file is still as it is now. Another napari's save of the
        same name could otherwise land between this choice and this save, and be replaced
        unsaid."""
        file_name, note = self.name_to_save(folder)
        if note:
            show_warning(note)
        state = file_state(annotation_paths(folder, file_name)[0])
        return file_name, unchanged_since(state)

    def written_meanwhile(self, labels_path: Path) -> None:
        """``labels_path`` was written by another program between choosing it and saving:
        it holds annotations not this session's, and the next save goes beside it."""
        self.disk.note_foreign(labels_path)

    def file_name(self, folder: str | Path) -> str:
        """The name of this image's annotations in ``folder``: the image's own, unless
        another image's annotations have it (see :func:`save_name`). Decided once per
        folder and image name, not at every autosave."""
        key = (Path(folder), self.image_name)
        if key not in self._file_names:
            self._file_names[key] = save_name(*key, self.fingerprint, self.axes.spatial_shape)
        return self._file_names[key]

    def saved_to(self, labels_path: str | Path) -> None:
        """``labels_path`` was just written (or read) with this session's annotations: its
        state is noted, also on the annotations layer, so that a panel opened again on the
        layer knows that file holds what the layer holds (:meth:`holds_saved`)."""
        self.disk.note(labels_path)
        state = self.disk.state(labels_path)
        kept = None if state is None else [str(Path(labels_path)), list(state)]
        self.layers.annotations.metadata[SAVED_FILE_KEY] = kept

    def left_unsaved(self) -> None:
        """The panel closes with this session's edits not saved (autosave unticked): its
        annotations layer, which stays, keeps their records, for a panel opened again on it
        to count them as unsaved (it went on with them unsaid, and they were lost when
        napari closed)."""
        self.layers.annotations.metadata[UNSAVED_KEY] = list(self.records)

    def holds_saved(self, labels_path: Path) -> bool:
        """Whether the annotations layer, kept from before, holds what ``labels_path`` holds:
        saved there by the panel (the file unchanged since), or equal to it. A layer opened
        from an older copy (napari's File > Save, then Open) continued, and its next save
        replaced the newer file's objects, unsaid."""
        kept = self.layers.annotations.metadata.get(SAVED_FILE_KEY)
        if kept == [str(labels_path), list(file_state(labels_path) or ())]:
            return True
        try:
            labels = load_annotations(labels_path)[0]
        except (OSError, ValueError):
            return False
        return labels.shape == self.annotations.shape and np.array_equal(labels, self.annotations)

    def name_to_save(self, folder: str | Path) -> tuple[str, str]:
        """:meth:`file_name`, unless that file changed on disk since this session read or
        wrote it (another napari, Fiji, a script): its next save replaced those annotations
        unsaid. Then saves go beside it (:meth:`divert_saves`), and the note says so."""
        file_name = self.file_name(folder)
        taken = annotation_paths(folder, file_name)[0]
        if not self.disk.changed(taken):
            return file_name, ""
        for attempt in range(1, 100):
            moved = self.divert_saves(folder, attempt)
            path = annotation_paths(folder, moved)[0]
            if not path.exists() or (path in self.disk and not self.disk.changed(path)):
                break
        return moved, (
            f"{taken} was changed by another program (or napari) since this one saved or "
            f"read it; the annotations of {self.image_layer.name!r} are saved beside it as "
            f"{path.name}, so neither is lost: compare them (Load annotations…)"
        )

    def divert_saves(self, folder: str | Path, attempt: int = 1) -> str:
        """Save this image's annotations in ``folder`` as ``<name>-<fingerprint>`` from now
        on: a file under its own name could not be read back, and a save would replace it.
        ``attempt`` 2, 3, ...: that file could not be read back either, nor those of the
        attempts before; ``<name>-<fingerprint>-<attempt>``. Returns the new file name."""
        key = (Path(folder), self.image_name)
        self._file_names[key] = namesake_name(self.image_name, self.fingerprint, attempt)
        return self._file_names[key]

    def follow_rename(self, may_restore: bool = False) -> tuple[list[str], bool]:
        """The image was renamed: its layers take the new name, and so do the files its
        annotations were saved in this session, so that no file under the old name is left
        behind out of date (reopened under that name, it would come back instead of the
        newer annotations). Where the new name's files hold this image's earlier
        annotations, saves go there too (see :meth:`_continue_earlier`).
        Returns what is worth telling the person, and whether those earlier annotations
        are to be restored into the session (only where ``may_restore``: the image is the
        one chosen)."""
        old, new = self.image_name, self.image_layer.name
        self.image_name = new
        notes, restore = taken_notes(new, self.layers.follow_rename(old, new)), False
        shape = self.axes.spatial_shape
        for folder, name in [key for key in self._file_names if key[1] == old]:
            file_name = self._file_names.pop((folder, name))
            moved, note = follow_saved_rename(
                folder, file_name, new, fingerprint=self.fingerprint, shape=shape
            )
            unsaved = not annotation_paths(folder, file_name)[0].exists()
            if moved == file_name and self._has_earlier(folder, new):
                moved, note, restore = self._continue_earlier(
                    folder, file_name, new, may_restore and unsaved
                )
            self._file_names[(folder, new)] = moved
            notes += [note] if note else []
        return notes, restore

    def _has_earlier(self, folder: Path, name: str) -> bool:
        """Whether ``name``'s files in ``folder`` hold this image's annotations."""
        return holds_earlier(folder, name, self.fingerprint, self.axes.spatial_shape)

    def _continue_earlier(
        self, folder: Path, file_name: str, new: str, may_restore: bool
    ) -> tuple[str, str, bool]:
        """``new``'s files in ``folder`` hold earlier annotations of this image, whose
        annotations this session saves as ``file_name`` (or is to: nothing saved yet): saves
        go to ``new``, where the image, reopened under its new name, looks. A session that
        holds nothing, and saved nothing (``may_restore``), restores those (as when the
        image is picked under that name); else they are moved aside, to
        ``<new>-<fingerprint>``, not overwritten, this session's saved files take ``new``,
        and the person is told where. Returns (file name, note, restore)."""
        if may_restore and not self.records and not self.annotations.any():
            return new, "", True
        return (*take_earlier_name(folder, file_name, new, self.fingerprint), False)

    def namesake_note(self, taken: Path, file_name: str) -> str:
        """Why this image's annotations are saved as ``file_name``, not under its own name,
        which ``taken`` has: unreadable, this image read with other axes, or another image's.
        The files are named as they are on disk (it named ``'🙂-<fingerprint>'``, saved as
        ``image-<fingerprint>.labels.tif``)."""
        saved_as = repr(labels_file_name(file_name))
        unreadable = unreadable_reason(taken)
        if unreadable:
            return (
                f"{taken} cannot be read ({unreadable}); this image's annotations are saved "
                f"as {saved_as}, so that it is not overwritten"
            )
        if saved_fingerprint(taken) == self.fingerprint:
            return (
                f"{taken} holds this image's annotations with its axes read another way; "
                f"read as now ({self.axes.spatial_shape}) they are saved as "
                f"{saved_as}, so that neither is overwritten"
            )
        saved, shape = saved_shape(taken), tuple(self.axes.spatial_shape)
        there, here = shape_phrase(saved), shape_phrase(shape)
        shapes = f" ({there} there, {here} here)" if saved != shape else ""
        return (
            f"{taken} holds the annotations of other pixels{shapes}: another image of a name "
            f"saved under that file name ({self.image_layer.name!r} is), or this layer's "
            f"before its data was replaced; this image's are saved as {saved_as} so that "
            "neither is overwritten. To keep names apart, use one annotation folder per "
            "experiment."
        )

    def pixels_replaced(self) -> None:
        """The image layer's data was replaced by pixels of the same shape, whose
        annotations these are now: saves record their fingerprint. They named the old pixels:
        opened again, the new ones restored nothing (saved beside as another image's), and
        the old ones restored annotations of the new."""
        self.fingerprint = image_fingerprint(self.image_layer.data)
        self.layers.mark_image(self.fingerprint)

    def document(self) -> dict:
        """The JSON record saved next to the labels: objects, current prompts, fingerprint."""
        return {
            "image_fingerprint": self.fingerprint,
            "objects": list(self.records),
            "prompts": self.layers.prompts_record(),
        }

    def load(self, labels_path: str | Path) -> int:
        """Replace the annotations with a saved file (the image's own autosave, restored
        when it opens: the undo history goes); returns the number of objects in it."""
        labels, record = load_annotations(labels_path)
        self.apply_loaded(labels, record, labels_path, undoable=False)
        return count_objects(labels)

    def apply_loaded(
        self,
        labels: np.ndarray,
        record: dict,
        labels_path,
        undoable: bool,
        replacement: UndoEntry | None = None,
    ) -> None:
        """Replace the annotations with ``labels`` and ``record`` read from ``labels_path``.
        ``undoable``: the person chose the file (Load annotations…), and undo brings back
        what it replaced; ``replacement``: the undo entry of the pixels that changes, made by
        the reader beforehand (else here)."""
        if labels.shape != self.axes.spatial_shape:
            raise ValueError(
                f"{Path(labels_path).name!r} has shape {labels.shape!r} but image "
                f"{self.image_layer.name!r} needs {self.axes.spatial_shape!r}; "
                "pick the annotations of this image"
            )
        if undoable:
            entry = replacement
            if entry is None:
                entry = UndoEntry()
                entry.remember_replacement(self.annotations, labels)
            entry.records_before = self.records
            self.undo_stack.push(entry)
        else:
            self.undo_stack.clear()
        self.annotations[...] = labels
        if undoable:
            entry.note_survivors(self.annotations)
        self.records = list(record.get("objects", []))
        self.saved_to(labels_path)
        self._annotations_written()
        brush_past(self.layers.annotations, int(labels.max(initial=0)))

    def load_records(self, labels_path: str | Path) -> None:
        """Take the object records saved with ``labels_path``; the labels stay as they are
        (back on an image whose annotations layer was kept, the layer holds them)."""
        self.records = list(load_record(labels_path).get("objects", []))
