"""A dock widget's place in napari's window: the main window it belongs to, and a callback
for when napari takes it out (its close button sends no close event)."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, Qt
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


def closed_by_code(event: QEvent, window: QObject) -> bool:
    """Whether ``event``, a close of napari's ``window``, comes from ``Viewer.close()`` (a
    script, which cannot wait or be asked) rather than a person (the window's button, or
    napari's menu and keys, whose close events are not spontaneous either)."""
    return not event.spontaneous() and _viewer_closed_already(window)


def _viewer_closed_already(window: QObject) -> bool:
    """Whether the canvas of napari's ``window`` was closed before the window:
    ``Viewer.close()`` does so, and tears everything down right after; napari's menu and
    keys close the window (a close event that is not spontaneous either) with it open."""
    central = window.centralWidget() if isinstance(window, QMainWindow) else None
    layout = central.layout() if central is not None else None
    canvas = layout.itemAt(0).widget() if layout is not None and layout.count() else None
    if canvas is None:  # not napari's layout: taken as a close by code, which waits
        return True
    return canvas.isHidden() and canvas.testAttribute(Qt.WidgetAttribute.WA_WState_ExplicitShowHide)
