"""The Annotate dock's model: choosing, loading (in the background) and using it, and
whether it is still what its name holds. A user model registered anew under the same name
(a continued run, ``samtune models``) leaves the copy loaded before older than the name now
says, while the picker and the label still name it: the dock says so."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning

from napari_samtune._qt import annotate_jobs as jobs
from napari_samtune._qt.annotate_jobs import LOAD_TASK
from napari_samtune.core.fetch import DownloadStopped
from napari_samtune.core.models import LoadedModel
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.user_model_rename import renamed_to
from napari_samtune.core.user_models import user_model_spec


@dataclass(frozen=True)
class LoadedWeights:
    """The user model a dock loaded by name, and which weights its name held then."""

    name: str  # the user model's registry name
    # the digest of its weights (of the tensors: the same weights exported again make other
    # file bytes, and were called other weights), else its file's hash, as its description
    # gave it when the load began
    weights: str

    @classmethod
    def of(cls, source: str | Path) -> LoadedWeights | None:
        """User model ``source`` as registered now; None for built-in models and weights
        files (chosen by path), which no registration replaces."""
        if not isinstance(source, str):
            return None
        try:
            spec = user_model_spec(source)
        except ValueError:  # a broken description: loading it fails, and says why
            return None
        if spec is None or spec.file_hash is None:
            return None
        return cls(source, spec.weights_id or spec.file_hash)


def older_weights_message(name: str) -> str:
    return (
        f"user model {name!r} was registered anew with other weights (a finetuning run "
        "continued, or 'samtune models'); the annotation widget still predicts with the "
        f"copy it loaded before: choose {name!r} and press Load model to use the new weights"
    )


def _load_recorded(source, *args) -> tuple[LoadedModel, LoadedWeights | None]:
    """:func:`~napari_samtune._qt.annotate_jobs.load_model_job`, with which weights a user
    model's name held: read before the load, so weights registered meanwhile are at worst
    called newer than the copy loaded, and Load model again takes them."""
    weights = LoadedWeights.of(source)
    return jobs.load_model_job(source, *args), weights


def _show_notes(notes: list[str]) -> None:
    for note in notes:
        show_warning(note)


class AnnotateModelMixin:
    """Choosing and loading the model, and saying when its name holds newer weights."""

    def refresh_models(self, say_if_older: bool = True) -> None:
        """Re-read the model registry (e.g. after finetuning a new model); say if the user
        model in use has been registered anew (unless it is about to be loaded again)."""
        self.ui.model_picker.refresh_models()
        if say_if_older:
            self._check_loaded_weights()

    def _check_loaded_weights(self) -> None:
        """Mark the model in use, and say once, when its name now holds other weights: it
        stays in use (the person may not want the new ones) until Load model. A model
        renamed since it loaded is followed under its new name (its name's weights, replaced
        after the rename, went unnoticed, and its commits were recorded under the old name)."""
        weights = self._loaded_weights
        now = None if weights is None else LoadedWeights.of(weights.name)  # its record, read once
        if weights is not None and now is None:
            new_name = renamed_to(weights.name)
            if new_name is not None:
                weights = self._loaded_weights = replace(weights, name=new_name)
                self.model_name, now = new_name, LoadedWeights.of(new_name)
                if not self.runner.is_running(LOAD_TASK):  # else the load's end sets it
                    self.ui.model_label.setText(self._model_text())
        # the weights the name holds now, where they are others than these
        newer = None if now is None or now == weights else now.weights
        if newer == self._older_than:
            return
        self._older_than = newer
        if not self.runner.is_running(LOAD_TASK):  # else the load's end sets the label
            self.ui.model_label.setText(self._model_text())
        if newer is not None:
            show_warning(older_weights_message(weights.name))

    def select_model(self, name: str) -> None:
        """Choose a registry model by name, or a checkpoint file by path (not loaded yet)."""
        self.ui.model_picker.select_model(name)

    def load_model(self):
        """Load the chosen model in the background; returns the worker, or None."""
        picker = self.ui.model_picker
        try:
            source = picker.listed_source()
        except ValueError as err:
            show_error(str(err))
            return None
        if source is None:  # removed since the list was read: the picker said so
            return None
        if self.runner.is_running(LOAD_TASK):
            show_info("a model is already loading; wait for it to finish")
            return None
        self.ui.model_label.setText(f"loading {source}…")
        notes: list[str] = []  # shown however the job ends: a file moved aside stays so
        stop = threading.Event()  # Cancel, or the panel closed

        answered = []  # a cancelled (quit) worker returns nothing: see ended()

        def loaded(result) -> None:
            answered.append(True)
            _show_notes(notes)
            if stop.is_set():  # loaded before it saw Cancel: not wanted now
                self.ui.model_label.setText(f"{self._model_text()} ({source}: cancelled)")
                return
            model, weights = result
            self.set_model(model.sam, model.name, model.model_id, weights)
            picker.remember(source)  # chosen first in the next napari session
            self._check_loaded_weights()  # registered anew while it loaded

        def failed(exc) -> None:
            answered.append(True)
            _show_notes(notes)
            resumes = isinstance(exc, DownloadStopped) and exc.kept_bytes > 0
            stopped = (
                f" ({source}: cancelled{'; Load model resumes the download' if resumes else ''})"
            )
            self.ui.model_label.setText(self._model_text() + (stopped if stop.is_set() else ""))

        def ended() -> None:
            self.ui.cancel_load_button.setEnabled(False)
            if not answered:  # Cancel quit the worker, whose result superqt then drops:
                _show_notes(notes)  # "loading <model>…" stayed for good
                self.ui.model_label.setText(f"{self._model_text()} ({source}: cancelled)")

        self.ui.cancel_load_button.setEnabled(True)
        return self.runner.start(
            LOAD_TASK,
            _load_recorded,
            source,
            picker.device(),
            self.runner.report,
            notes,
            stop,
            on_return=loaded,
            on_error=failed,
            on_finish=ended,
            cancel_event=stop,
        )

    def cancel_load(self) -> None:
        """Stop loading the model: a download stops at its next chunk and keeps what
        arrived (the next Load model resumes it); the model in use stays."""
        if not self.runner.is_running(LOAD_TASK):
            return
        self.runner.cancel(LOAD_TASK)
        self.ui.cancel_load_button.setEnabled(False)
        self.ui.status_label.setText("cancelling the model load…")

    def set_model(
        self, sam, name: str, model_id: str | None = None, weights: LoadedWeights | None = None
    ) -> None:
        """Use an already loaded ``segment_anything`` Sam (on its current device);
        ``weights``: the user model it is, as registered when it was loaded."""
        self._loaded_weights, self._older_than = weights, None
        device = next(sam.parameters()).device
        self.segmenter = Segmenter(sam, model_id=model_id, device=device)
        self.model_name = name
        self._use_auto_defaults_of(self.segmenter.img_size)
        self._invalidate_embedding()
        self._another_model()
        self.ui.model_label.setText(self._model_text())
        self._stop_jobs_of_the_model_before()
        self._ensure_embedding()

    def _model_text(self) -> str:
        if self.segmenter is None:
            return "no model loaded"
        text = f"{self.model_name} on {self.segmenter.model.device}"
        if self._older_than is not None:
            text += f" (older weights: {self.model_name!r} holds new ones; Load model takes them)"
        return text
