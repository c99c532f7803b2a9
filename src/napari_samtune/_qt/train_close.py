"""The Finetune widget when napari's window closes during a run: save, export, then go.

A dock widget gets no close event when napari's window closes, and napari would end the
training worker at its next event, losing the steps since the last epoch and the export.
So while a run is on, :class:`TrainCloseMixin` watches the main window's close: a person
closing it (its close button, File > Close Window, Ctrl+W, Ctrl+Q) is asked, and the
window closes once the model is exported (the viewer stays usable meanwhile);
``Viewer.close()`` from a script blocks until then, as napari tears the viewer down right
after. A mixin of :class:`~napari_samtune._qt.train_widget.TrainWidget` (it uses
its ``runner``, ``stop``, ``is_running``, ``status_label`` and ``_on_run_ended``).
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QMessageBox, QWidget

from napari_samtune._qt.dock_life import closed_by_code, main_window_of
from napari_samtune._qt.train_run import TRAIN_TASK


class TrainCloseMixin:
    """Finishing a run before napari's main window closes."""

    _close_when_ended: QWidget | None = None  # window to close when the run ends
    _watched_window: QWidget | None = None  # the window the run was started in (see below)

    def _watch_window_close(self, watch: bool) -> None:
        """Watch the window of the run's start, which the widget leaves when its panel is
        closed mid-run (the run then finishes its step, and the window still waits)."""
        if self._watched_window is not None:
            self._watched_window.removeEventFilter(self)
        self._watched_window = main_window_of(self) if watch else None
        if self._watched_window is not None:
            self._watched_window.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if event.type() != QEvent.Type.Close or not self.is_running:
            return super().eventFilter(watched, event)
        if closed_by_code(event, watched):
            self.finish_now()  # napari.Viewer.close(), a script: it cannot wait
            return False
        if self.close_after_run(ask=True):  # a person: asked, then closed once saved
            self.status_label.setText("closing once the model is saved…")
        event.ignore()
        return True

    def close_after_run(self, ask: bool) -> bool:
        """Stop the run and close the viewer's window when it has written its checkpoint and
        exported the model; the viewer stays usable meanwhile. ``ask``: let the person keep
        the window and the run instead. Returns whether the window will close."""
        window = self._watched_window or main_window_of(self)  # the run's end forgets it
        if ask and self._close_when_ended is None:
            saved = (
                "The current step finishes, then a checkpoint is written and the model "
                "exported (this may take a minute)."
                if self.steps_seen
                else "It has trained no step yet, so nothing new is saved."
            )
            answer = QMessageBox.question(
                self,
                "Training is running",
                f"Stop training and close? {saved}",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return False
        if not self.is_running:  # it ended while the person was asked: saved and exported
            if window is not None:
                QTimer.singleShot(0, window.close)
            return True
        self._close_when_ended = window
        self.stop()
        return True

    def finish_now(self) -> None:
        """Stop the run and block until it has written its checkpoint and exported the model
        (for a close by code: napari tears the viewer down right after); the run's late
        callbacks are dropped, as the widget goes with the viewer."""
        if not self.is_running:
            return
        self.stop()
        self.runner.wait(TRAIN_TASK)
        self.runner.forget(TRAIN_TASK)
        self._on_run_ended()

    def _close_window_if_asked(self) -> None:
        window, self._close_when_ended = self._close_when_ended, None
        if window is not None:
            QTimer.singleShot(0, window.close)
