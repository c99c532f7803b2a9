"""What the annotation widget's buttons and keys do: commit, clear, undo, polarity,
automatic segmentation (propagation: annotate_propagation; saving and loading:
annotate_files, annotate_saves).

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``ui``, ``runner``, ``session`` and ``segmenter``), kept apart so each module stays short.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, replace

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning

from napari_samtune._qt import annotate_jobs as jobs
from napari_samtune._qt.annotate_jobs import AUTO_TASK, PROPAGATE_TASK
from napari_samtune._qt.annotate_notes import (
    apart_note,
    automatic_note,
    behind_note,
    commit_note,
    covered_note,
    planes_left_note,
)
from napari_samtune._qt.annotate_ui import BATCHED_MODE, SCOPE_STACK
from napari_samtune._qt.kept_prompts import KeptPrompts, has_prompts, snapshot_prompts
from napari_samtune._qt.label_edits import ids_in
from napari_samtune._qt.preview_basis import made_under
from napari_samtune.core.automatic import AutoSegmentConfig, around_taken, default_auto_config

AUTOMATIC_SAVE_S = 60.0  # automatic segmentation of a stack saves its planes this often


class AnnotateActionsMixin:
    """Commit / undo / automatic / propagate actions of the annotation widget."""

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

    def _job_writes_here(self, task: str) -> bool:
        """Whether ``task`` runs and writes into the image annotated now: its preview or
        annotations are the job's until it ends. Other images are annotated meanwhile (a
        commit needs no Segmenter; their previews wait for it to be free)."""
        return self.runner.is_running(task) and self._job_session is self.session

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
        if self._job_writes_here(PROPAGATE_TASK):
            show_info("wait for the propagation to finish, then clear its preview (Shift+C)")
            return
        shown = self.session.layers.preview_planes()  # read once for both
        cleared = snapshot_prompts(self.session.layers, shown)
        with self._prompts_in_flux():
            self.session.clear(shown)
        self._keep_propagation_out()
        self._previews_behind.clear()
        self._prompts_for_undo = None if cleared is None else (self.session, cleared)
        self._undo_top_at_clear = self.session.undo_stack.peek()  # a later change's entry: U's

    # -- commit / undo --------------------------------------------------------------------
    def commit(self) -> list[int]:
        """Write the preview into the annotations as new object(s) (C); returns the new ids."""
        if self.session is None:
            show_info("nothing to commit: pick an image and add prompts first")
            return []
        if self._job_writes_here(PROPAGATE_TASK):
            show_info("wait for the propagation to finish, then commit")
            return []
        if self._waits_for_restore("commit"):
            return []
        if self._previews_behind:  # it would write a mask without the latest prompts
            if self._ensure_embedding() is not None:  # nothing was coming: Stop ended it
                show_info(
                    "not committed yet: the preview does not show your latest prompts (their "
                    "embedding was stopped); embedding the image for them now: commit (C) "
                    "once the preview shows them"
                )
            elif self.viewer.dims.ndisplay == 3:  # no preview is made in 3D: viewing won't do
                show_info(
                    "not committed yet: the preview does not show your latest prompts, and "
                    "the 3D view makes none; switch the viewer to 2D (its 2D/3D button, or "
                    "Ctrl+Y), then commit (C) once the preview shows them"
                )
            else:
                show_info(behind_note(sorted(self._previews_behind)))
            return []
        source = "batched" if self.ui.mode_combo.currentText() == BATCHED_MODE else "interactive"
        overwrite = self.ui.overwrite_check.isChecked()
        layers = self.session.layers
        apart = self._other_objects_beside_propagated()  # left for a commit of their own
        planes = [plane for plane in layers.preview_planes() if plane not in apart]
        present = [ids_in(layers.preview_plane(plane)) for plane in planes]  # read once
        shown = len(set().union(*(ids.tolist() for ids in present)) - {0})
        prompted = has_prompts(layers)
        with self._prompts_in_flux():
            ids = self.session.commit(
                overwrite, source, self.model_name or "", planes, present, alone=bool(apart),
                weights_id=None if self.segmenter is None else self.segmenter.model_id,
            )  # fmt: skip
        # U undoes the commit, not a clear before it; the prompts left by a commit of a
        # propagated object alone are in its snapshot: U puts them back with its own
        self._prompts_for_undo = (self.session, None) if apart and ids else None
        self._keep_propagation_out()
        if not ids:  # the preview empty: the model found nothing at the prompts
            covered = " (tick overwrite to replace them)" if shown and not overwrite else ""
            if shown:
                said = "nothing to commit: the preview covers only existing objects" + covered
            elif not prompted:  # it blamed the model for prompts nobody had given
                said = "nothing to commit: no prompts yet; click an object or draw a box first"
            else:
                said = (
                    "nothing to commit: the preview is empty (the model found no object at "
                    "these prompts): try a box, more points, or another model"
                )
            show_info(said)
            return []
        self.ui.status_label.setText(f"committed object(s) {ids}")
        notes = [
            apart_note(sorted(apart)),
            covered_note(shown, len(ids)),
            planes_left_note(planes, self._planes_written(planes, ids)),
            commit_note(planes, self.current_plane, one_object=source == "interactive"),
        ]
        for note in filter(None, notes):
            show_info(note)
        self._autosave()
        return ids

    def undo(self) -> bool:
        """Step back (U): right after a clear, bring its prompts back; else revert the last
        commit, automatic segmentation or loaded file, and a commit's prompts come back
        unless prompts of the person's own are on the layers."""
        if self.session is None:
            return False
        memo, self._prompts_for_undo = self._prompts_for_undo, None
        mine = memo is not None and memo[0] is self.session  # no prompt changed since
        if mine and memo[1] is not None:  # a clear's
            if self._undo_top_at_clear is self.session.undo_stack.peek():
                self._put_back(memo[1], "brought back the {} cleared")
                return True
            mine, memo = False, None  # an automatic segmentation or a load came after it
        if self._job_writes_here(AUTO_TASK):
            show_info("wait for the automatic segmentation to finish, then undo it (U)")
            return False
        if self._waits_for_restore("undo"):
            return False
        entry = self.session.undo()
        if entry is None:
            show_info("nothing to undo")
            return False
        self.ui.status_label.setText("undid the last change")
        # those on the layers now: none, or what the last U put back (the state before)
        if entry.prompts is not None and (mine or not has_prompts(self.session.layers)):
            self._put_back(entry.prompts, "undid the last commit; its {} are back")
        elif mine:  # the layers still hold what U put back
            self._prompts_for_undo = memo
        elif entry.prompts is not None:  # the person's prompts stay: said, it looked lost
            said = (
                "undid the last commit; its prompts were not put back, as the prompts on the "
                "layers now (another object's) stay: commit (C) or clear (Shift+C) them"
            )
            self.ui.status_label.setText(said)
            show_info(said)
        self._autosave()
        return True

    def _planes_written(self, planes: list, ids: list[int]) -> list:
        """Of the preview's ``planes``, those where the commit's ``ids`` got pixels."""
        if planes == [None]:
            return planes
        annotations = self.session.annotations
        return [plane for plane in planes if np.isin(annotations[plane], ids).any()]

    @contextmanager
    def _prompts_in_flux(self):
        """Prompts replaced in several layer events (U putting them back, a commit or
        Shift+C removing them): each state of the way (points without their labels, no
        boxes yet, a box without its points) was segmented, and replaced the click chain's
        steps, so the prompts' own were computed again (41 decoder passes for 21 clicks
        after U). The caller updates the preview once they are all in place."""
        self._in_flux = True
        try:
            yield
        finally:
            self._in_flux = False

    def _put_back(self, kept: KeptPrompts, said: str) -> None:
        with self._prompts_in_flux():
            kept.put_back(self.session.layers)
        if kept.made_under != made_under(self.session.layers.preview):  # another model's,
            self._previews_went_stale()  # or pixels' (the plane in view is redone below)
        self._keep_propagation_out()
        self.update_preview()
        self._prompts_for_undo = (self.session, None)  # the layers hold what U put back
        n = kept.n_prompts
        self.ui.status_label.setText(said.format(f"{n} prompt{'s' * (n != 1)}"))

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
        """Segment the plane in view (or every plane) into new objects; returns the worker.

        Planes found while another image is chosen go into this image's annotations too
        (saved when the run ends; its session is resumed if it is chosen again meanwhile).
        """
        if not self._ready_for_job("segment automatically"):
            return None
        if self._waits_for_restore("segment automatically"):
            return None
        axes = self.session.axes
        whole_stack = axes.is_stack and self.ui.auto_scope_combo.currentText() == SCOPE_STACK
        if axes.is_stack and not (whole_stack or self._viewing_planes()):
            show_info(
                f"no plane is in view to segment automatically: {self._planes_hint()}; or "
                f"set scope to {SCOPE_STACK!r} to segment every plane"
            )
            return None
        planes = list(range(axes.n_planes)) if whole_stack else [self.current_plane]
        session, group = self.session, self.session.begin_group()
        overwrite, model_name = self.ui.overwrite_check.isChecked(), self.model_name
        config = self.auto_config()
        # in the record, as samtune segment --auto's: the model's weights beside its name
        how = {"weights_id": self.segmenter.model_id, "settings": asdict(config)}
        counts: list[tuple[int, int]] = []  # per plane written: (objects found, objects added)
        written: list[int | None] = []
        skipped: list[jobs.PlaneSkipped] = []

        saved_at = [time.monotonic()]

        def write(result) -> None:  # by the model that started, also if another is chosen
            if isinstance(result, jobs.PlaneSkipped):
                skipped.append(result)
                return
            labels = result.labels
            if not overwrite:  # kept around the objects there as around better ones
                there = session.annotations
                there = there if result.plane is None else there[result.plane]
                labels = around_taken(labels, there != 0, config)
            objects = {result.plane: labels}
            ids = session.add_labels(objects, overwrite, "automatic", model_name, group, how)
            counts.append((len(np.unique(result.labels[result.labels > 0])), len(ids)))
            written.append(result.plane)
            self._automatic_unsaved = (session, written)  # saved if the image goes first
            self.ui.status_label.setText(f"automatic: {len(ids)} objects")
            if time.monotonic() - saved_at[0] >= AUTOMATIC_SAVE_S:  # not only at the end:
                saved_at[0] = time.monotonic()  # a crash lost every plane of a long run
                self._autosave(session)

        def done() -> None:
            self._job_session = None
            session.end_group(group)
            if counts:  # the status line is gone with the job: a zero would go unseen
                found, added = np.sum(counts, axis=0)
                show_info(automatic_note(int(found), int(added), overwrite))
            if skipped:
                show_warning(jobs.skipped_note(AUTO_TASK, session.image_layer.name, skipped))
            if len(planes) > 1 and len(written) + len(skipped) < len(planes):
                kept = "the objects found are kept" if group.writes else "nothing was added"
                if group.writes and session is self.session:  # (else U is not theirs)
                    kept += " (U undoes them all)"  # (where nothing was, an earlier commit)
                show_info(
                    f"automatic segmentation of {session.image_layer.name!r} ended after "
                    f"{len(written) + len(skipped)} of {len(planes)} planes; {kept}"
                )
            if session is self.session:
                self._automatic_unsaved = None
                if group.writes:  # a run that failed or found nothing leaves the files be
                    self._autosave()
            else:  # saved when its image went, unless that save failed or came too soon
                self._save_automatic_so_far()

        self._job_session = session  # chosen again while it runs: see set_image_layer
        return self._start_segmenter_job(
            AUTO_TASK,
            jobs.iter_segment_automatically,
            planes,
            config,
            self.runner.report,
            on_yield=write,
            on_return=self._on_embedded,
            on_finish=done,
            labels_result=True,
            keep_away=True,  # planes found while another image is chosen are written too
        )
