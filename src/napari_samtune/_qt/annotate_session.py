"""One image being annotated: its layers, the committed objects and their undo history.

Runs on the main thread only (it changes layers). Planes are ints for a stack and None
for a 2D image; coordinates are napari layer data coordinates (image pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_samtune._qt.disk_states import DiskStates
from napari_samtune._qt.image_planes import ImageAxes
from napari_samtune._qt.kept_prompts import snapshot_prompts
from napari_samtune._qt.label_edits import Plane, UndoEntry, UndoStack, brush_past, write_objects
from napari_samtune._qt.layer_placement import sliced_point
from napari_samtune._qt.prompt_layers import PromptLayers
from napari_samtune._qt.proxies import unproxied
from napari_samtune._qt.session_files import SessionFilesMixin
from napari_samtune.core.label_files import image_fingerprint


class RemovedImage:
    """Stands for the image of a session after the image was removed from the viewer: its
    name, without its layer and pixels. Equal to no layer, and in no layer list."""

    def __init__(self, name: str) -> None:
        self.name = name


class AnnotationSession(SessionFilesMixin):
    """The prompt, preview and annotation layers of one image, plus commit and undo."""

    def __init__(self, viewer, image_layer, axes: ImageAxes) -> None:
        self.viewer = viewer
        self.image_layer = image_layer
        self.axes = axes
        self.fingerprint = image_fingerprint(image_layer.data)  # told apart from namesakes
        self.layers = PromptLayers(viewer, image_layer, axes, self.fingerprint)
        self.records: list[dict] = []  # one per committed object (or automatic run)
        self.undo_stack = UndoStack()
        self._file_names: dict[tuple[Path, str], str] = {}  # see file_name
        self.disk = DiskStates()  # of the labels files read or written (see name_to_save)
        self.image_name = image_layer.name  # until follow_rename takes the new one

    def let_go_of_image(self) -> None:
        """The image was removed from the viewer while this session is kept (its annotations
        layer stays, and its strokes are still saved): hold its name only, which is all
        saving needs, so that the image layer and its pixels can be freed."""
        self.image_layer = RemovedImage(self.image_layer.name)

    @property
    def annotations(self) -> np.ndarray:
        """The committed labels: uint32 (H, W) or (Z, H, W), edited in place."""
        return self.layers.annotations.data

    def plane_at(self, world_point) -> Plane:
        """The plane index shown at ``world_point`` (viewer.dims.point), None for 2D."""
        if not self.axes.is_stack:
            return None
        z = sliced_point(self.layers.preview, world_point)[0]
        return int(np.clip(np.rint(z), 0, self.axes.n_planes - 1))

    def shows_plane(self, world_point) -> bool:
        """Whether ``world_point`` lies on a plane of the stack (napari shows none of it past
        its planes, and :meth:`plane_at` gives the nearest, which the widget acted on)."""
        if not self.axes.is_stack:
            return True
        z = sliced_point(self.layers.preview, world_point)[0]
        return -0.5 <= z < self.axes.n_planes - 0.5

    # -- edits ----------------------------------------------------------------------------
    def commit(
        self,
        overwrite: bool,
        source: str,
        model_name: str,
        planes: list | None = None,
        present: list[np.ndarray] | None = None,
        alone: bool = False,
        weights_id: str | None = None,
    ) -> list[int]:
        """Write the preview (every plane) as new objects; clear prompts and preview.

        Returns the new ids (empty when the preview was empty or fully blocked by
        existing objects and ``overwrite`` is off; then nothing changes). ``planes`` (those
        the preview shows) and ``present`` (the ids on each of them), where the caller has
        them: reading a 30 x 2048 x 2048 preview for each took ~0.1 s. ``alone``: ``planes``
        are some of those the preview shows (a propagated object's), whose prompts and
        preview alone are written and cleared; the others stay (another object's).
        ``weights_id``: the model's weights (:attr:`.Segmenter.model_id`), recorded beside its
        name, which a continued run gives other weights.
        """
        planes = self.layers.preview_planes() if planes is None else planes
        objects = {plane: self.layers.preview_plane(plane) for plane in planes}
        kept = snapshot_prompts(self.layers, self.layers.preview_planes() if alone else planes)
        prompts = self.layers.prompts_record(planes if alone else None)
        if weights_id is not None:
            prompts = {"weights_id": weights_id, **prompts}
        ids = self._write(objects, overwrite, source, model_name, prompts, present=present)
        if ids:
            self.undo_stack.peek().prompts = kept  # undone, they come back
            self.layers.clear_prompts(planes if alone else None)
            self.layers.clear_preview(planes)
        return ids

    def add_labels(
        self,
        objects_by_plane: dict,
        overwrite: bool,
        source: str,
        model_name: str,
        group: UndoEntry | None = None,
        how: dict | None = None,
    ) -> list[int]:
        """Write a whole label image per plane (automatic segmentation) as new objects.

        With ``group`` (from :meth:`begin_group`) several calls undo as one step. ``how``:
        more fields of their record (JSON-ready; the settings that found them).
        """
        return self._write(objects_by_plane, overwrite, source, model_name, how or {}, group)

    def begin_group(self) -> UndoEntry:
        """Start an edit made of several writes that one undo reverts together."""
        return UndoEntry()

    def end_group(self, entry: UndoEntry) -> None:
        """Finish a group: it becomes the latest undo step (commits made while it ran come
        before it), unless it wrote nothing."""
        if entry.writes:
            entry.note_survivors(self.annotations)
            self.undo_stack.push(entry)

    def _write(
        self,
        objects: dict,
        overwrite: bool,
        source: str,
        model_name: str,
        prompts: dict,
        group: UndoEntry | None = None,
        present: list[np.ndarray] | None = None,
    ) -> list[int]:
        entry = UndoEntry() if group is None else group
        top = self._top_recorded()
        ids = write_objects(self.annotations, objects, overwrite, entry, top, present)
        if not ids:
            return []
        planes = sorted({p for p in entry.planes if p is not None and p in objects})
        record = {"ids": ids, "planes": planes, "source": source, "model": model_name, **prompts}
        self.records.append(record)
        entry.records.append(record)
        if group is None:
            entry.note_survivors(self.annotations)
            self.undo_stack.push(entry)
        self._annotations_written()
        brush_past(self.layers.annotations, max(ids))
        return ids

    def _top_recorded(self) -> int:
        """The largest id the records give an object (one deleted by hand since included);
        records of other shapes (a file edited by hand or by another tool) are passed over."""
        ids = [
            i
            for record in self.records
            if isinstance(record, dict) and isinstance(record.get("ids"), list)
            for i in record["ids"]
            if isinstance(i, int) and not isinstance(i, bool)
        ]
        return max(ids, default=0)

    def undo(self) -> UndoEntry | None:
        """Revert the last commit, automatic segmentation or loaded file; returns its entry
        (a commit's holds its prompts), None when there is none."""
        entry = self.undo_stack.pop()
        if entry is None:
            return None
        entry.restore(self.annotations)
        undone = {id(record) for record in entry.records}
        self.records = [record for record in self.records if id(record) not in undone]
        if entry.records_before is not None:  # a file loaded: the records it replaced
            self.records = entry.records_before
        self._annotations_written()
        return entry

    def _annotations_written(self) -> None:
        """The annotations changed by a write of the widget's (a commit, an undo, automatic
        segmentation, a loaded file), which napari's undo history of the layer does not
        hold: its strokes from before are dropped, else Ctrl+Z put a stroke's old pixels
        back over the objects written since (and the autosave wrote that)."""
        annotations = self.layers.annotations
        # napari's own, since 0.4; on the layer itself: through the proxy napari hands a
        # plugin opened from its menu, a private name warned at every commit
        reset = getattr(unproxied(annotations), "_reset_history", None)
        if reset is not None:
            reset()
        annotations.refresh()

    def clear(self, planes: list | None = None) -> None:
        """Remove every prompt and empty the preview (``planes``: those it shows, if known)."""
        self.layers.clear_prompts()
        self.layers.clear_preview(planes)

    def remove_helpers(self, including_empty_annotations: bool = False) -> None:
        """Remove the prompt and preview layers; annotations stay unless asked and empty."""
        self.layers.remove_helpers()
        annotations = self.layers.annotations
        if including_empty_annotations and not annotations.data.any():
            if annotations in self.viewer.layers:
                self.viewer.layers.remove(annotations)
