"""Restoring a large image's autosave in a thread worker.

Picking an image whose annotations were saved reads them back. For a 60 x 2048 x 2048 stack
(zlib-compressed, 1 GB of labels) that took 2-15 s on the GUI thread, with napari frozen.
Above ``BACKGROUND_RESTORE_PIXELS`` the file is read in a worker instead; until its labels
are in, the image's annotations layer holds nothing of the person's, so:

* the layer is marked (``metadata[RESTORE_PENDING_KEY]``, the file's path) and cannot be
  painted; whatever ends the wait early (another image picked, the panel closed, the image
  renamed) leaves the mark, and the next time the image is annotated its file is restored
  again, never saved over with the empty layer;
* commits, undo, automatic segmentation, propagation, loading and saving wait, and say so;
  prompts and the preview work meanwhile.

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget`, kept apart so each module
stays short.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_info, show_warning

from napari_samtune._qt.annotate_file_jobs import read_for_loading
from napari_samtune._qt.task_messages import user_message

BACKGROUND_RESTORE_PIXELS = 16 * 2**20  # e.g. 4 x 2048 x 2048: larger files read in a worker
RESTORE_PENDING_KEY = "napari-samtune restore pending"
RESTORE_TASK = "restoring saved annotations"


def read_or_problem(path: Path) -> tuple[np.ndarray, dict, int] | str:
    """:func:`read_for_loading`, or why the file cannot be read (said by the widget, which
    then saves beside it rather than over it)."""
    try:
        return read_for_loading(path)
    except (OSError, ValueError) as err:
        return user_message(err)


def restore_pending(annotations_layer) -> bool:
    """Whether ``annotations_layer`` waits for its saved labels (see the module)."""
    return RESTORE_PENDING_KEY in annotations_layer.metadata


class AnnotateRestoreMixin:
    """The background restore of an image's autosave."""

    def _restores_in_background(self) -> bool:
        return int(np.prod(self.session.axes.spatial_shape)) >= BACKGROUND_RESTORE_PIXELS

    def _start_restore(self, labels_path: Path):
        """Read ``labels_path`` into the annotations of the image annotated now, in a
        worker; returns the worker. A restore of this image still running is dropped."""
        session = self.session
        task = f"{RESTORE_TASK} of {session.image_name!r}"
        # (an earlier one's result is older: another folder, a rename)
        for earlier in {task, self._restore_tasks.pop(id(session), task)}:
            self.runner.forget(earlier)
        self._restore_tasks[id(session)] = task
        annotations = session.layers.annotations
        annotations.metadata[RESTORE_PENDING_KEY] = str(labels_path)
        annotations.editable = False
        return self.runner.start(
            task,
            read_or_problem,
            labels_path,
            on_return=lambda read: self._restored(session, labels_path, read),
        )

    def _restored(self, session, labels_path: Path, read) -> None:
        self._restore_tasks.pop(id(session), None)
        annotations = session.layers.annotations
        meant = annotations.metadata.get(RESTORE_PENDING_KEY) == str(labels_path)
        if not meant or annotations not in self.viewer.layers:
            return  # the layer went, or waits for another file now
        problem = read
        if not isinstance(read, str):
            problem = self._apply_restored(session, labels_path, read)
        if not problem:
            self._end_restore(session)
            show_info(f"restored {read[2]} saved objects from {labels_path}")
        elif session is not self.session:  # the layer stays locked and marked until then
            show_warning(
                f"could not restore {labels_path}: {problem}. Pick "
                f"{session.image_layer.name!r} again: its annotations are then saved "
                "beside that file, not over it"
            )
        else:  # as when read on the GUI thread: saves go beside the file
            self._end_restore(session)
            self._restore_failed(labels_path, problem, labels=True)

    @staticmethod
    def _apply_restored(session, labels_path: Path, read) -> str:
        """Put what was read into ``session``'s annotations; "" or why they were not."""
        labels, record, _ = read
        try:
            session.apply_loaded(labels, record, labels_path, undoable=False)
        except ValueError as err:  # another shape: the file is left as it is
            return user_message(err)
        return ""

    def _end_restore(self, session) -> None:
        """``session``'s annotations no longer wait for a file: they can be painted."""
        annotations = session.layers.annotations
        if annotations.metadata.pop(RESTORE_PENDING_KEY, None) is not None:
            annotations.editable = True

    def _waits_for_restore(self, what: str) -> bool:
        """Whether the image annotated now waits for its saved annotations; then says that
        ``what`` (e.g. "commit") waits too."""
        if self.session is None or not restore_pending(self.session.layers.annotations):
            return False
        show_info(
            f"the saved annotations of {self.session.image_layer.name!r} are being restored: "
            f"{what} once they are in"
        )
        return True

    def _say_restores_dropped(self) -> None:
        """The panel closes: restores still running are dropped (a closed panel acts on
        no layer). Their layers stay locked and marked: annotated again, the images are
        restored."""
        for task in self._restore_tasks.values():
            self.runner.forget(task)
        self._restore_tasks.clear()
        for layer in self.viewer.layers:
            if restore_pending(layer):
                show_info(
                    f"layer {layer.name!r} was not restored from "
                    f"{layer.metadata[RESTORE_PENDING_KEY]} yet: the panel closed. It stays "
                    "locked; open the panel and pick its image to restore it"
                )
