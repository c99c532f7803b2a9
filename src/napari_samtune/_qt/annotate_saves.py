"""The annotation widget's background saves: autosave after every commit and stroke (one
save at a time, later requests coalesced), and the saves still owed when the viewer closes,
an image goes or is renamed, which wait for the running one without the event loop.

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``ui``, ``runner`` and ``session`` and :class:`~napari_samtune._qt.annotate_files.
AnnotateFilesMixin`), kept apart so each module stays short.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject

from napari_samtune._qt.annotate_jobs import SAVE_TASK
from napari_samtune._qt.annotate_notes import found_where
from napari_samtune._qt.annotate_restore import restore_pending
from napari_samtune._qt.dock_life import closed_by_code, main_window_of
from napari_samtune._qt.task_messages import user_message
from napari_samtune._qt.unsaved_close import settle_unsaved
from napari_samtune.core.annotation_files import ChangedMeanwhile, save_annotations


@dataclass(frozen=True)
class _SaveAgain:
    """What a background save returns where its file was written meanwhile by another."""

    labels_path: Path  # that file, kept as the other program left it


class AnnotateSavesMixin:
    """Background saves of the annotations (see the module)."""

    def _autosave(self, session=None):
        """Save a snapshot of ``session`` (default: the image annotated now) in the
        background, atomically; coalesces overlapping requests."""
        session = self.session if session is None else session
        if session is None or restore_pending(session.layers.annotations):
            return None  # (nothing of the person's yet: the file holds the annotations)
        if not self.ui.autosave_check.isChecked():
            self._remember_not_autosaved(session)
            return None
        self._forget_not_autosaved(session)  # saved now, or after the save that runs
        if self.runner.is_running(SAVE_TASK):
            if not any(waiting is session for waiting in self._autosave_again):
                self._autosave_again.append(session)
            return None
        return self._start_save(session)

    def _start_save(self, session, announce: bool = False):
        """Start the background save of ``session``; ``announce``: Save now, which says
        where it saved (see AnnotateFileJobsMixin), not quiet as an autosave."""
        self._autosave_again = [s for s in self._autosave_again if s is not session]
        folder = self._save_folder = self.annotation_folder()
        file_name, before_write = session.target_to_save(folder)  # beside a file changed
        window = main_window_of(self)
        if window is not None:  # see eventFilter (installing it again changes nothing)
            window.installEventFilter(self)
        self._written, self._saving = None, (session, announce)
        return self.runner.start(
            SAVE_TASK,
            self._save_in_worker,
            session,
            announce,
            folder,
            session.image_layer.name,
            self._snapshot(session),  # the worker must not read labels being edited
            session.document(),
            file_name,
            before_write,
            on_return=lambda outcome: self._save_returned(session, announce, outcome),
            on_error=lambda _exc: (
                self._save_now_failed(session) if announce else self._autosave_failed(session)
            ),
            on_finish=self._autosave_next,
            quiet=True,  # the status line keeps what was committed
        )

    def _save_in_worker(self, session, announce: bool, *args) -> tuple[Path, Path] | _SaveAgain:
        """``save_annotations(*args)`` for ``session`` (Save now: ``announce``), noting what
        it wrote (or why it could not) for :meth:`flush_autosave`, which cannot wait for the
        event loop to bring the result."""
        try:
            paths = save_annotations(*args)
        except ChangedMeanwhile as err:  # not a failure: saved again, beside that file
            self._written = (session, err, announce)
            return _SaveAgain(err.labels_path)  # (a worker raises an exception it returns)
        except Exception as err:
            self._written = (session, err, announce)
            raise
        self._written = (session, paths[0], announce)
        return paths

    def _save_returned(self, session, announce: bool, outcome) -> None:
        if isinstance(outcome, _SaveAgain):
            self._save_again(session, announce, outcome.labels_path)
        else:
            (self._saved_now if announce else self._autosaved)(session, outcome[0])

    def _save_again(self, session, announce: bool, labels_path: Path) -> None:
        """Another napari (or ``samtune segment``) wrote ``labels_path`` just as the save of
        ``session`` began: nothing was written over it; the save runs again, beside it, once
        this one has ended (:meth:`_autosave_next`), and says where."""
        session.written_meanwhile(labels_path)
        self._save_next(session, announce)

    def _save_next(self, session, announce: bool) -> None:
        """Save ``session`` once the save that runs has ended (Save now: ``announce``)."""
        if announce and self._save_now_waiting in (None, session):
            self._save_now_waiting = session
        elif not any(waiting is session for waiting in self._autosave_again):
            self._autosave_again.insert(0, session)

    def _snapshot(self, session) -> np.ndarray:
        """A copy of ``session``'s annotations for a background save, made into the array
        the last one wrote (it is done: saves run one at a time), not a new one: a new copy
        of a large stack (60 x 2048 x 2048) took over a second on the GUI thread, at every
        commit and brush stroke, to get its memory; into memory in use, 60 ms."""
        labels, buffer = session.annotations, self._save_buffer
        if buffer is None or buffer.shape != labels.shape or buffer.dtype != labels.dtype:
            buffer = self._save_buffer = np.empty_like(labels)
        np.copyto(buffer, labels)
        return buffer

    def _autosave_next(self) -> None:
        """A save ended: Save now, pressed while it ran, or else save the next image whose
        edits came while it ran, if any."""
        if self._save_now_waiting is not None:
            session, self._save_now_waiting = self._save_now_waiting, None
            self._start_save(session, announce=True)
        elif self._autosave_again:
            self._autosave(self._autosave_again[0])

    def _autosaved(self, session, labels_path: Path) -> None:
        session.saved_to(labels_path)
        if self._save_failed is session:  # the error was said: so is that it is over
            self._save_failed = None
            show_info(f"saved annotations to {labels_path}")
        self.annotations_saved.emit(str(labels_path))
        if self.ui.autosave_check.isChecked():  # those whose save failed: the disk may
            for unsaved in list(self._not_autosaved):  # have room again, try them next
                self._autosave(unsaved)

    def _autosave_failed(self, session) -> None:
        """The runner said why. ``session`` counts as unsaved until a save of it succeeds:
        closing napari asks, and the next successful save tries it again (the window
        closed at once, and the commit was on no disk, unsaid)."""
        self._save_failed = session
        self._remember_not_autosaved(session)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.Close:  # the viewer's window
            self.flush_autosave()  # first: a save failing there joins the unsaved, asked of
            discarded = []
            if self._not_autosaved and not closed_by_code(event, watched):  # a person: ask
                folder = self.annotation_folder()
                close, discarded = settle_unsaved(self, self._not_autosaved, folder)
                if not close:
                    self._not_autosaved = discarded  # (all, or those whose save failed)
                    event.ignore()
                    return True
            self.flush_autosave()
            self._save_automatic_so_far()
            if not discarded:  # Discard: kept unsaved, unsaid: napari's own question may
                # keep the window open, and the next close asks again (they were lost)
                self._say_not_autosaved("the window closes")
        return super().eventFilter(watched, event)

    def flush_autosave(self) -> None:
        """Before the viewer closes: wait for a running background save (without the event
        loop, which a closing window may not get back), then write the commits that came
        after it, which would otherwise be lost."""
        if not self.runner.is_running(SAVE_TASK):
            return
        began = self.runner.wait(SAVE_TASK)
        self.runner.forget(SAVE_TASK)  # its result too: note the file it wrote as this
        # session's, or the saves below take it for another program's edit and go beside it
        if not began:  # started in this turn of the event loop: saved below instead
            self._save_next(*self._saving)
        elif self._written is not None:
            session, outcome, announce = self._written
            if isinstance(outcome, ChangedMeanwhile):  # saved below, beside that file
                self._save_again(session, announce, outcome.labels_path)
            elif isinstance(outcome, BaseException):  # its callbacks are gone: said here, and
                # kept unsaved (the window closed unasked, the commit on no disk)
                show_error(f"{SAVE_TASK} failed: {user_message(outcome)}")
                (self._save_now_failed if announce else self._autosave_failed)(session)
            else:
                session.saved_to(outcome)
        waiting = [(session, False) for session in self._autosave_again]
        self._autosave_again = []
        if self._save_now_waiting is not None:  # pressed while that save ran
            waiting = [(self._save_now_waiting, True), *waiting]
            self._save_now_waiting = None
        for session, announce in waiting:
            try:
                session.save(self.annotation_folder())
            except (OSError, ValueError) as err:
                show_error(f"{SAVE_TASK} failed: {user_message(err)}")
                (self._save_now_failed if announce else self._autosave_failed)(session)

    def _save_automatic_so_far(self) -> None:
        """Save the planes a running automatic segmentation has written, as its image goes
        (another image chosen, the panel or the viewer closed): the autosave at the end of
        the run would not save them (a closed viewer runs nothing more), and the image,
        chosen again, would get its records from a file without them."""
        if self._automatic_unsaved is None:
            return
        (session, planes), self._automatic_unsaved = self._automatic_unsaved, None
        self._save_left_behind(session, planes)

    def _save_left_behind(self, session, planes: list[int | None]) -> None:
        """Save the annotations of ``session``, an image no longer chosen (or the viewer
        closing), that automatic segmentation wrote on ``planes``."""
        if not self.ui.autosave_check.isChecked():
            self._remember_not_autosaved(session)
            return
        what = found_where(session, planes)
        try:
            labels_path, _ = session.save(self.annotation_folder())
        except (OSError, ValueError) as err:
            show_error(f"saving {what} failed: {user_message(err)}")
            return
        show_info(f"{what} are kept and saved to {labels_path}")
