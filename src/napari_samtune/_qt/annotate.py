"""The annotation dock widget: prompt SAM with points and boxes, commit objects, save them.

Open it from Plugins > SAM tune > Annotate with SAM. Keys (on the viewer and the
prompt layers): C commits the preview, Shift+C clears prompts and preview, T toggles
new points between positive and negative, U undoes the last commit.

Threading: downloads, model loading, embeddings, automatic segmentation,
propagation and autosaves run in thread workers (:mod:`napari_samtune._qt.workers`)
that get arrays, never layers. Prompt -> mask (the prompt encoder and mask decoder
only, milliseconds) runs on the main thread, so the preview follows every click.
While a job that uses the Segmenter runs, predictions wait for it.
"""

from __future__ import annotations

from napari_samtune._qt.llvm_guard import keep_triton_away

keep_triton_away()  # again, before torch's extras: a viewer made since may have loaded libLLVM

import weakref
from pathlib import Path

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QWidget

from napari_samtune._qt.annotate_actions import AnnotateActionsMixin
from napari_samtune._qt.annotate_channels import AnnotateChannelsMixin
from napari_samtune._qt.annotate_embedding import AnnotateEmbeddingMixin
from napari_samtune._qt.annotate_file_jobs import AnnotateFileJobsMixin
from napari_samtune._qt.annotate_files import AnnotateFilesMixin, starting_folder
from napari_samtune._qt.annotate_image import AnnotateImageMixin
from napari_samtune._qt.annotate_keys import AnnotateKeysMixin
from napari_samtune._qt.annotate_model import AnnotateModelMixin, LoadedWeights
from napari_samtune._qt.annotate_propagation import AnnotatePropagationMixin
from napari_samtune._qt.annotate_restore import AnnotateRestoreMixin
from napari_samtune._qt.annotate_saves import AnnotateSavesMixin
from napari_samtune._qt.annotate_session import AnnotationSession
from napari_samtune._qt.annotate_ui import BATCHED_MODE, AnnotateControls
from napari_samtune._qt.dock_life import on_removed
from napari_samtune._qt.history_keys import unbind_history_keys
from napari_samtune._qt.preview_basis import next_basis
from napari_samtune._qt.prompt_layers import PlanePrompts
from napari_samtune._qt.task_messages import user_message
from napari_samtune._qt.workers import TaskRunner
from napari_samtune.core.click_chain import ClickChain
from napari_samtune.core.made_views import EmbeddingNeeded
from napari_samtune.core.predict import Segmenter

TRANSPOSED_HINT = (
    "SAM segments a stack plane by plane: show its rows and columns to prompt (the "
    "viewer's transpose button again, or viewer.dims.order with the last two axes last)"
)
VOLUME_HINT = (
    "SAM segments a stack plane by plane: a click in the 3D view lands at a depth of the "
    "volume, not on the plane the slider shows; switch the viewer to 2D to prompt (its 2D/3D "
    "button, or Ctrl+Y)"
)
OFF_STACK_HINT = (
    "the slider is past the planes of {!r} (another layer reaches further, or this one is "
    "translated): move it onto the image's planes to prompt or segment the plane in view"
)

OUTSIDE_HINT = (
    "a prompt outside the image is left out: SAM sees only the image's pixels, so click or "
    "draw on the image"
)
NEWEST_BOX_HINT = (
    "one object takes one box: the newest box is used. For an object per box choose "
    "'{}' mode; or commit (C) after each box"
)
NEGATIVE_ONLY_HINT = (
    "negative (red) points only mark background, so there is nothing to segment yet: press T "
    "(or tick 'new points are positive') and click the object, or draw a box around it"
)


# The Annotate panels not closed, of every napari window of this process: a run started in
# one window reads the folders another window's panel saves to as much.
OPEN_PANELS: weakref.WeakSet = weakref.WeakSet()


class AnnotateWidget(
    AnnotateKeysMixin,
    AnnotateModelMixin,
    AnnotateImageMixin,
    AnnotateChannelsMixin,
    AnnotateEmbeddingMixin,
    AnnotateActionsMixin,
    AnnotatePropagationMixin,
    AnnotateFilesMixin,
    AnnotateSavesMixin,
    AnnotateFileJobsMixin,
    AnnotateRestoreMixin,
    QWidget,
):
    """Dock widget: interactive SAM annotation of the image layers of ``viewer``."""

    annotations_saved = Signal(str)  # path of the labels TIFF, after every (auto)save
    embedding_ready = Signal(object)  # plane (int, or None for 2D) now held by the Segmenter

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.ui = AnnotateControls(self)
        self.runner = TaskRunner(self.ui.progress_bar, self.ui.status_label)
        self.segmenter: Segmenter | None = None
        self.click_chain = ClickChain()  # the current object's clicks, each refining the last
        self.model_name: str | None = None
        self._loaded_weights: LoadedWeights | None = None  # the user model loaded by name
        self._older_than: str | None = None  # the hash of the new weights its name holds
        self.session: AnnotationSession | None = None
        self._generation = 0  # bumped when model, image or channels change
        self._embedded: tuple[int, int | None] | None = None  # (generation, plane)
        self._failed_embedding: tuple | None = None  # (generation, plane[, views]): not retried
        self._stopped = False  # Stop pressed: the job's end starts no embedding
        # planes whose preview lags their prompts (it waits for a model or an embedding)
        self._previews_behind: set[int | None] = set()
        self._preview_basis = next_basis()  # what previews are made under now (preview_basis)
        # preview layer of an image no longer chosen -> (the planes lagging when it was left,
        # the image layer, held weakly)
        self._behind_left: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._autosave_again: list[AnnotationSession] = []  # saved once the running save ends
        self._save_buffer: np.ndarray | None = None  # the labels the last autosave wrote
        self._written: tuple | None = None  # (session, outcome, announce) of the running save
        self._saving: tuple | None = None  # (session, announce) of the save started last
        self._save_folder: Path | None = None  # where the last background save began to write
        self._save_now_waiting: AnnotationSession | None = None  # Save now, after that save
        self._strokes = 0  # brush, fill and eraser strokes on the annotations, ever
        # annotations layer of an image no longer chosen -> (its session, the autosave on
        # brush strokes)
        self._retired_painting: dict = {}
        self._retired_moves: dict = {}  # the same layers -> (image, what places them on it)
        # images edited with autosave unticked and not saved since: kept (their labels,
        # records and undo) while others are annotated, resumed when chosen again
        self._not_autosaved: list[AnnotationSession] = []
        # of those, the ones whose image was removed: said once the removal is over
        self._removed_not_autosaved: list[AnnotationSession] = []
        self._removed_annotations: list[AnnotationSession] = []  # layers gone, images not
        # (session, planes) automatic segmentation wrote that its autosave has not saved yet
        self._automatic_unsaved: tuple[AnnotationSession, list] | None = None
        # the image a running automatic segmentation or propagation writes into
        self._job_session: AnnotationSession | None = None
        # (weakly) the session Embed all planes embeds, and its worker
        self._embedding_all = (lambda: None, lambda: None)
        self._save_failed: AnnotationSession | None = None  # whose last autosave failed
        self._hinted: set[str] = set()
        self._sheared_said: weakref.WeakSet = weakref.WeakSet()  # images told SHEARED_NOTE
        # image layer -> 'channels on first axis' as chosen for it (off where never ticked)
        self._channels_first_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # (session, a clear's KeptPrompts, or None: the prompts are those U put back) until
        # a prompt changes
        self._prompts_for_undo = None
        self._in_flux = False  # prompts being replaced in several events (_prompts_in_flux)
        self._undo_top_at_clear = None  # the undo stack's top when Shift+C cleared prompts
        self._image_keys_before: dict = {}  # key -> the annotated image layer's own binding
        self._restore_tasks: dict[int, str] = {}  # id(session) -> its restore's task name
        self._removing_own_layers = False  # removals the widget makes need no message
        OPEN_PANELS.add(self)
        # the image the panel opens on: the first (see _refresh_image_choices)
        first = next(iter(self._image_layers()), None)
        self.ui.folder_edit.setText(str(starting_folder(viewer, first)))
        self._shut_down = False
        self._keyed_layers = weakref.WeakSet()  # the helper layers its keys are bound on
        # Layers removed together (select all + delete, layers.clear()) go one by one:
        # choosing the next image after each would build, then remove, its layers.
        self._attach_soon = QTimer(self, singleShot=True, interval=0)
        self._attach_soon.timeout.connect(self._attach_chosen)
        # What a removal did to the annotation, said once the layers removed with it are gone
        self._removal_note: str | None = None
        self._say_removal_soon = QTimer(self, singleShot=True, interval=0)
        self._say_removal_soon.timeout.connect(self._say_removal)
        self._connect_controls()
        self._bind_keys(viewer)
        on_removed(self, self.shut_down)  # the panel's close button
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        # image layer -> its name, to know it when the layer is renamed (weakly: removed, the
        # image goes)
        self._image_names = weakref.WeakKeyDictionary()
        for layer in viewer.layers:  # the layer list tells renames only from napari 0.7 on
            layer.events.name.connect(self._on_layer_renamed)
            if isinstance(layer, Image):
                self._image_names[layer] = layer.name
        viewer.dims.events.current_step.connect(self._on_plane_changed)
        viewer.dims.events.order.connect(self._on_dims_order)
        viewer.dims.events.ndisplay.connect(self._on_dims_order)
        self._refresh_image_choices()

    def _connect_controls(self) -> None:
        ui = self.ui
        ui.load_button.clicked.connect(self.load_model)
        ui.cancel_load_button.clicked.connect(self.cancel_load)
        ui.model_picker.refresh_button.clicked.connect(self._check_loaded_weights)
        ui.image_combo.currentIndexChanged.connect(self._on_image_choice)
        ui.image_combo.activated.connect(lambda _: self.session or self._on_image_choice())
        ui.channels_first_check.toggled.connect(self._on_channels_first)
        ui.channel_combo.currentIndexChanged.connect(self._on_image_choice)
        ui.embed_all_button.clicked.connect(self.embed_all_planes)
        ui.mode_combo.currentIndexChanged.connect(lambda _: self._on_mode_changed())
        ui.positive_check.toggled.connect(self._on_positive_toggled)
        ui.commit_button.clicked.connect(self.commit)
        ui.clear_button.clicked.connect(self.clear)
        ui.undo_button.clicked.connect(self.undo)
        ui.propagate_button.clicked.connect(self.propagate)
        ui.auto_button.clicked.connect(self.segment_automatically)
        ui.stop_button.clicked.connect(self.stop_jobs)
        self.runner.task_finished.connect(lambda _name=None: self._show_stoppable())
        ui.folder_button.clicked.connect(self._choose_folder)
        ui.folder_edit.editingFinished.connect(self._on_folder_edited)
        ui.save_button.clicked.connect(lambda: self.start_save_now())
        ui.autosave_check.toggled.connect(self._on_autosave_ticked)
        ui.load_file_button.clicked.connect(lambda: self.start_loading_annotations())

    def unsaved_images(self) -> list[str]:
        """The images whose annotations have edits not in the annotation folder (made with
        autosave unticked, or their last save failed)."""
        return [session.image_layer.name for session in self._not_autosaved]

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.shut_down()
        super().closeEvent(event)

    def shut_down(self) -> None:
        """Stop acting on the viewer (the panel was closed): commits not yet on disk are
        saved, keys unbound, layer events let go, background jobs asked to stop."""
        if self._shut_down:
            return
        self._shut_down = True
        OPEN_PANELS.discard(self)
        self._attach_soon.stop()
        helpers = list(self.session.layers.layers) if self.session is not None else []
        helpers += [layer for layer in self._keyed_layers if layer not in helpers]
        self._detach()
        for session in self._not_autosaved:  # a panel opened again goes on with them
            session.left_unsaved()
        self._say_not_autosaved("the panel closed; their annotations layers stay in the viewer")
        self._say_restores_dropped()
        self._unwatch_retired()
        for provider in [self.viewer, *helpers]:  # every image's layers it bound keys on
            for key in self._key_actions():
                provider.bind_key(key, None, overwrite=True)
            if isinstance(provider, Labels):
                unbind_history_keys(provider)
        events = self.viewer.layers.events
        events.inserted.disconnect(self._on_layer_inserted)
        events.removed.disconnect(self._on_layer_removed)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self._on_layer_renamed)
        self.viewer.dims.events.current_step.disconnect(self._on_plane_changed)
        self.viewer.dims.events.order.disconnect(self._on_dims_order)
        self.viewer.dims.events.ndisplay.disconnect(self._on_dims_order)
        self.runner.quit_all()

    # -- preview --------------------------------------------------------------------------
    def _on_prompts_changed(self, event=None) -> None:
        action = getattr(getattr(event, "action", None), "value", getattr(event, "action", None))
        if isinstance(action, str) and action.endswith("ing"):
            return  # adding / changing / removing: the final event follows
        if self._in_flux:
            return  # prompts replaced in several events: one preview once all are in place
        self._prompts_for_undo = None  # U puts back a clear's prompts only right after it
        if self.session is not None and not self._viewing_planes():
            self._hint(self._planes_hint())  # a click there has no plane to be segmented on
            self._previews_behind.add(self.current_plane)  # segmented once planes show
            return
        self._keep_propagation_out()
        self.update_preview()

    def _on_mode_changed(self) -> None:
        """One object or batched: every plane's preview was made in the other mode. Only
        the plane in view is segmented again now; the others with several boxes or positive
        points lag their prompts until viewed (C refuses them, saying so): a commit mixed
        both modes."""
        if self.session is not None:  # one box or point is one object in both modes
            layers = self.session.layers
            for plane in layers.preview_planes():
                prompts = layers.prompts(plane)
                if int(prompts.positive.sum()) + len(prompts.boxes_rc) > 1:
                    self._previews_behind.add(plane)
        self.update_preview()

    def update_preview(self, clear_if_empty: bool = True) -> bool:
        """Recompute the preview of the plane in view from its prompts.

        Returns True when the preview is up to date, False when it waits for a model
        or an embedding (it is recomputed when that is ready).
        """
        if self.session is None:
            return False
        plane = self.current_plane
        if not self._viewing_planes():  # 3D, or planes seen along another axis: previews
            return plane not in self._previews_behind  # stay (C refused them after a job)
        up_to_date = self._compute_preview(plane, clear_if_empty)
        (self._previews_behind.discard if up_to_date else self._previews_behind.add)(plane)
        return up_to_date

    def _compute_preview(self, plane: int | None, clear_if_empty: bool) -> bool:
        layers = self.session.layers
        prompts = layers.prompts(plane)
        propagated = layers.propagated.get(plane)
        if propagated is not None and prompts.is_empty:  # uncorrected: propagation's own mask
            layers.set_preview(plane, propagated.labels)  # in batched mode too (it was erased)
            return True
        if propagated is not None and self.ui.mode_combo.currentText() != BATCHED_MODE:
            prompts = prompts.after(propagated.prompts)  # corrected: refine it
        self._hint_left_out(prompts)
        if not (len(prompts.boxes_rc) or prompts.positive.any()):
            if len(prompts.points_rc):  # negative points only: they segment nothing
                self._hint(NEGATIVE_ONLY_HINT)
            if clear_if_empty:
                layers.set_preview(plane, None)
            return True
        self._hinted.discard(NEGATIVE_ONLY_HINT)  # said again the next time it happens
        if self.segmenter is None:
            self._hint("load a model (Model > Load model) to segment from your prompts")
            return False
        if not self.is_embedded(plane):
            self._ensure_embedding()
            job = self._job_session
            if job is not None and job is not self.session:  # the job holds the Segmenter
                self._hint(
                    f"the preview waits for the job running on {job.image_layer.name!r} to "
                    "end (it uses the model); it is shown then"
                )
            return False
        try:
            with self.segmenter.no_encoder_passes():  # those run in the background
                labels = self._predict(prompts)
        except EmbeddingNeeded as needed:  # a prompt in no tile of a large image
            return self._embed_views(plane, needed.views)
        except (ValueError, TypeError, RuntimeError) as err:
            show_error(f"segmentation failed: {user_message(err)}")
            return False
        if self.ui.mode_combo.currentText() == BATCHED_MODE:
            labels = layers.ids_apart_from_other_planes(plane, labels)
        layers.set_preview(plane, labels)
        return True

    def _hint_left_out(self, prompts: PlanePrompts) -> None:
        """Say once (again after it stopped) that prompts are left out of the preview: those
        off the image, and in one-object mode the boxes but the newest."""
        one_object = self.ui.mode_combo.currentText() != BATCHED_MODE
        for hint, happens in (
            (OUTSIDE_HINT, prompts.n_outside > 0),
            (NEWEST_BOX_HINT.format(BATCHED_MODE), one_object and len(prompts.boxes_rc) > 1),
        ):
            if happens:
                self._hint(hint)
            else:
                self._hinted.discard(hint)  # said again the next time it happens

    def _viewing_planes(self) -> bool:
        """Whether the view shows a plane of the stack (rows and columns): seen along another
        axis (the dims order transposed), as a volume (the 3D view) or with the slider past
        its planes, a click has no plane to be segmented on."""
        if not self.session.axes.is_stack:
            return True
        dims = self.viewer.dims
        rows_and_columns = set(dims.order[-2:]) == {dims.ndim - 2, dims.ndim - 1}
        return dims.ndisplay == 2 and rows_and_columns and self.session.shows_plane(dims.point)

    def _planes_hint(self) -> str:
        """Why a stack's view has no plane to segment on, and how to show one."""
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            return VOLUME_HINT
        if not self.session.shows_plane(dims.point):
            return OFF_STACK_HINT.format(self.session.image_layer.name)
        return TRANSPOSED_HINT

    def _on_dims_order(self, event=None) -> None:
        """The dims order or the 2D/3D view changed: the hints are said again after the next
        change, and prompts made meanwhile are segmented once planes show."""
        self._hinted.difference_update({TRANSPOSED_HINT, VOLUME_HINT})
        if self.session is not None and self._viewing_planes():
            self.update_preview(clear_if_empty=False)

    def _hint(self, message: str) -> None:
        if message not in self._hinted:
            self._hinted.add(message)
            show_info(message)
