"""The annotation widget's image: choosing it, its layers and following changes to it.

A mixin of :class:`napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``viewer``, ``session``, ``ui`` and the other mixins' embedding and autosave methods). An
:class:`AnnotationSession` holds one image's layers; it is replaced when another image is
chosen or the image is read with other axes, and follows the image when it is moved,
scaled, rotated or given new pixels.
"""

from __future__ import annotations

from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from napari_samtune._qt import layer_names
from napari_samtune._qt.annotate_jobs import AUTO_TASK, PROPAGATE_TASK
from napari_samtune._qt.annotate_notes import found_where
from napari_samtune._qt.annotate_restore import restore_pending
from napari_samtune._qt.annotate_session import AnnotationSession
from napari_samtune._qt.image_planes import describe_image
from napari_samtune._qt.layer_names import ImageMark, layers_of_image, rename_layers
from napari_samtune._qt.layer_placement import follow_placement
from napari_samtune._qt.prompt_layers import PromptLayers, layer_batch
from napari_samtune._qt.proxies import unproxied
from napari_samtune._qt.saved_renames import follow_unkept_rename, taken_notes
from napari_samtune._qt.task_messages import user_message
from napari_samtune.core.label_files import image_fingerprint

SHEARED_NOTE = (
    "{!r} is sheared or rotated across its planes: napari's 2D view shows each plane without "
    "that, and its annotation layers sit as the 2D view shows them, so clicks and brush "
    "strokes land on the plane and pixels shown; in the 3D view they are not sheared"
)


class AnnotateImageMixin:
    """Which image is annotated, read how, with which layers."""

    def _image_layers(self) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_image_choices(self, event=None, attach_now: bool = True) -> None:
        """List the image layers (after one is added, removed or renamed), keeping the one
        annotated chosen under its current name; annotate the one chosen if it changed
        (after the event loop turns unless ``attach_now``)."""
        combo = self.ui.image_combo
        names = [layer.name for layer in self._image_layers()]
        chosen = combo.currentText() if self.session is None else self.session.image_layer.name
        if names == [combo.itemText(i) for i in range(combo.count())] and (
            combo.currentText() == chosen
        ):
            return
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        combo.setCurrentIndex(names.index(chosen) if chosen in names else 0)
        combo.blockSignals(False)
        if attach_now:
            self._attach_chosen()
        else:
            self._attach_soon.start()

    def _attach_chosen(self) -> None:
        if self.session is None or self.image_layer != self.session.image_layer:
            self._on_image_choice()

    def _on_layer_inserted(self, event) -> None:
        event.value.events.name.connect(self._on_layer_renamed)
        if isinstance(event.value, Image):  # renamed, its old name is known (see above)
            self._image_names[event.value] = event.value.name
        self._refresh_image_choices()
        if self.session is not None and event.value not in self.session.layers.layers:
            self._prompt_layers_on_top()

    def _prompt_layers_on_top(self) -> None:
        """Keep the prompts and the preview visible above a layer opened later (e.g. a
        sample's labels, which napari adds after its image)."""
        layers = self.viewer.layers
        for layer in (self.session.layers.preview, self.session.layers.boxes,
                      self.session.layers.points):  # fmt: skip
            if layer in layers and layers.index(layer) != len(layers) - 1:
                layers.move(layers.index(layer), len(layers))

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        layer.events.name.disconnect(self._on_layer_renamed)
        self._unwatch_retired(layer)
        if self._removing_own_layers:
            return
        self.stop_embedding_removed(layer)
        if self._forget_removed_image(layer) or self._note_removed_annotations(layer):
            self._say_removal_soon.start()
        session = self.session
        if session is not None and layer == session.image_layer:  # it cannot be picked again
            self._detach()
            self._removal_note = (
                f"image {layer.name!r} was removed (the layers of its prompts and annotations "
                "stay): the widget goes on with the image chosen under Image, if any"
            )
        elif session is not None and layer in session.layers.layers:
            self._detach()
            self._removal_note = f"layer {layer.name!r} was removed: pick the image again to go on"
        if self._removal_note is not None:
            self._say_removal_soon.start()
        for kept in self._sessions_kept():
            if kept.image_layer == layer:  # saving its annotations needs its name only
                kept.let_go_of_image()
        self._refresh_image_choices(attach_now=False)  # once those removed with it are gone

    def _say_removal(self) -> None:
        """Once the layers removed together are gone, say what the removal did to the
        annotation; not when no layer is left (the viewer closing, or everything removed)."""
        note, self._removal_note = self._removal_note, None
        if note is not None and len(self.viewer.layers):
            show_info(note)
        self._say_removed_not_autosaved()  # also when no layer is left: they are lost

    @property
    def image_layer(self):
        """The image layer chosen in the widget, or None."""
        name = self.ui.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_image_choice(self, _index=None) -> None:
        layer = self.image_layer
        if layer is None:
            self._detach()
            return
        if self.session is None or self.session.image_layer != layer:  # another image
            self._tick_as_chosen_for(layer)
        self._fill_channels()
        try:
            self.set_image_layer(layer)
        except ValueError as err:
            self._detach()
            show_error(f"cannot annotate {layer.name!r}: {err}")

    def set_image_layer(self, layer) -> None:
        """Annotate ``layer``: create (or reuse) its prompt, preview and annotation layers."""
        if getattr(layer, "multiscale", False):
            raise ValueError(
                "multiscale images are not supported; open one resolution level as its own "
                "layer, e.g. the full one, in napari's console: "
                f"viewer.add_image(viewer.layers[{layer.name!r}].data[0])"
            )
        channels = (
            self.ui.channel_combo.currentData() if self.ui.channel_combo.isEnabled() else None
        )
        axes = describe_image(
            layer.data.shape, layer.rgb, self.ui.channels_first_check.isChecked(), channels
        )
        session = self.session
        if session is not None and session.image_layer == layer:  # == sees through proxies
            if session.axes.spatial_shape == axes.spatial_shape:
                session.axes = session.layers.axes = axes  # new channels: same layers
                self._invalidate_embedding()
                self._previews_went_stale()
                self._ensure_embedding()
                return
            self._retire_layers(session)  # new layout, new layers
        self._detach()
        resumed = self._session_to_resume(layer, axes)
        if resumed is None:  # renamed while the panel was closed: its layers and files follow
            mark = ImageMark.of(layer, image_fingerprint(layer.data))
            if (earlier := layer_names.earlier_image_name(self.viewer, layer, mark)) is not None:
                self._follow_unkept_rename(layer, earlier)
        self.session = resumed or AnnotationSession(self.viewer, layer, axes)
        if resumed is not None:  # its layers sit where the image was when it was left
            resumed.layers.place_like(layer)
        self._follow_image(layer, connect=True)
        for prompt_layer in (self.session.layers.points, self.session.layers.boxes):
            prompt_layer.events.data.connect(self._on_prompts_changed)
        self._unwatch_retired(self.session.layers.annotations)  # autosaved as chosen now
        self.session.layers.annotations.events.paint.connect(self._on_painted)
        self._bind_history_keys(self.session.layers.annotations)
        for helper in self.session.layers.layers:
            self._bind_keys(helper, layer)
            self._keyed_layers.add(unproxied(helper))  # unbound when the panel closes
        self._set_positive_mode(self.ui.positive_check.isChecked())
        self.viewer.layers.selection.active = self.session.layers.points
        self._say_if_sheared(layer)
        self._invalidate_embedding()
        self._take_up_previews()
        if resumed is None and not self._take_over_not_autosaved(self.session):
            # (a resumed session holds its records already, and newer ones)
            annotations = self.session.layers.annotations
            self._restore_autosave(
                labels=self.session.layers.annotations_created or restore_pending(annotations)
            )
            self._take_up_unsaved_edits()
        self._ensure_embedding()

    def _session_to_resume(self, layer, axes) -> AnnotationSession | None:
        """The session of image ``layer`` when the image is chosen again (another one was
        chosen meanwhile) while automatic segmentation or propagation still writes into it
        (annotated on, it gets the planes the run finds from now on, and their records), or
        after it was edited with autosave unticked (its records and undo are on no disk),
        or after it was autosaved, its layers left in the viewer (its undo is on no disk
        either) and its pixels as they were. A running automatic segmentation's session
        whose prompt or preview layer was removed gets them anew.
        None when the image's layers (the job's: its annotations) are no longer there, or
        it has another name or layout now (it gets a new session; the run's later planes
        are discarded)."""
        running = self.runner.is_running(AUTO_TASK) or self.runner.is_running(PROPAGATE_TASK)
        kept = ([self._job_session] if running else []) + self._not_autosaved
        session = next((s for s in kept if s is not None and s.image_layer == layer), None)
        autosaved = session is None
        if autosaved:
            session = self._autosaved_to_resume(layer)
        if session is None:
            return None
        if session.axes.spatial_shape != axes.spatial_shape:
            return None
        if session.image_name != layer.name:
            return None
        if not self._layers_all_there(session):
            # a prompt or preview layer was removed: an automatic run writes into the
            # annotations only, so its session goes on with those layers made anew
            automatic = self.runner.is_running(AUTO_TASK) and session is self._job_session
            if not (automatic and self._annotations_there(session)):
                return None
            session.layers = PromptLayers(self.viewer, layer, axes, session.fingerprint)
        if autosaved and session.fingerprint != image_fingerprint(layer.data):
            return None  # new pixels meanwhile: a new session, as for a new image (hashed
            # last: a large stack takes a second, and a new session hashes it again)
        session.axes = session.layers.axes = axes  # the channels may differ
        return session

    def _autosaved_to_resume(self, layer) -> AnnotationSession | None:
        """The session of image ``layer`` left with its layers in the viewer (watched for
        brush strokes, autosaved): chosen again, a new session read the records back from
        the file but lost the undo. None while its annotations still wait for their file (a
        new session reads it again)."""
        left = (s for s, _ in self._retired_painting.values() if s.image_layer == layer)
        session = next(left, None)
        if session is None or restore_pending(session.layers.annotations):
            return None
        return session

    def _take_over_not_autosaved(self, session: AnnotationSession) -> bool:
        """Whether ``session``, new, takes the records and undo of an earlier session of its
        image that was edited with autosave unticked but could not be resumed (one of its
        prompt layers was removed), as it has the same annotations layer, which holds them."""
        for index, kept in enumerate(self._not_autosaved):
            if kept.layers.annotations == session.layers.annotations:
                session.records, session.undo_stack = kept.records, kept.undo_stack
                self._not_autosaved[index] = session
                return True
        return False

    def _annotations_there(self, session: AnnotationSession) -> bool:
        """Whether ``session``'s image and its annotations layer are in the viewer."""
        layers = self.viewer.layers
        return session.image_layer in layers and session.layers.annotations in layers

    def _layers_all_there(self, session: AnnotationSession) -> bool:
        """Whether ``session``'s image and its four layers are all in the viewer."""
        layers = self.viewer.layers
        return session.image_layer in layers and all(h in layers for h in session.layers.layers)

    def _retire_layers(self, session: AnnotationSession) -> None:
        """The image is read with other axes: its layers go (the annotations once saved;
        with the new layout they save beside them), so that new ones of its shape come."""
        automatic = self._automatic_unsaved
        if automatic is not None and automatic[0] is session:  # saved here, not again
            self._automatic_unsaved = None
        self._forget_not_autosaved(session)  # saved here too, or kept under another name
        self._removing_own_layers = True
        try:
            with layer_batch(self.viewer):
                if self._saved_before_retiring(session, automatic):
                    self.viewer.layers.remove(session.layers.annotations)
                session.remove_helpers(including_empty_annotations=True)
        finally:
            self._removing_own_layers = False

    def _saved_before_retiring(self, session: AnnotationSession, automatic=None) -> bool:
        """Whether the session's annotations are saved, so that their layer can go; when
        saving fails it stays, renamed out of the new layers' way. ``automatic``: (session,
        planes) a running automatic segmentation wrote, said to be among them."""
        annotations = session.layers.annotations
        if not (annotations.data.any() and annotations in self.viewer.layers):
            return False
        self.flush_autosave()
        # saved here, or kept as a layer of its own: a save failing in the flush above
        # counted it unsaved again (closing asked of it; a later save wrote the old layout)
        self._forget_not_autosaved(session)
        try:
            labels_path, _ = session.save(self.annotation_folder())
        except (OSError, ValueError) as err:
            annotations.name = f"{annotations.name} {annotations.data.shape}"
            show_error(
                f"saving failed: {user_message(err)}; the annotations stay as layer "
                f"{annotations.name!r}"
            )
            return False
        if automatic is not None:
            show_info(f"{found_where(session, automatic[1])} are kept and saved to {labels_path}")
        return True

    def _follow_image(self, layer, connect: bool) -> None:
        """Keep the layers on the image when it is moved, scaled or rotated, notice new
        pixels (a filter, or the console, setting ``layer.data``), follow its name, and
        let the widget's keys act with the image's layer selected."""
        follow_placement(layer, self._on_image_moved, connect)
        (layer.events.data.connect if connect else layer.events.data.disconnect)(
            self._on_image_data
        )
        (layer.events.name.connect if connect else layer.events.name.disconnect)(
            self._on_image_renamed
        )
        self._take_image_keys(layer, take=connect)

    def _on_image_renamed(self, event=None) -> None:
        """The image's layers and saved annotations take its new name (see
        :meth:`AnnotationSession.follow_rename`), after a save still running ends."""
        session = self.session
        if session is None or session.image_layer.name == session.image_name:
            return
        self._follow_rename(session)

    def _on_layer_renamed(self, event) -> None:
        """A layer was renamed: an image not chosen now takes its layers and saved
        annotations along too, as the chosen one does (else, chosen again, it would get
        new, empty layers under its new name); the list of images follows."""
        layer = event.source
        old, followed = self._image_names.get(layer), False
        for session in self._sessions_kept():
            followed |= session.image_layer == layer
            renamed = session.image_layer == layer and session.image_name != layer.name
            if renamed and session is not self.session:  # the chosen one: _on_image_renamed
                self._follow_rename(session)
        chosen = self.session is not None and self.session.image_layer == layer
        if old is not None and old != layer.name and not (followed or chosen):
            self._follow_unkept_rename(layer, old)
        if isinstance(layer, Image):
            self._image_names[layer] = layer.name
        self._refresh_image_choices()

    def _follow_unkept_rename(self, layer, old: str) -> None:
        """Image ``layer``, whose session is not kept (annotated before the panel was
        reopened, say), was renamed from ``old``: its layers left in the viewer (found by
        their marks or names, unless another image's) and its annotations saved in the
        annotation folder take the new name too, as a kept session's do (see
        :func:`~napari_samtune._qt.saved_renames.follow_unkept_rename`)."""
        in_use = [s.layers.layers for s in [self.session, *self._sessions_kept()] if s]
        fingerprint = image_fingerprint(layer.data)
        named = layers_of_image(self.viewer, old, ImageMark.of(layer, fingerprint))
        left = [ly for ly in named if not _among(ly, in_use)]
        notes = taken_notes(layer.name, rename_layers(self.viewer, left, old, layer.name))
        self.flush_autosave()
        notes += follow_unkept_rename(self.annotation_folder(), old, layer.name, fingerprint)
        for note in notes:
            show_info(note)

    def _sessions_kept(self) -> list[AnnotationSession]:
        """The sessions of images not chosen whose layers may stay in the viewer: edited
        with autosave unticked, written into by a running job, or with their annotations
        layer watched for brush strokes."""
        retired = [session for session, _ in self._retired_painting.values()]
        kept: list[AnnotationSession] = []
        for session in [*self._not_autosaved, self._job_session, *retired]:
            if session is not None and not any(session is k for k in kept):
                kept.append(session)
        return kept

    def _follow_rename(self, session: AnnotationSession) -> None:
        self.flush_autosave()  # a save under the old name must end before its files move
        notes, restore = session.follow_rename(may_restore=session is self.session)
        for note in notes:
            show_info(note)
        waiting = session is self.session and restore_pending(session.layers.annotations)
        if restore or waiting:  # its earlier annotations, under its new name: as if picked
            self._restore_autosave()  # so named (a restore running read the old name's)

    def _on_image_moved(self, event=None) -> None:
        if self.session is not None:
            self.session.layers.place_like(self.session.image_layer)
            self._say_if_sheared(self.session.image_layer)

    def _say_if_sheared(self, layer) -> None:
        """Say SHEARED_NOTE the first time the panel places ``layer``'s layers sheared."""
        layer = unproxied(layer)
        if self.session.layers.sheared and layer not in self._sheared_said:
            self._sheared_said.add(layer)
            show_info(SHEARED_NOTE.format(layer.name))

    def _on_image_data(self, event=None) -> None:
        before = self.session
        if before is None:
            return
        self._on_image_choice()  # same shape: a new embedding; else new layers as well
        if self.session is None:  # pixels it cannot annotate: the error said why
            return
        if self.session is before:
            before.pixels_replaced()
        what = (
            "its annotations stay"
            if self.session is before
            else "they have another shape, so the annotations so far are saved and put away"
        )
        show_info(
            f"image {before.image_layer.name!r} has new pixels: SAM looks at them now; {what}"
        )

    def _detach(self) -> None:
        if self.session is None:
            return
        self.flush_autosave()  # commits not yet on disk go there before the session goes
        self._save_automatic_so_far()  # and the planes a running automatic run wrote
        for prompt_layer in (self.session.layers.points, self.session.layers.boxes):
            prompt_layer.events.data.disconnect(self._on_prompts_changed)
        self.session.layers.annotations.events.paint.disconnect(self._on_painted)
        self._watch_retired(self.session)
        self._follow_image(self.session.image_layer, connect=False)
        self._leave_previews()
        self.session = None
        self._previews_behind.clear()
        self._invalidate_embedding()


def _among(layer, layer_groups) -> bool:
    return any(layer is other for group in layer_groups for other in group)
