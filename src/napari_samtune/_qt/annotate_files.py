"""What the annotation widget does with files: the annotation folder, what is autosaved and
when (the saves themselves: :mod:`~napari_samtune._qt.annotate_saves`), and restoring an
image's autosave when it is annotated again.

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``ui``, ``runner`` and ``session``), kept apart so each module stays short.
"""

from __future__ import annotations

import itertools
import weakref
from pathlib import Path

from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from napari_samtune._qt.annotate_jobs import SAVE_TASK
from napari_samtune._qt.dock_life import main_window_of
from napari_samtune._qt.history_keys import bind_history_keys
from napari_samtune._qt.layer_names import ANNOTATIONS, OWN_IMAGE_KEY, OWN_LAYER_KEY
from napari_samtune._qt.layer_placement import follow_placement
from napari_samtune._qt.session_files import SAVED_FILE_KEY, UNSAVED_KEY
from napari_samtune._qt.task_messages import user_message
from napari_samtune.core.annotation_files import (
    annotation_paths,
    default_annotation_folder,
    same_image_saves,
    saved_shape,
    starting_annotation_folder,
)
from napari_samtune.core.file_names import earlier_stems
from napari_samtune.core.label_files import saved_fingerprint
from napari_samtune.core.user_settings import ANNOTATION_FOLDER, write_setting


def starting_folder(viewer, image_layer) -> Path:
    """Where a panel opened on ``viewer`` to annotate ``image_layer`` saves at first: where
    that image's annotations layer in the viewer was saved (by a panel closed since: opened
    again, it started in the setting's folder, or $SAMTUNE_ANNOTATIONS_DIR's, the last
    chosen in any window, and saved the annotations it went on with there, unsaid), said;
    else :func:`starting_annotation_folder`."""
    start = starting_annotation_folder()
    image_id = str(getattr(image_layer, "unique_id", "") or "")
    kept = next(
        (
            layer.metadata[SAVED_FILE_KEY]
            for layer in viewer.layers
            if isinstance(layer, Labels)
            and layer.metadata.get(OWN_LAYER_KEY) == ANNOTATIONS
            and (layer.metadata.get(OWN_IMAGE_KEY) or {}).get("image layer") == image_id
            and layer.metadata.get(SAVED_FILE_KEY)
        ),
        None,
    )
    folder = Path(kept[0]).parent if image_id and kept else start
    if folder.resolve() == start.resolve():
        return start
    show_info(
        f"the annotations of {image_layer.name!r} were saved in {folder}, so this panel saves "
        f"there (not in {start}); choose another folder above to save elsewhere"
    )
    return folder


class AnnotateFilesMixin:
    """Folder, autosave, restore, save and load of the annotations."""

    def annotation_folder(self) -> Path:
        """The folder annotations are saved to (the widget's folder field)."""
        text = self.ui.folder_edit.text().strip()
        return Path(text).expanduser() if text else default_annotation_folder()

    def save_folders(self) -> set[Path]:
        """The folders its saves write: the folder field's, and that of a background save
        begun before the field changed, while it runs."""
        running = self.runner.is_running(SAVE_TASK) and self._save_folder is not None
        return {self.annotation_folder(), *([self._save_folder] if running else [])}

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Annotation folder", self.ui.folder_edit.text()
        )
        if folder and Path(folder) != self.annotation_folder():
            self.ui.folder_edit.setText(folder)
            self._use_folder()

    def _on_folder_edited(self) -> None:
        if self.ui.folder_edit.isModified():  # typed, not only left (editingFinished)
            self.ui.folder_edit.setModified(False)
            self._use_folder()

    def _use_folder(self) -> None:
        """Another folder: this image's annotations saved there come back, as when the image
        is first annotated, rather than the next autosave writing over them; annotations
        made already stay, and the user is told what the next save replaces (or, when their
        autosave failed, they are saved there now). The folder is the next session's too."""
        # absolute: "annotations" typed here was the next session's own folder where it began
        write_setting(ANNOTATION_FOLDER, str(self.annotation_folder().resolve()))
        for kept in self._sessions_kept():  # images not chosen now, which save there too
            if kept is not self.session:
                self._not_over_unread(kept, self.annotation_folder())
        if self.session is None:
            return
        if not self.session.annotations.any():
            self._restore_autosave()
            return
        folder = self.annotation_folder()
        labels_path, _ = annotation_paths(folder, self.session.file_name(folder))
        if labels_path.is_file():
            show_warning(
                f"{labels_path} holds saved annotations of {self.session.image_layer.name!r}; "
                f"the next save replaces them with layer {self.session.layers.annotations.name!r}"
                ". To go on with the saved ones instead, use 'Load annotations…'"
            )
        else:
            self.session.disk.note_absent(labels_path)
            if self._save_failed is self.session:  # on no disk yet: the error said to do this
                self._autosave()

    @staticmethod
    def _not_over_unread(session, folder: Path) -> None:
        """``session``'s file in ``folder``, chosen while its image was not: one there holds
        annotations it never read, which its next save (a brush stroke, or the image chosen
        again: its session resumed) replaced unsaid; its saves go beside it."""
        labels_path, _ = annotation_paths(folder, session.file_name(folder))
        if labels_path in session.disk:
            return
        if labels_path.exists():
            session.disk.note_foreign(labels_path)
        else:
            session.disk.note_absent(labels_path)

    def _restore_autosave(self, labels: bool = True) -> None:
        """Load this image's autosave: the labels and their object records, or (``labels``
        False: its annotations layer is still there, and holds the labels) the records."""
        folder, name = self.annotation_folder(), self.session.image_name
        file_name = self.session.file_name(folder)
        if file_name != name and labels:  # said once, when the image is first annotated
            show_warning(self.session.namesake_note(annotation_paths(folder, name)[0], file_name))
        labels_path, _ = annotation_paths(folder, file_name)
        if not labels_path.is_file():
            self.session.disk.note_absent(labels_path)  # one there later is not this one's
            if labels:
                self._say_same_image_saved(folder, labels_path)
            self._end_restore(self.session)  # (a layer waiting for a file not here: no more)
            return
        try:
            self._load_saved(labels_path, labels)
        except (ValueError, OSError) as err:
            self._restore_failed(labels_path, user_message(err), labels)
            return
        if labels:
            self._say_newer_same_image_saves(folder, labels_path)

    def _take_up_unsaved_edits(self) -> None:
        """The annotations layer holds edits that a panel closed before had not saved
        (autosave unticked): they count as unsaved here too, with their records, and
        autosave (ticked) saves them. They were continued unsaid, and lost when napari
        closed (no question), or when the layer matched an older save, never saved."""
        session = self.session
        layer = session.layers.annotations
        records = layer.metadata.pop(UNSAVED_KEY, None)
        if records is None:
            return
        session.records = list(records)
        self._remember_not_autosaved(session)
        if self.ui.autosave_check.isChecked():
            self._autosave(session)
            return
        show_info(
            f"{layer.name!r} holds edits not saved when the panel closed before: Save now, "
            "or tick autosave, to keep them"
        )

    def _say_same_image_saved(self, folder: Path, own: Path) -> None:
        """Nothing is saved under this image's name (``own``) in ``folder``: say where its
        annotations are if they are saved there under another name (its file was renamed or
        copied since). They are not loaded unasked: 'Load annotations…' goes on with them."""
        session = self.session
        found = same_image_saves(folder, session.fingerprint, session.axes.spatial_shape, (own,))
        earlier = [annotation_paths(folder, stem)[0] for stem in earlier_stems(session.image_name)]
        if found:
            more = f" (and {len(found) - 1} more files)" if len(found) > 1 else ""
            how = (
                "under the name an earlier napari-samtune gave its file"
                if found[0] in earlier
                else "under another name"
            )
            show_info(
                f"no annotations of {session.image_name!r} are saved in {folder} under its "
                f"name, but {found[0]}{more} holds annotations of this same image (the same "
                f"pixels), saved {how}: to go on with them, use 'Load annotations…'"
            )
            return
        unmarked = [  # saved before records held the image's fingerprint: maybe this one's
            path
            for path in earlier
            if path.is_file()
            and saved_fingerprint(path) is None
            and saved_shape(path) == tuple(session.axes.spatial_shape)
        ]
        if unmarked:
            show_info(
                f"no annotations of {session.image_name!r} are saved in {folder} under its "
                f"name, but {unmarked[0]} may hold them: an earlier napari-samtune saved an "
                "image of this name under that name. If it does, 'Load annotations…' goes on "
                f"with them (or rename it {own.name}, with its .prompts.json)"
            )

    def _say_newer_same_image_saves(self, folder: Path, own: Path) -> None:
        """Say where annotations of this image saved after ``own`` under another name are:
        those saved beside ``own`` while it could not be read, or of a copy of the image."""
        session = self.session
        try:
            since = own.stat().st_mtime
        except OSError:
            return
        found = same_image_saves(
            folder, session.fingerprint, session.axes.spatial_shape, (own,), newer_than=since
        )
        said = session.disk.said_newer_saves  # once: a restore in the background, then
        if found and found[0] not in said:  # the folder set, restores again
            said.add(found[0])
            more = f" (and {len(found) - 1} more files)" if len(found) > 1 else ""
            show_warning(
                f"{found[0]}{more} holds annotations of this same image (the same pixels) "
                f"saved after {own.name} under another name, e.g. while {own.name} could not "
                "be read: to go on with them instead, use 'Load annotations…'"
            )

    def _load_saved(self, labels_path: Path, labels: bool) -> None:
        if not labels:  # the annotations layer was kept: it holds the labels
            if self.session.holds_saved(labels_path):
                self.session.load_records(labels_path)
                self.session.saved_to(labels_path)
                return
            self.session.disk.note_foreign(labels_path)  # its saves go beside the file
            show_warning(
                f"layer {self.session.layers.annotations.name!r} holds other annotations than "
                f"{labels_path} (opened from another copy, or edited since): its saves go "
                "beside that file, which is left as it is; to go on with the file instead, "
                "use 'Load annotations…'"
            )
            return
        if self._restores_in_background():
            self._start_restore(labels_path)
            return
        n_objects = self.session.load(labels_path)
        show_info(f"restored {n_objects} saved objects from {labels_path}")

    def _restore_failed(self, labels_path: Path, problem: str, labels: bool) -> None:
        """The autosave at ``labels_path`` could not be read back: later saves go beside it,
        never over it (where an earlier session went after the same failure, and are
        restored from there; past any of those that cannot be read back either)."""
        folder = labels_path.parent
        for attempt in itertools.count(1):
            diverted, _ = annotation_paths(folder, self.session.divert_saves(folder, attempt))
            if diverted == labels_path:  # it was already saved beside another image's
                continue
            show_error(
                f"could not restore {labels_path}: {problem}. So that it is not overwritten, "
                f"this image's annotations are saved as {diverted.name} until it can be read"
            )
            if not diverted.is_file():
                return
            try:
                self._load_saved(diverted, labels)
                return
            except (ValueError, OSError) as err:
                labels_path, problem = diverted, user_message(err)

    def _on_autosave_ticked(self, checked: bool) -> None:
        """Autosave ticked again: the edits made without it, to this image or others, are
        saved now, not only with the next one (closing napari meanwhile would lose them)."""
        if checked:
            for session in list(self._not_autosaved):
                self._autosave(session)

    def _remember_not_autosaved(self, session) -> None:
        """``session`` was edited with autosave unticked (or its autosave failed): keep it,
        to resume it when its image is chosen again, save it when autosave is ticked again,
        and say so if napari closes first."""
        if not any(kept is session for kept in self._not_autosaved):
            self._not_autosaved.append(session)
        window = main_window_of(self)
        if window is not None:  # see eventFilter (installing it again changes nothing)
            window.installEventFilter(self)

    def _forget_not_autosaved(self, session) -> None:
        self._not_autosaved = [kept for kept in self._not_autosaved if kept is not session]

    def _say_not_autosaved(self, ending: str) -> None:
        """The viewer or the panel closes (``ending`` says which, and what it means for the
        annotations): name the images edited with autosave unticked and not saved since."""
        sessions, self._not_autosaved = self._not_autosaved, []
        if sessions:
            names = ", ".join(repr(session.image_layer.name) for session in sessions)
            show_warning(
                f"the annotations of {names} are not saved (edited with autosave unticked, or "
                f"their last save failed): {ending}. Use Save now (with autosave ticked, into a "
                "folder you can write to) before closing to keep them"
            )

    def _say_removed_annotations(self) -> None:
        """The annotations layers removed of images still there (an image removed with its
        layers is said by the caller): their unsaved edits went with them."""
        removed, self._removed_annotations = self._removed_annotations, []
        images_gone = {id(s) for s in self._removed_not_autosaved}
        for session in removed:
            if id(session) in images_gone or not any(session is s for s in self._not_autosaved):
                continue
            self._forget_not_autosaved(session)
            last = self._last_save(session)
            saved = f"; picked again, it shows its last save, {last}" if last else ""
            show_warning(
                f"layer {session.layers.annotations.name!r} was removed with edits made with "
                f"autosave unticked: those edits are lost{saved}. Keep autosave ticked, or use "
                "Save now, to have them on disk"
            )

    def _last_save(self, session) -> Path | None:
        """The labels file ``session``'s image was last saved to, if there is one."""
        folder = self.annotation_folder()
        labels_path, _ = annotation_paths(folder, session.file_name(folder))
        return labels_path if labels_path.is_file() else None

    def _forget_removed_image(self, image_layer) -> bool:
        """Image ``image_layer`` was removed: its sessions edited with autosave unticked are
        no longer to be kept (nor the image with them); see
        :meth:`_say_removed_not_autosaved`. Whether there were any."""
        removed = [kept for kept in self._not_autosaved if kept.image_layer == image_layer]
        self._removed_not_autosaved.extend(removed)
        return bool(removed)

    def _note_removed_annotations(self, layer) -> bool:
        """Annotations layer ``layer`` was removed: a session edited with autosave unticked
        whose edits it held is told of (see :meth:`_say_removed_not_autosaved`); whether
        there was one. (Picked again, the image restored its last save without a word.)"""
        held = [kept for kept in self._not_autosaved if kept.layers.annotations == layer]
        self._removed_annotations.extend(held)
        return bool(held)

    def _say_removed_not_autosaved(self) -> None:
        """Once the layers removed together are gone, the sessions of the images removed go,
        and the person is told where their unsaved edits are, if anywhere (unless napari
        closed meanwhile, which said so: it removes the layers first)."""
        self._say_removed_annotations()
        removed, self._removed_not_autosaved = self._removed_not_autosaved, []
        for session in [s for s in removed if any(s is kept for kept in self._not_autosaved)]:
            self._forget_not_autosaved(session)
            name, annotations = session.image_layer.name, session.layers.annotations
            edits = (
                f"image {name!r} was removed; its annotations, edited with autosave unticked, "
                "are not saved"
            )
            if annotations in self.viewer.layers:
                show_warning(
                    f"{edits}: they are in layer {annotations.name!r}. To keep them, add the "
                    f"image again as {name!r}, pick it under Image and use Save now (or save "
                    "that layer: File > Save Selected Layers)"
                )
                continue
            last = self._last_save(session)
            saved = f"; the last save is {last}" if last else ""
            show_warning(
                f"{edits} and its annotations layer was removed too: those edits are lost"
                f"{saved}. Keep autosave ticked to have every edit saved"
            )

    def _on_painted(self, event=None) -> None:
        """A brush, fill or eraser stroke on the annotations (a person correcting them) is
        autosaved like a commit: once control is back in the event loop, as napari reports
        the stroke before it writes it into the data. The painted image's session is
        saved: by then another image may be chosen (in the same turn, by a script), and
        the stroke went unsaved while an empty file was written for that one."""
        self._strokes += 1  # see AnnotateFileJobsMixin._edit_state
        session = self.session
        QTimer.singleShot(0, lambda: None if self._shut_down else self._autosave(session))

    def _bind_history_keys(self, annotations) -> None:
        """napari's Ctrl+Z and Ctrl+Shift+Z on the annotations layer, autosaved like a
        stroke (see :func:`~napari_samtune._qt.history_keys.bind_history_keys`)."""
        widget = weakref.ref(self)

        def stepped(layer) -> None:
            if widget() is not None:
                widget()._on_history_step(layer)

        bind_history_keys(annotations, stepped)

    def _on_history_step(self, layer) -> None:
        """An undo or redo on ``layer``: autosaved as a stroke there would be."""
        if self._shut_down:
            return
        if self.session is not None and layer == self.session.layers.annotations:
            self._on_painted()
        elif layer in self._retired_painting:
            _, painted = self._retired_painting[layer]
            painted()

    def _watch_retired(self, session) -> None:
        """``session``'s image is no longer chosen, but its annotations layer stays in the
        viewer, where a person may still correct it with the brush: autosave those strokes
        to that image's file too, and keep its layers on the image where it is moved (until
        the image is chosen again or the layer goes)."""
        layer = session.layers.annotations
        if layer not in self.viewer.layers or self._shut_down:
            return

        def painted(_event=None) -> None:
            QTimer.singleShot(0, lambda: self._autosave(session))

        def moved(_event=None) -> None:  # the brush must paint the pixels under it
            session.layers.place_like(session.image_layer)

        self._unwatch_retired(layer)
        layer.events.paint.connect(painted)
        follow_placement(session.image_layer, moved, connect=True)
        self._retired_painting[layer] = (session, painted)
        # the image it follows, weakly: a removed image is freed though its layers stay
        self._retired_moves[layer] = (weakref.ref(session.image_layer), moved)

    def _unwatch_retired(self, layer=None) -> None:
        """Stop autosaving the strokes on ``layer`` (every retired layer when None), and
        placing it where its image is moved."""
        layers = list(self._retired_painting) if layer is None else [layer]
        for retired in layers:
            _, painted = self._retired_painting.pop(retired, (None, None))
            if painted is not None:
                retired.events.paint.disconnect(painted)
                image, moved = self._retired_moves.pop(retired)
                if image() is not None:
                    follow_placement(image(), moved, connect=False)
