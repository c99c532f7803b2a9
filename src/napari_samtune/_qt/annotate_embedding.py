"""The annotation widget's embeddings and the background jobs that use its Segmenter.

A mixin of :class:`napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``segmenter``, ``session``, ``runner`` and ``ui``). The Segmenter holds the embedding of one
plane at a time; a *generation* counts changes of model, image or channels, so results a
job computed for an earlier one are recognised and dropped (or, for objects found, kept).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from napari.utils.notifications import show_info, show_warning

from napari_samtune._qt import annotate_jobs as jobs
from napari_samtune._qt.annotate_jobs import EMBED_TASK, PROPAGATE_TASK, SEGMENTER_TASKS
from napari_samtune._qt.annotate_notes import planes_phrase
from napari_samtune._qt.annotate_session import RemovedImage
from napari_samtune._qt.annotate_ui import BATCHED_MODE
from napari_samtune._qt.preview_basis import made_under, next_basis, record_made_under
from napari_samtune._qt.prompt_layers import PlanePrompts, propagated_in
from napari_samtune.core.coords import napari_to_sam


class AnnotateEmbeddingMixin:
    """Embedding the plane in view (or all planes), predicting from prompts and running
    Segmenter jobs."""

    @property
    def current_plane(self) -> int | None:
        """The plane in view (None for a 2D image or when no image is chosen)."""
        return None if self.session is None else self.session.plane_at(self.viewer.dims.point)

    @property
    def embedded_plane(self):
        """The plane whose embedding the Segmenter holds: int, None (2D), or False (none)."""
        if self._embedded is None or self._embedded[0] != self._generation:
            return False
        return self._embedded[1]

    def is_embedded(self, plane: int | None) -> bool:
        """Whether predictions for ``plane`` can run now (its embedding is loaded)."""
        return self.embedded_plane is not False and self.embedded_plane == plane

    def segmenter_busy(self) -> bool:
        """Whether a background job is using the Segmenter."""
        return any(self.runner.is_running(task) for task in SEGMENTER_TASKS)

    def _invalidate_embedding(self) -> None:
        self._generation += 1
        self._embedded = None

    def _previews_went_stale(self) -> None:
        """Another model, other channels or new pixels: the previews segmented from prompts
        show what the model saw before, so they lag their prompts (commit refuses them,
        saying so) until they are segmented again, when their plane's embedding is ready.
        After another model (:meth:`_another_model`) those of the images not chosen now are
        found so when chosen again."""
        if self.session is None:
            return
        layers = self.session.layers
        # the model's number, and one of this image's pixels and channels: U compares both
        record_made_under(layers.preview, (self._preview_basis, next_basis()))
        self._drop_uncorrected_propagation()
        for plane in layers.preview_planes():
            if not layers.prompts(plane).is_empty:
                self._previews_behind.add(plane)

    def _another_model(self) -> None:
        """Every image's previews were made by the model before: the chosen image's lag
        their prompts now, the others' once chosen (other channels or pixels are one
        image's, and go through :meth:`_previews_went_stale` alone)."""
        self._preview_basis = next_basis()
        self._previews_went_stale()

    def _take_up_previews(self) -> None:
        """The image just chosen: its previews lag where they lagged when it was left, and
        all of them where they were made under another model, channels or pixels (chosen
        again after a model was loaded for another image, they were committed as the new
        model's work)."""
        layers = self.session.layers
        behind, *_ = self._behind_left.pop(layers.preview, (frozenset(),))
        made = made_under(layers.preview)  # (model, pixels and channels), or None: new layers
        stale = made is None or made[0] != self._preview_basis
        if not (behind or stale):  # nothing to check: the preview (a whole stack) unread
            return
        shown = layers.preview_planes()
        self._previews_behind |= behind & set(shown)
        if stale and shown:
            self._previews_went_stale()  # (records the pair)
        elif stale:
            record_made_under(layers.preview, (self._preview_basis, next_basis()))

    def _leave_previews(self) -> None:
        """The image is left: the planes whose preview lags are kept for its return."""
        layer = self.session.image_layer  # its name when asked (renamed since), else this one
        left = (frozenset(self._previews_behind), held_weakly(layer), layer.name)
        self._behind_left[self.session.layers.preview] = left

    def held_propagation(self) -> list[str]:
        """The images whose propagated planes, not committed nor corrected (see
        :meth:`_drop_uncorrected_propagation`), another model would clear (the chosen one's
        now, another's once chosen again), or where a propagation runs that it would stop."""
        held = []
        if self.runner.is_running(PROPAGATE_TASK) and self._job_session is not None:
            held.append(self._job_session.image_layer.name)
        for preview, (_, image, name) in list(self._behind_left.items()):  # the images left
            if preview in self.viewer.layers and propagated_in(preview):
                held.append(name if image() is None else image().name)
        layers = None if self.session is None else self.session.layers
        if layers is not None and any(layers.prompts(p).is_empty for p in layers.propagated):
            held.append(self.session.image_layer.name)
        return list(dict.fromkeys(held))

    def _drop_uncorrected_propagation(self) -> None:
        """Empty the planes whose preview is a finished propagation's own mask, made with
        the model or pixels before: committed, it would be recorded as the new model's work.
        Planes corrected with prompts keep propagation's prompts and are segmented again."""
        layers = self.session.layers
        planes = sorted(p for p in layers.propagated if layers.prompts(p).is_empty)
        for plane in planes:
            del layers.propagated[plane]
            layers.set_preview(plane, None)
        if planes:
            where = planes_phrase(planes)
            show_info(
                f"cleared the propagated object on {where}: the model or the image changed "
                "since it was propagated; propagate it again (or prompt those planes)"
            )

    def _on_plane_changed(self, event=None) -> None:
        if self.session is not None and self.session.axes.is_stack:
            self._failed_embedding = None  # a plane viewed again is tried again
            self._ensure_embedding()

    def _ensure_embedding(self):
        """Start embedding the plane in view unless it is ready, a job is running, or its
        embedding failed (an all-NaN plane, say): that is told once, not retried after
        every job for ever, until the view moves or the model, image or channels change."""
        if self.segmenter is None or self.session is None or self.segmenter_busy():
            return None
        if not self.session.shows_plane(self.viewer.dims.point):  # the slider past its planes
            return None
        plane = self.current_plane
        attempt = (self._generation, plane)
        if self.is_embedded(plane) or self._failed_embedding == attempt:
            return None

        def failed(error: BaseException) -> None:
            self._failed_embedding = attempt

        return self._start_segmenter_job(
            EMBED_TASK,
            jobs.iter_embed_planes,
            [plane],
            self.runner.report,
            on_return=self._on_embedded,
            on_error=failed,
        )

    def embed_all_planes(self):
        """Embed (and cache on disk) every plane in the background; returns the worker."""
        if not self._ready_for_job("embed all planes"):
            return None
        planes = list(range(self.session.axes.n_planes)) if self.session.axes.is_stack else [None]
        skipped, image, session = [], self.session.image_layer.name, self.session

        def done() -> None:  # a padding plane without pixels does not stop the others
            if skipped:
                show_warning(jobs.skipped_note(EMBED_TASK, image, skipped))

        worker = self._start_segmenter_job(
            EMBED_TASK,
            jobs.iter_embed_planes,
            planes,
            self.runner.report,
            on_return=self._on_embedded,
            on_yield=skipped.append,
            on_finish=done,
        )
        self._embedding_all = (weakref.ref(session), weakref.ref(worker))
        return worker

    def stop_embedding_removed(self, layer) -> None:
        """``layer`` was removed: stop Embed all planes where it embeds that image. It went
        on to the last plane of a stack no longer there, while the image chosen next waited
        for it (minutes with a large model)."""
        session, worker = (ref() for ref in self._embedding_all)
        if session is None or session.image_layer is not layer:
            return
        running = self.runner.worker(EMBED_TASK)  # (another embedding may run by now)
        if running is not None and running is worker:
            self.runner.cancel(EMBED_TASK)
            show_info(
                f"stopped embedding the planes of {layer.name!r}: the image was removed (the "
                "planes embedded so far stay in the embedding cache)"
            )

    def _embed_views(self, plane: int | None, views: tuple) -> bool:
        """Embed in the background the views (:class:`~napari_samtune.core.embeddings.Tile`)
        that the prompts of ``plane`` need; its preview follows when they are ready. Views
        whose embedding failed are not tried again until the model, image or channels
        change. Returns False: the preview waits."""
        attempt = (self._generation, plane, views)
        if self._failed_embedding == attempt or self.segmenter_busy():
            return False

        def failed(error: BaseException) -> None:
            self._failed_embedding = attempt

        self._start_segmenter_job(
            EMBED_TASK,
            jobs.embed_views_job,
            plane,
            views,
            self.runner.report,
            on_return=self._on_embedded,
            on_error=failed,
        )
        return False

    def _predict(self, prompts: PlanePrompts) -> np.ndarray:
        """uint32 (H, W) preview labels from one plane's prompts (napari -> SAM coordinates)."""
        boxes_xyxy = napari_to_sam(prompts.boxes_rc.reshape(-1, 2, 2)).reshape(-1, 4)
        points_xy = napari_to_sam(prompts.points_rc)
        if self.ui.mode_combo.currentText() == BATCHED_MODE:
            negatives_xy = points_xy[~prompts.positive]
            if len(negatives_xy):
                return self._predict_each(boxes_xyxy, points_xy[prompts.positive], negatives_xy)
            return self._predict_batched(boxes_xyxy, points_xy[prompts.positive])
        prediction = self.click_chain.predict(  # each click refines the mask before it
            self.segmenter,
            points_xy if len(points_xy) else None,
            prompts.positive.astype(np.int64) if len(points_xy) else None,
            boxes_xyxy[-1] if len(boxes_xyxy) else None,  # the newest box
        )
        return prediction.mask.astype(np.uint32)

    def _predict_batched(self, boxes_xyxy: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
        """Batched mode: box ``i`` is object ``i + 1``, then the points; where a box's object
        and a point's overlap, the box's keeps the pixels (among boxes, and among points,
        the larger logit wins)."""
        labels = np.zeros(self.segmenter.image_shape, dtype=np.uint32)
        if len(boxes_xyxy):
            labels = self.segmenter.predict_boxes(boxes_xyxy)
        if len(points_xy):
            by_point = self.segmenter.predict_points_batched(points_xy)
            _boxes_first(labels, by_point, len(boxes_xyxy))
        return labels

    def _predict_each(
        self, boxes_xyxy: np.ndarray, points_xy: np.ndarray, negatives_xy: np.ndarray
    ) -> np.ndarray:
        """Batched mode with negative points: each box and each positive point is prompted
        with the negative points in its view too (they mark background for all objects, as
        in ``samtune segment``); ids and overlaps as in :meth:`_predict_batched` (a negative
        point far from both took half a box's object for a point's)."""
        none = np.zeros((0, 2))
        predict = self.segmenter.predict_with_negatives
        labels = predict(boxes_xyxy, none, negatives_xy)
        if len(points_xy):
            by_point = predict(np.zeros((0, 4)), points_xy, negatives_xy)
            _boxes_first(labels, by_point, len(boxes_xyxy))
        return labels

    def _on_embedded(self, plane) -> None:
        self._embedded = (self._generation, plane)
        if self.segmenter is not None and self.segmenter.image_is_blank:  # previews stay empty
            where = jobs.place_of(self.session.axes, plane, self.session.image_layer.name)
            show_warning(
                f"{where} is one value everywhere (blank) as SAM sees it, so prompts on it "
                "give no masks; check the image, and the channel chosen"
            )
        self.embedding_ready.emit(plane)

    def _start_segmenter_job(
        self,
        name: str,
        job,
        *args,
        on_return=None,
        on_yield=None,
        on_finish=None,
        on_error=None,
        labels_result: bool = False,
        keep_away: bool = False,
    ):
        """Run ``job(segmenter, axes, data, *args, image_name=...)``, the image layer's name
        for its messages. Results for another image are dropped, and so are those of a
        stale generation (model or channels changed since), unless
        they are ``labels_result`` (objects found, still valid for the image), or, with
        ``keep_away``, their image's layers are all still there (its annotations layer for
        ``labels_result``) and it is read as it was, by the same model (any model for
        ``labels_result``), though another image was
        chosen meanwhile (its session is resumed when it is chosen again); the user is told
        when yielded results are dropped."""
        generation, session = self._generation, self.session
        segmenter, axes = self.segmenter, session.axes
        data = held_weakly(session.image_layer.data)  # a finished job's closures may linger
        self._embedded = None  # the job changes the Segmenter's image
        dropped: dict[str, list] = {}  # why -> the planes (or other results) dropped for it

        def still_valid(any_model: bool) -> bool:
            if isinstance(session.image_layer, RemovedImage):
                return False  # removed from the viewer: its pixels are gone
            same_image = session.axes == axes and session.image_layer.data is data()
            same_model = any_model or self.segmenter is segmenter
            now = self.session
            if now not in (None, session) and now.image_layer == session.image_layer:
                return False  # the image has a new session: read another way, new layers
            # objects found go into the annotations layer only; other results need them all
            there = self._annotations_there if any_model else self._layers_all_there
            return same_model and same_image and there(session)

        def current(callback, is_result: bool = False):
            keep_stale = is_result and labels_result  # embeddings are of the old Segmenter

            def guarded(value):
                if callback is None:
                    return
                if (
                    keep_stale
                    and session is self.session
                    and session.image_layer.data is not data()
                ):
                    # objects found in the pixels before: the rest of the run is moot too
                    dropped.setdefault("the image got new pixels while it ran", []).append(value)
                    self.runner.cancel(name)
                elif session is self.session and (keep_stale or generation == self._generation):
                    callback(value)
                elif is_result and keep_away and still_valid(keep_stale):
                    callback(value)  # only other images were chosen meanwhile
                elif is_result:
                    dropped.setdefault(self._why_dropped(session), []).append(value)
                    if isinstance(session.image_layer, RemovedImage):
                        self.runner.cancel(name)  # its next results would go too

            return guarded

        def finish() -> None:
            for why, results in dropped.items():
                show_info(dropped_note(name, session.image_layer.name, results, why))
            self._after_segmenter_job(on_finish)

        stop = threading.Event()  # set by runner.cancel: checked between tiles and batches
        worker = self.runner.start(
            name,
            job,
            self.segmenter,
            session.axes,
            session.image_layer.data,
            *args,
            image_name=session.image_layer.name,
            stop=stop,
            on_return=current(on_return),
            on_yield=current(on_yield, is_result=True),
            on_error=on_error,
            on_finish=finish,
            cancel_event=stop,
        )
        self._show_stoppable()
        return worker

    def stop_jobs(self) -> None:
        """Stop: the automatic segmentation, propagation or embedding running ends after
        the tile or batch in work; the planes it finished are kept (automatic objects
        written and saved, propagated planes in the preview to commit)."""
        running = [name for name in SEGMENTER_TASKS if self.runner.is_running(name)]
        for name in running:
            self.runner.cancel(name)
        if running:
            self.ui.status_label.setText(f"stopping {' and '.join(running)}…")
            self._stopped = True  # nothing starts again on its own when it ends
        self.ui.stop_button.setEnabled(False)

    def _stop_jobs_of_the_model_before(self) -> None:
        """Another model was loaded: stop the embedding and the propagation running with
        the one before, whose results are dropped (its embeddings are of no use to the new
        model, and propagated planes are cleared): they ran to their last plane first, and
        the new model's previews waited for them (minutes on a large stack), unsaid. A
        running automatic segmentation goes on: the objects it finds are kept."""
        new = self.model_name
        then = {  # what the new model does next (one job at a time: they share the model)
            EMBED_TASK: f"{new!r} embeds the plane in view next",
            PROPAGATE_TASK: f"propagate the object again with {new!r}",
        }
        for name, next_step in then.items():
            if self.runner.is_running(name):
                self.runner.cancel(name)
                show_info(f"stopped the {name} running with the model before; {next_step}")

    def _show_stoppable(self) -> None:
        self.ui.stop_button.setEnabled(
            any(self.runner.is_running(name) for name in SEGMENTER_TASKS)
        )

    def _why_dropped(self, session) -> str:
        """Why a result a job computed for ``session`` cannot be shown now."""
        if session is self.session:
            return "the model or channels changed while it ran"
        now = self.session
        if now is not None and now.image_layer == session.image_layer:  # its layers redone
            if now.axes.shape != session.axes.shape:
                return "the image got new pixels of another shape while it ran"
            if now.axes.spatial_shape != session.axes.spatial_shape:
                return "'channels on first axis' changed how the image is read while it ran"
        layers = self.viewer.layers
        gone = [ly for ly in (session.image_layer, *session.layers.layers) if ly not in layers]
        if gone:  # a person removed it: the image was left for that (see _on_layer_removed)
            return f"layer {gone[0].name!r} was removed while it ran"
        if now is None or now.image_layer != session.image_layer:
            return "another image was chosen while it ran"
        return "the image was chosen again meanwhile, with new layers"

    def _after_segmenter_job(self, on_finish=None) -> None:
        if on_finish is not None:
            on_finish()
        stopped, self._stopped = self._stopped, False
        if stopped:  # Stop: the plane in view is embedded when a click, C or the view asks
            self.ui.status_label.setText("stopped")
            if self.is_embedded(self.current_plane):  # it was, before Stop took effect:
                self.update_preview(clear_if_empty=False)  # prompts clicked meanwhile
            return
        if self._ensure_embedding() is None and self.is_embedded(self.current_plane):
            self.update_preview(clear_if_empty=False)


def held_weakly(value):
    """A callable returning ``value``: a weak reference where ``value`` takes one (an image's
    pixels, so that what refers to them after the image goes does not keep them)."""
    try:
        return weakref.ref(value)
    except TypeError:
        return lambda: value


def dropped_note(task: str, image: str, results: list, why: str) -> str:
    """What a person is told when ``task``'s ``results`` for image ``image`` are discarded
    (the planes of :class:`~napari_samtune._qt.annotate_jobs.PlaneResult` s named)."""
    planes = sorted({r.plane for r in results if getattr(r, "plane", None) is not None})
    if not planes:  # the image named once ("layer 'img' was removed ... ('img')")
        named = "" if repr(image) in why else f" ({image!r})"
        return f"{task}: results discarded, {why}{named}"
    where = planes_phrase(planes)
    return f"{task}: results discarded, {why} ({where} of {image!r})"


def _boxes_first(labels: np.ndarray, by_point: np.ndarray, n_boxes: int) -> None:
    """Paint the points' objects ``by_point`` (ids from 1) into ``labels`` (the boxes'
    objects) as ids after the boxes', where no box's object is."""
    free = (by_point > 0) & (labels == 0)
    labels[free] = by_point[free] + n_boxes
