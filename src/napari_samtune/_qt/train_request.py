"""What a Start (or Continue…) of the Finetune widget checks before the run's worker begins.

:class:`TrainRequestMixin` checks the data sources, writing every problem in red under its
field. A request (see :class:`~napari_samtune._qt.train_run.TrainRequest`) whose data holds
layer pairs and folders is compared first, in a worker, for layer pairs that repeat a
folder image (:mod:`napari_samtune._qt.train_repeats`): one with other labels is refused
before the model is loaded, a repeat noted under the folders. The run copies the layers'
planes as it begins, after the comparison: the core compares what it trains on again, as
a stroke painted in between may have changed it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_error

from napari_samtune._qt.train_data import PairSourceWidget, show_problem
from napari_samtune._qt.train_repeats import RepeatCheck, compare_with_folders
from napari_samtune._qt.train_run import TrainRequest

REPEAT_TASK = "comparing the layer pairs with the folders"


class TrainRequestMixin:
    """The checks of :class:`~napari_samtune._qt.train_widget.TrainWidget` before a run."""

    _comparing: tuple[TrainRequest, Path | None] | None = None  # a Start waiting on REPEAT_TASK

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
