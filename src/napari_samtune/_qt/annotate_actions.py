"""What the annotation widget's buttons and keys do: commit, clear, undo, polarity,
propagation through planes, automatic segmentation, saving and loading.

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``ui``, ``runner``, ``session`` and ``segmenter``), kept apart so each module stays short.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QFileDialog

from napari_samtune._qt import annotate_jobs as jobs
from napari_samtune._qt.annotate_jobs import AUTO_TASK, PROPAGATE_TASK, SAVE_TASK
from napari_samtune._qt.annotate_session import (
    automatic_note,
    behind_note,
    commit_note,
    plane_ranges,
    propagation_note,
)
from napari_samtune._qt.annotate_ui import BATCHED_MODE, SCOPE_STACK
from napari_samtune._qt.prompt_layers import PlanePrompts, PropagatedPlane
from napari_samtune._qt.propagate import PropagationConfig, prompts_from_mask
from napari_samtune._qt.workers import main_window_of, user_message
from napari_samtune.core.annotation_files import (
    annotation_paths,
    default_annotation_folder,
    save_annotations,
)
from napari_samtune.core.automatic import AutoSegmentConfig, default_auto_config
from napari_samtune.core.label_files import LABELS_SUFFIX

# autosaves first; any label TIFF too, e.g. `samtune segment` output (<image>_labels.tif)
LOAD_FILTERS = f"Annotations (*{LABELS_SUFFIX});;Label images (*.tif *.tiff)"


class AnnotateActionsMixin:
    """Commit / undo / automatic / propagate / save actions of the annotation widget."""

    _auto_defaults = AutoSegmentConfig()  # the defaults the automatic controls show

    def _ready_for_job(self, what: str) -> bool:
        if self.session is None:
            show_error(f"cannot {what}: open an image in napari and pick it under Image")
            return False
        if self.segmenter is None:
            show_error(f"cannot {what}: load a model first (Model > Load model)")
            return False
        if self.segmenter_busy():
            show_info(f"cannot {what} yet: wait for the running job to finish")
            return False
        return True

    # -- prompts --------------------------------------------------------------------------
    def toggle_polarity(self) -> None:
        """Switch new points (and, in select mode, the selected ones) between + and -."""
        self.ui.positive_check.setChecked(not self.ui.positive_check.isChecked())

    def _on_positive_toggled(self, positive: bool) -> None:
        self._set_positive_mode(positive)
        self.ui.status_label.setText(f"new points are {'positive' if positive else 'negative'}")

    def _set_positive_mode(self, positive: bool) -> None:
        if self.session is not None and self.session.layers.set_positive_mode(positive):
            self.update_preview()  # selected points changed polarity

    def clear(self) -> None:
        """Remove all prompts and the preview (Shift+C)."""
        if self.session is None:
            return
        if self.runner.is_running(PROPAGATE_TASK):
            show_info("wait for the propagation to finish, then clear its preview (Shift+C)")
            return
        self.session.clear()
        self._previews_behind.clear()

    # -- commit / undo --------------------------------------------------------------------
    def commit(self) -> list[int]:
        """Write the preview into the annotations as new object(s) (C); returns the new ids."""
        if self.session is None:
            show_info("nothing to commit: pick an image and add prompts first")
            return []
        if self.runner.is_running(PROPAGATE_TASK):
            show_info("wait for the propagation to finish, then commit")
            return []
        if self._previews_behind:  # it would write a mask without the latest prompts
            show_info(behind_note(sorted(self._previews_behind)))
            return []
        source = "batched" if self.ui.mode_combo.currentText() == BATCHED_MODE else "interactive"
        overwrite = self.ui.overwrite_check.isChecked()
        planes = self.session.layers.preview_planes()
        ids = self.session.commit(overwrite, source, self.model_name or "")
        if not ids:
            show_info(
                "nothing to commit: the preview is empty"
                + ("" if overwrite else " or covers only existing objects (tick overwrite)")
            )
            return []
        self.ui.status_label.setText(f"committed object(s) {ids}")
        note = commit_note(planes, self.current_plane, one_object=source == "interactive")
        if note:
            show_info(note)
        self._autosave()
        return ids

    def undo(self) -> bool:
        """Revert the last commit, automatic segmentation or loaded file (U)."""
        if self.session is None:
            return False
        if self.runner.is_running(AUTO_TASK):
            show_info("wait for the automatic segmentation to finish, then undo it (U)")
            return False
        if not self.session.undo():
            show_info("nothing to undo")
            return False
        self.ui.status_label.setText("undid the last change")
        self._autosave()
        return True

    # -- stacks ---------------------------------------------------------------------------
    def propagate(self):
        """Carry the preview object of the plane in view through the neighbouring planes.

        Uses each plane's mask (bounding box + most interior point) to prompt the next;
        stops where the object vanishes or its area changes more than the chosen factor.
        Results land in the preview; commit (C) writes the 3D object. Returns the worker.
        """
        if not self._ready_for_job("propagate"):
            return None
        if not self.session.axes.is_stack:
            show_error("propagation needs a stack (Z, H, W): this image is 2D")
            return None
        if self.session.axes.n_planes < 2:
            show_error("propagation needs a stack of 2 or more planes: this one has 1")
            return None
        plane = self.current_plane
        preview = self.session.layers.preview_plane(plane)
        ids = np.unique(preview[preview > 0])
        if len(ids) != 1:
            show_error(
                "propagation needs exactly one object in the preview of this plane: "
                "segment it with points or a box in 'one object' mode first"
            )
            return None
        config = PropagationConfig(max_area_ratio=self.ui.area_ratio_spin.value())
        self.session.layers.clear_propagated(keep=plane)  # this run says which planes it reaches
        return self._start_segmenter_job(
            PROPAGATE_TASK,
            jobs.iter_propagate_object,
            plane,
            preview > 0,
            config,
            on_yield=lambda result: self._show_propagated(result, plane, config),
        )

    def _show_propagated(
        self,
        result: jobs.PlaneResult | jobs.PropagationEnd,
        start: int,
        config: PropagationConfig,
    ) -> None:
        if isinstance(result, jobs.PropagationEnd):  # the status line is gone with the job
            n_planes, ratio = self.session.axes.n_planes, config.max_area_ratio
            show_info(
                propagation_note(start, list(result.planes), n_planes, ratio, config.max_planes)
            )
            return
        layers = self.session.layers
        layers.set_preview(result.plane, result.labels)
        point_rc, box_rc = prompts_from_mask(result.labels > 0, box_margin=0.0)
        prompts = PlanePrompts(point_rc[None], np.ones(1, bool), box_rc[None])
        layers.propagated[result.plane] = PropagatedPlane(result.labels, prompts)

    # -- automatic ------------------------------------------------------------------------
    def auto_config(self) -> AutoSegmentConfig:
        """The automatic-segmentation settings chosen in the widget."""
        ui = self.ui
        return replace(
            self._auto_defaults,
            points_per_side=int(ui.points_per_side_spin.value()),
            pred_iou_thresh=float(ui.iou_spin.value()),
            stability_score_thresh=float(ui.stability_spin.value()),
            min_area=int(ui.min_area_spin.value()),
        )

    def _use_auto_defaults_of(self, img_size: int) -> None:
        """Show the automatic-segmentation defaults of a model with input size ``img_size``
        (nano-sized models need their own); settings the user changed are kept."""
        defaults = default_auto_config(img_size)
        if self.auto_config() == self._auto_defaults:
            self.ui.show_auto_config(defaults)
        self._auto_defaults = defaults

    def segment_automatically(self):
        """Segment the plane in view (or every plane) into new objects; returns the worker."""
        if not self._ready_for_job("segment automatically"):
            return None
        axes = self.session.axes
        whole_stack = axes.is_stack and self.ui.auto_scope_combo.currentText() == SCOPE_STACK
        planes = list(range(axes.n_planes)) if whole_stack else [self.current_plane]
        session, group = self.session, self.session.begin_group()
        overwrite, model_name = self.ui.overwrite_check.isChecked(), self.model_name
        counts: list[tuple[int, int]] = []  # per plane written: (objects found, objects added)
        written: list[int | None] = []

        def write(result) -> None:  # by the model that started, also if another is chosen
            objects = {result.plane: result.labels}
            ids = session.add_labels(objects, overwrite, "automatic", model_name, group)
            counts.append((len(np.unique(result.labels[result.labels > 0])), len(ids)))
            written.append(result.plane)
            self.ui.status_label.setText(f"automatic: {len(ids)} objects")

        def done() -> None:
            session.end_group(group)
            if counts:  # the status line is gone with the job: a zero would go unseen
                found, added = np.sum(counts, axis=0)
                show_info(automatic_note(int(found), int(added), overwrite))
            if session is self.session:
                self._autosave()
            elif written:  # another image came meanwhile: its autosave would not save these
                self._save_left_behind(session, written)

        return self._start_segmenter_job(
            AUTO_TASK,
            jobs.iter_segment_automatically,
            planes,
            self.auto_config(),
            self.runner.report,
            on_yield=write,
            on_return=self._on_embedded,
            on_finish=done,
            labels_result=True,
        )

    def _save_left_behind(self, session, planes: list[int | None]) -> None:
        """Save the annotations of ``session``, an image no longer chosen, that automatic
        segmentation wrote on ``planes`` before another image was chosen."""
        if not self.ui.autosave_check.isChecked():
            return
        name = session.image_layer.name
        what = f"the objects found in {name!r}"
        if None not in planes:
            where = ("plane " if len(planes) == 1 else "planes ") + plane_ranges(planes)
            what = f"the objects found on {where} of {name!r}"
        try:
            labels_path, _ = session.save(self.annotation_folder())
        except (OSError, ValueError) as err:
            show_error(f"saving {what} failed: {user_message(err)}")
            return
        show_info(f"{what} are kept and saved to {labels_path}")

    # -- files ----------------------------------------------------------------------------
    def annotation_folder(self) -> Path:
        """The folder annotations are saved to (the widget's folder field)."""
        text = self.ui.folder_edit.text().strip()
        return Path(text).expanduser() if text else default_annotation_folder()

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
        autosave failed, they are saved there now)."""
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
        elif self._save_failed is self.session:  # on no disk yet: the error said to do this
            self._autosave()

    def _restore_autosave(self, labels: bool = True) -> None:
        """Load this image's autosave: the labels and their object records, or (``labels``
        False: its annotations layer is still there, and holds the labels) the records."""
        folder, name = self.annotation_folder(), self.session.image_name
        file_name = self.session.file_name(folder)
        if file_name != name and labels:  # said once, when the image is first annotated
            show_warning(self.session.namesake_note(annotation_paths(folder, name)[0], file_name))
        labels_path, _ = annotation_paths(folder, file_name)
        if not labels_path.is_file():
            return
        try:
            self._load_saved(labels_path, labels)
        except (ValueError, OSError) as err:
            self._restore_failed(labels_path, user_message(err), labels)

    def _load_saved(self, labels_path: Path, labels: bool) -> None:
        if not labels:
            self.session.load_records(labels_path)
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

    def save_annotations(self, folder: str | Path | None = None) -> Path | None:
        """Save labels and prompts now (synchronously); returns the labels path."""
        if self.session is None:
            show_info("nothing to save: pick an image first")
            return None
        folder = self.annotation_folder() if folder in (None, False) else Path(folder)
        try:
            labels_path, _ = self.session.save(folder)
        except (OSError, ValueError) as err:
            show_error(f"saving failed: {user_message(err)}")
            return None
        self.annotations_saved.emit(str(labels_path))
        show_info(f"saved annotations to {labels_path}")
        return labels_path

    def _on_painted(self, event=None) -> None:
        """A brush, fill or eraser stroke on the annotations (a person correcting them) is
        autosaved like a commit: once control is back in the event loop, as napari reports
        the stroke before it writes it into the data."""
        QTimer.singleShot(0, self._autosave)

    def _autosave(self):
        """Save a snapshot in the background, atomically; coalesces overlapping requests."""
        if self.session is None or not self.ui.autosave_check.isChecked():
            return None
        if self.runner.is_running(SAVE_TASK):
            self._autosave_again = True
            return None
        self._autosave_again = False
        session, folder = self.session, self.annotation_folder()
        window = main_window_of(self)
        if window is not None:  # see eventFilter (installing it again changes nothing)
            window.installEventFilter(self)
        return self.runner.start(
            SAVE_TASK,
            save_annotations,
            folder,
            session.image_layer.name,
            session.annotations.copy(),  # the worker must not read labels being edited
            session.document(),
            session.file_name(folder),
            on_return=lambda paths: self._autosaved(session, paths[0]),
            on_error=lambda _exc: setattr(self, "_save_failed", session),
            on_finish=lambda: self._autosave() if self._autosave_again else None,
            quiet=True,  # the status line keeps what was committed
        )

    def _autosaved(self, session, labels_path: Path) -> None:
        if self._save_failed is session:  # the error was said: so is that it is over
            self._save_failed = None
            show_info(f"saved annotations to {labels_path}")
        self.annotations_saved.emit(str(labels_path))

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.Close:  # the viewer's window
            self.flush_autosave()
        return super().eventFilter(watched, event)

    def flush_autosave(self) -> None:
        """Before the viewer closes: wait for a running background save (without the event
        loop, which a closing window may not get back), then write the commits that came
        after it, which would otherwise be lost."""
        if not self.runner.is_running(SAVE_TASK):
            return
        self.runner.wait(SAVE_TASK)
        self.runner.forget(SAVE_TASK)
        if self._autosave_again and self.session is not None:
            self._autosave_again = False
            try:
                self.session.save(self.annotation_folder())
            except (OSError, ValueError) as err:
                show_error(f"saving failed: {user_message(err)}")

    def load_annotations(self, path: str | Path | None = None) -> int | None:
        """Replace the annotations with a saved ``*.labels.tif`` or any label TIFF of the
        image's shape (e.g. from ``samtune segment``); returns its object count."""
        if self.session is None:
            show_info("pick the image these annotations belong to first")
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Annotations", str(self.annotation_folder()), LOAD_FILTERS
            )
            if not path:
                return None
        try:
            n_objects = self.session.load(path, undoable=True)
        except (OSError, ValueError) as err:
            show_error(f"loading annotations failed: {user_message(err)}")
            return None
        show_info(f"loaded {n_objects} objects from {path} (U brings back what they replaced)")
        return n_objects
