"""A dock widget's place in napari's window: the main window it belongs to, and a callback
for when napari takes it out (its close button sends no close event)."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QMainWindow, QWidget


def main_window_of(widget: QWidget) -> QMainWindow | None:
    """The main window a dock widget belongs to, also while it floats (None: not docked).

    A dock widget gets no closeEvent when that window closes, so widgets with work that
    must end cleanly watch the window's close with an event filter."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QMainWindow):
        parent = parent.parentWidget()
    return parent


class _RemovalWatcher(QObject):
    """Calls back once when its widget loses its parent for good (see :func:`on_removed`)."""

    def __init__(self, widget: QWidget, callback: Callable[[], None]) -> None:
        super().__init__(widget)
        self._callback: Callable[[], None] | None = callback
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.ParentChange and self._callback is not None:
            if watched.parent() is None:
                callback, self._callback = self._callback, None
                callback()
        return False


def on_removed(widget: QWidget, callback: Callable[[], None]) -> None:
    """Call ``callback`` once when ``widget`` is taken out of the viewer: napari's close
    button on a dock (``remove_dock_widget``) un-parents the widget and sends it no close
    event, so a widget that binds keys or runs work would otherwise go on unseen."""
    _RemovalWatcher(widget, callback)
