"""What a Start (or Continue…) of the Finetune widget checks before the run's worker begins.

:class:`TrainRequestMixin` checks the settings and the data sources, writing every problem
in red under its field, and makes the run's request
(:class:`~napari_samtune._qt.train_run.TrainRequest`). Two layer pairs of one image with
other labels are refused there, found by fingerprints of their pixels in milliseconds. A
request whose data holds layer pairs and folders is compared first, in a worker, for layer
pairs that repeat a folder image (:mod:`napari_samtune._qt.train_repeats`): one with other
labels is refused before the model is loaded, a repeat noted under the folders. The run
copies the layers' planes as it begins, after the comparison: the core compares what it
trains on again, as a stroke painted in between may have changed it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from napari.utils.notifications import show_error

from napari_samtune._qt.continued_runs import continued_config
from napari_samtune._qt.train_data import PairSourceWidget, show_problem
from napari_samtune._qt.train_repeats import (
    RepeatCheck,
    compare_with_folders,
    layer_pairs_conflict,
)
from napari_samtune._qt.train_run import (
    CONTINUED_RUN_IN_USE,
    NEW_RUN_IN_USE,
    TrainRequest,
    run_folder,
)
from napari_samtune.core.checkpoints import check_output_folder
from napari_samtune.core.run_lock import check_not_in_use
from napari_samtune.core.train_export import check_model_name, check_registration

REPEAT_TASK = "comparing the layer pairs with the folders"


class TrainRequestMixin:
    """The checks of :class:`~napari_samtune._qt.train_widget.TrainWidget` before a run."""

    _comparing: tuple[TrainRequest, Path | None] | None = None  # a Start waiting on REPEAT_TASK

    def _request(self, resume: Path | None) -> TrainRequest | None:
        """Everything for a new run, or to continue the run in ``resume``; None after
        showing what is wrong (in red, and notified)."""
        problems = self._data_problems()
        history = []
        try:
            if resume is None:
                config = self.settings.build_config()
                check_registration(None)  # the user-models folder: not about the name
                name = self.settings.model_name()
                model_name = check_field("new model name", check_model_name, name)
                check_output_folder(self.settings.output_folder(), "output folder")
                out_dir, last = run_folder(self.settings.output_folder(), model_name), None
                check_not_in_use(out_dir, NEW_RUN_IN_USE)
            else:  # a run in its first epoch has no last.pt yet: not "holds no run"
                check_not_in_use(resume, CONTINUED_RUN_IN_USE)
                # the run keeps its own preset: "auto" is the device this machine has, not
                # that of the preset chosen here (an A100's cuda on a CPU-only machine)
                device = self.settings.model_picker.device()
                if device != "auto" and self.settings.device_problem():
                    raise ValueError(self.settings.device_problem())
                epochs = self.settings.epochs_spin.value()
                config, last, history = continued_config(resume, int(epochs), device)
                # as a diverged run is told to: continue it with a lower learning rate
                config = replace(config, learning_rate=self.settings.learning_rate())
                out_dir, model_name = resume, None  # the run's folder and registered name
        except (ValueError, TypeError) as err:
            self.settings.show_start_problem(str(err))
            problems.append(str(err))
        else:  # an earlier Start's complaint is out of date; the model's own stays
            self.settings.show_model_problem()
        if problems:
            self._refuse(problems[0])
            return None
        train_pairs, train_folders = self.train_data.snapshot()
        val_pairs, val_folders = self.val_data.snapshot() if self._separate_val() else ([], None)
        for source, pairs in ((self.train_data, train_pairs), (self.val_data, val_pairs)):
            conflict = layer_pairs_conflict(pairs)
            if conflict:
                show_problem(source.list_error, f"{source.title} data: {conflict}")
                self._refuse(source.list_error.text())
                return None
        show_problem(self.start_error, "")  # an earlier Start's refusal is out of date
        return TrainRequest(
            config, tuple(train_pairs), train_folders, tuple(val_pairs), val_folders,
            out_dir, model_name, last, tuple(history),
        )  # fmt: skip

    def _refuse(self, problem: str) -> None:
        show_problem(self.start_error, "cannot start: fix the problems marked in red")
        show_error("cannot start training: " + problem)

    def _data_problems(self) -> list[str]:
        problems = []
        if not self.train_data.check():
            problems.append(
                self.train_data.empty_problem() or "training data: see the messages in red"
            )
        if self._separate_val() and not self.val_data.check():
            problems.append(
                self.val_data.empty_problem() or "validation data: see the messages in red"
            )
        return problems

    def _compare_repeats(self, request: TrainRequest, resume: Path | None) -> bool:
        """When a source has layer pairs and folders, compare them in a worker, then train
        unless a repeat with other labels is found; whether it was started."""
        sources = [(self.train_data, request.train_pairs, request.train_folders)]
        sources.append((self.val_data, request.val_pairs, request.val_folders))
        both = [(s, pairs) for s, pairs, folders in sources if pairs and folders is not None]
        if not both:
            return False
        self._comparing = waiting = (request, resume)

        def compared(found: list[RepeatCheck]) -> None:
            if self._comparing is waiting:  # else cancelled by Stop
                self._comparing = None
                self._set_running(False)
                self.status_label.setText("")
                if _show_repeats([s for s, _ in both], found, self._refuse):
                    self._train(request, resume)

        def failed(_err: BaseException) -> None:  # notified by the runner
            if self._comparing is waiting:
                self._comparing = None
                self._set_running(False)

        jobs = [(pairs, source.folder_images()) for source, pairs in both]
        self.runner.start(REPEAT_TASK, _compare_all, jobs, on_return=compared, on_error=failed)
        self._set_queued(REPEAT_TASK)  # after the runner's own line: says that Stop cancels
        return True


def _compare_all(jobs: list[tuple]) -> list[RepeatCheck]:
    return [compare_with_folders(pairs, images) for pairs, images in jobs]


def _show_repeats(
    sources: list[PairSourceWidget], found: list[RepeatCheck], refuse: Callable[[str], None]
) -> bool:
    """Show what comparing found under each source's fields; whether training may start."""
    problems = []
    for source, check in zip(sources, found, strict=True):
        if check.problem:
            problems.append(f"{source.title} data: {check.problem}")
            show_problem(source.list_error, problems[-1])
        elif check.note:  # under the folders' own note, which the next check renews
            note = "\n".join(filter(None, [source.folder_note.text(), check.note]))
            show_problem(source.folder_note, note)
    if problems:
        refuse(problems[0])
    return not problems


def check_field(field: str, check: Callable[[str], str], value: str) -> str:
    """``check(value)``, its error starting with the field's label, as messages about the
    advanced settings are shown under the model picker."""
    try:
        return check(value)
    except ValueError as err:  # the core's name for it given once, as the field's label
        said = re.sub(r"^\w+=('[^']*'|\S+)", r"\1", str(err))
        raise ValueError(f"{field} {said}") from None
