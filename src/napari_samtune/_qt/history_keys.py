"""napari's Ctrl+Z and Ctrl+Shift+Z on an annotations layer, bound again so that the
annotation widget autosaves an undone or redone stroke, and says when there is none."""

from __future__ import annotations

from collections.abc import Callable

from app_model.types import KeyCode, KeyMod
from napari.utils.notifications import show_info

from napari_samtune._qt.proxies import unproxied

# napari's undo and redo of a brush, fill or eraser stroke on a Labels layer (its class keys)
HISTORY_KEYS = {
    KeyMod.CtrlCmd | KeyCode.KeyZ: "undo",
    KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ: "redo",
}

# What the keys say where napari's history of the layer is empty: the widget's writes drop
# it (see AnnotationSession._annotations_written), and a key that did nothing looked broken.
NOTHING_TO = {
    "undo": (
        "Ctrl+Z: no brush stroke of {!r} to undo since the annotation widget last wrote it "
        "(a commit, U, automatic segmentation or a loaded file); U undoes its last commit"
    ),
    "redo": "Ctrl+Shift+Z: no undone brush stroke of {!r} to redo",
}


def bind_history_keys(annotations, stepped: Callable[[object], None]) -> None:
    """Bind the keys on the Labels layer ``annotations``: each undoes or redoes a stroke
    without a paint event, so ``stepped(layer)`` is called after it (to autosave it like
    the stroke; else the file keeps the stroke undone, and restores it when the image is
    annotated again). Where there is nothing to undo or redo, the keys say so."""

    def step(layer, name: str) -> None:
        history = getattr(unproxied(layer), f"_{name}_history", None)
        if history is not None and not history:
            show_info(NOTHING_TO[name].format(layer.name))
            return
        getattr(layer, name)()
        stepped(layer)

    for key, name in HISTORY_KEYS.items():
        annotations.bind_key(key, lambda layer, name=name: step(layer, name), overwrite=True)


def unbind_history_keys(annotations) -> None:
    """napari's own Ctrl+Z and Ctrl+Shift+Z on ``annotations`` again (the panel closed: the
    message pointed to U, which no longer worked)."""
    for key in HISTORY_KEYS:
        annotations.bind_key(key, None, overwrite=True)
