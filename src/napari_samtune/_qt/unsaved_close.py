"""Asking a person who closes napari with annotations edited with autosave unticked whether
to save them: closing used to lose them with only a warning in the closing window."""

from __future__ import annotations

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QMessageBox, QWidget

from napari_samtune._qt.task_messages import user_message


def settle_unsaved(parent: QWidget, sessions: list, folder) -> tuple[bool, list]:
    """Ask whether to save the annotation ``sessions`` (not saved since their last edit)
    into ``folder`` before the window closes. Returns whether it may close, and the
    sessions still unsaved: Save writes them (one that fails keeps the window open, said);
    Discard closes without them (still unsaved, should the window stay open after all);
    Cancel, or closing the question, keeps the window open."""
    names = ", ".join(repr(session.image_layer.name) for session in sessions)
    buttons = QMessageBox.StandardButton
    answer = QMessageBox.question(
        parent,
        "Annotations not saved",
        f"The annotations of {names} are not saved (edited with autosave unticked, or their "
        "last save failed). Save them before the window closes?",
        buttons.Save | buttons.Discard | buttons.Cancel,
        buttons.Save,
    )
    if answer == buttons.Discard:
        return True, sessions
    if answer != buttons.Save:
        return False, sessions
    for index, session in enumerate(sessions):
        try:
            session.save(folder)
        except (OSError, ValueError) as err:
            show_error(f"saving failed, so the window stays open: {user_message(err)}")
            return False, sessions[index:]
    return True, []
