"""Propagation of the annotation widget: carry the preview object of the plane in view
through the neighbouring planes of a stack (the rule: :mod:`.propagate`), its results shown
in the image's preview, also while another image is chosen.

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``ui``, ``session``, ``viewer`` and its segmenter jobs), kept apart so each module stays
short.
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_info

from napari_samtune._qt import annotate_jobs as jobs
from napari_samtune._qt.annotate_jobs import PROPAGATE_TASK
from napari_samtune._qt.annotate_notes import propagation_note, stopped_propagation_note
from napari_samtune._qt.prompt_layers import PlanePrompts, planes_of
from napari_samtune._qt.propagate import PropagationConfig, planes_past, prompts_from_mask
from napari_samtune._qt.propagated_planes import PropagatedPlane


class AnnotatePropagationMixin:
    """Propagate (and what keeps its results apart from other prompts) of the widget."""

    _propagation = None  # while one runs: (its session, start plane, the planes kept out)

    def propagate(self):
        """Carry the preview object of the plane in view through the neighbouring planes.

        Uses each plane's mask (bounding box + most interior point) to prompt the next;
        stops where the object vanishes or its area changes more than the chosen factor from
        the plane before.
        Results land in the preview of the image, also while another one is chosen (they
        are there when it is chosen again); commit (C) writes the 3D object. Returns the
        worker.
        """
        if not self._ready_for_job("propagate"):
            return None
        if not self.session.axes.is_stack:
            show_error("propagation needs a stack (Z, H, W): this image is 2D")
            return None
        if self.session.axes.n_planes < 2:
            show_error("propagation needs a stack of 2 or more planes: this one has 1")
            return None
        if not self.session.shows_plane(self.viewer.dims.point):
            show_info(f"no plane is in view to propagate from: {self._planes_hint()}")
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
        session, propagated = self.session, self.session.layers.propagated
        same_object = plane in propagated or plane in propagated.starts
        keep_out = _other_objects_planes(session.layers, plane)  # grows as the person prompts
        session.layers.clear_propagated(keep=plane)  # this run says which planes it reaches
        propagated.starts = (propagated.starts if same_object else set()) | {plane}
        self._job_session = session  # chosen again while it runs: see set_image_layer
        self._propagation = (session, plane, keep_out)

        ended = []  # a PropagationEnd, which a stopped run does not send

        def show(result) -> None:
            if isinstance(result, jobs.PropagationEnd):
                ended.append(result)
            self._show_propagated(result, session, plane, config, keep_out)

        def finish() -> None:
            self._job_session = self._propagation = None
            if self._stopped and not ended:  # Stop said only "stopped"
                show_info(stopped_propagation_note(plane, sorted(set(propagated) - {plane})))

        return self._start_segmenter_job(
            PROPAGATE_TASK,
            jobs.iter_propagate_object,
            plane,
            preview > 0,
            config,
            keep_out,  # read by the worker before each plane
            on_yield=show,
            on_finish=finish,
            keep_away=True,
        )

    def _keep_propagation_out(self) -> None:
        """A plane prompted while propagation runs, not reached yet, holds another object's
        prompts: the run keeps out of it, as of those prompted before it started (it went in,
        took the prompts for corrections of its object, and the plane ended up empty)."""
        if self._propagation is not None and self._propagation[0] is self.session:
            session, start, keep_out = self._propagation
            keep_out.update(_other_objects_planes(session.layers, start))

    def _other_objects_beside_propagated(self) -> set[int]:
        """The planes of another object's prompts beside a propagated object in the preview
        (those its propagation kept out of, or prompted since), which commit leaves for a
        commit of their own: C wrote them into the propagated object, as one."""
        propagated = self.session.layers.propagated
        if not propagated or not propagated.starts:
            return set()
        return _other_objects_planes(self.session.layers, min(propagated.starts))

    def _show_propagated(
        self,
        result: jobs.PlaneResult | jobs.PropagationEnd,
        session,
        start: int,
        config: PropagationConfig,
        keep_out: set[int],
    ) -> None:
        """Show ``result`` in the preview of ``session``, chosen or not; not a plane the run
        reached before it was kept out of a plane on its way (prompted meanwhile)."""
        if isinstance(result, jobs.PropagationEnd):  # the status line is gone with the job
            n_planes, ratio = session.axes.n_planes, config.max_area_ratio
            planes = [p for p in result.planes if not _past_kept_out(p, start, keep_out)]
            kept_out = [p for p in planes_past(start, planes) if p in keep_out]
            note = propagation_note(
                start, planes, n_planes, ratio, config.max_planes, tuple(kept_out)
            )
            if session is not self.session:
                note += f" (in the preview of {session.image_layer.name!r}: pick it under Image)"
            show_info(note)
            return
        if _past_kept_out(result.plane, start, keep_out):
            return
        layers = session.layers
        # another image's layers, the 3D view or planes along another axis may show it
        shown = session is not self.session or not self._viewing_planes()
        shown = shown or result.plane == self.current_plane
        layers.set_preview(result.plane, result.labels, redraw=shown)
        point_rc, box_rc = prompts_from_mask(result.labels > 0, box_margin=0.0)
        prompts = PlanePrompts(point_rc[None], np.ones(1, bool), box_rc[None])
        layers.propagated[result.plane] = PropagatedPlane(result.labels, prompts)


def _other_objects_planes(layers, start: int) -> set[int]:
    """Planes other than ``start`` whose prompts segment an object of their own: not those
    refining a plane an earlier propagation reached (a correction there is of that object,
    and the new run's mask takes it), nor, for a run from a plane of that object, the planes
    its runs started from. Propagation keeps out of them, which it used to enter, replacing
    their preview and taking their prompts for corrections of its object."""
    propagated = layers.propagated
    own = {start, *propagated}
    if start in propagated or start in propagated.starts:
        own |= propagated.starts
    coords = [np.asarray(layers.points.data).reshape(-1, layers.ndim)]
    coords += [np.asarray(vertices)[:1] for vertices in layers.boxes.data]  # a box's plane
    candidates = set(planes_of(np.concatenate(coords)).tolist()) - own
    return {p for p in candidates if not layers.prompts(p).is_empty}


def _past_kept_out(plane: int, start: int, keep_out: set[int]) -> bool:
    """Whether ``plane`` lies at or beyond a plane of ``keep_out`` seen from ``start``: a
    plane the worker reached before it was told to keep out of one on its way."""
    return any(
        (kept - start) * (plane - start) > 0 and abs(kept - start) <= abs(plane - start)
        for kept in keep_out
    )
