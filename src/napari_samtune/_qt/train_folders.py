"""TIFF folders of training data: what they are, and checking them off the main thread.

Reading and checking every pair of a folder takes seconds (6 s for 50 images of
1024 x 1024 pixels), far too long for the main thread. :func:`check_folder_pairs` runs
in a worker and returns a :class:`FolderCheck` stamped with the files' sizes and
modification times (:func:`folder_signature`), so a later Start reuses it while the
files are unchanged and checks again when one changed. Nothing here touches a widget.

Folders need not pair completely, as in the annotate -> finetune loop, where the labels
folder holds the autosaves of the images annotated so far (and perhaps of images from
elsewhere): the files without a partner are left out and named in the check's note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from napari_samtune._qt.train_repeats import ImageDigest, image_digest
from napari_samtune._qt.workers import TaskProgress
from napari_samtune.core.data import (
    ImageLabelPair,
    describe_names,
    empty_planes_message,
    foreign_labels_message,
    gray_as_is,
    namesakes_message,
    prepare_annotated,
    read_match,
)
from napari_samtune.core.data_checks import ChannelError
from napari_samtune.core.duplicate_pairs import drop_duplicates, duplicates_message
from napari_samtune.core.file_lists import expand_paths
from napari_samtune.core.images import CHANNELS_FIX, SAY_CHANNEL_AXIS, STACK_CHANNELS_FIX
from napari_samtune.core.label_files import match_files

WIDGET_CHANNELS_FIX = (
    "fill in the channels field: one channel index for a gray image (e.g. 1), or three for "
    "RGB (e.g. 0,1,2)"
)


@dataclass(frozen=True)
class FolderSource:
    """Paired TIFF files: an image folder and a labels folder (paired by file name)."""

    images: Path  # folder (or glob) of image TIFFs
    labels: Path  # folder (or glob) of label TIFFs
    channels: tuple[int, ...] | None = None  # of multichannel images: one (gray) or three (RGB)
    channels_taken: bool = False  # the training folders' (validation's field left empty)


@dataclass(frozen=True)
class FolderCheck:
    """What reading and checking every pair of a :class:`FolderSource` found."""

    signature: tuple  # folder_signature() of the files when the check began
    problem: str  # why the folders cannot be trained on; "" when they can
    note: str  # the files, pairs and stack planes training will leave out (no partner, no
    # object, a repeat of another pair), or ""
    images: tuple[ImageDigest, ...] = ()  # of the pairs kept, to find layer pairs repeating them


def folder_signature(source: FolderSource) -> tuple:
    """The channels chosen and (path, size, modification time) of every file the folders
    name: a check holds while this is unchanged. ``OSError``/``ValueError`` when the folders
    cannot be listed."""
    files = [*expand_paths(source.images, "images"), *expand_paths(source.labels, "labels")]
    stats = ((str(f), stat.st_size, stat.st_mtime_ns) for f in files for stat in [f.stat()])
    return (source.channels, *stats)


def check_folder_pairs(
    source: FolderSource, title: str, report: Callable[[TaskProgress], None]
) -> FolderCheck:
    """Read and check every pair with the core's checks (run it in a worker).

    ``title`` names the data in messages ("training"); ``report`` receives the progress.
    """
    try:
        signature = folder_signature(source)
    except (ValueError, OSError) as err:
        return FolderCheck((), f"{title} folders: {err}", "")
    try:
        match, foreign, empty_planes = match_files(source.images, source.labels), [], []
        namesakes: list[str] = []
        pairs = _read(match, source, foreign, empty_planes, namesakes)

        def progress(done: int, total: int) -> None:
            report(TaskProgress(done, total, f"checking the {title} folders: {done}/{total}"))

        prepared, left_out = prepare_annotated(pairs, f"{title} folder", progress)
        kept, duplicates = drop_duplicates(prepared)  # with other labels: refused here, early
        images = tuple(map(image_digest, kept))
    except ChannelError as err:
        return FolderCheck(signature, f"{title} folders: {_in_widget_terms(err)}", "")
    except (ValueError, TypeError, OSError) as err:
        return FolderCheck(signature, f"{title} folders: {_axis_unsaid(str(err))}", "")
    notes = [match.left_out_message(), namesakes_message(namesakes) if namesakes else ""]
    notes.append(foreign_labels_message(foreign) if foreign else "")
    notes.append(empty_planes_message(empty_planes) if empty_planes else "")
    if left_out:
        notes.append(
            f"{len(left_out)} of {len(pairs)} pairs have no object and will be left out: "
            f"{describe_names(left_out)}"
        )
    notes.append(duplicates_message(duplicates))
    return FolderCheck(signature, "", "\n".join(filter(None, notes)), images)


def load_folder_pairs(source: FolderSource | None) -> list[ImageLabelPair]:
    """Read a folder source's TIFF pairs (call it in the worker), leaving out the files
    without a partner; [] for None."""
    if source is None:
        return []
    return _read(match_files(source.images, source.labels), source)


def _read(
    match, source: FolderSource, foreign=None, empty_planes=None, namesakes=None
) -> list[ImageLabelPair]:
    """The pairs of ``match``; of validation folders all gray beside multichannel training
    ones, whose channels their empty field takes, with no channels (``read_match`` keeps them
    where no image has channels, to be refused)."""
    pairs = read_match(match, foreign, None, source.channels, empty_planes, namesakes)
    return gray_as_is(pairs) if source.channels_taken else pairs


def _axis_unsaid(text: str) -> str:
    """A core message asking for a channel axis, which the panel has no field for."""
    return text.replace(
        SAY_CHANNEL_AXIS,
        "the panel cannot say which (samtune train can: --channel-axis 0 or 1)",
    )


def _in_widget_terms(err: ChannelError) -> str:
    """A channel problem worded for the panel, whose fix is its channels field (the axis
    follows from the channels chosen): "pass channel_axis" named no field it has."""
    text = str(err)
    for fix in (CHANNELS_FIX, STACK_CHANNELS_FIX):
        if fix in text:
            return text.replace(fix, WIDGET_CHANNELS_FIX)
    return f"{text} (the channels field, e.g. 1 or 0,1,2)"


def shared_images_note(folder: str, other: str, title: str, other_title: str) -> str:
    """What to say when image folder ``folder`` (of the ``title`` data, e.g. "validation")
    is the ``other_title`` data's; "" when it is not, or a path cannot be resolved (an
    unknown ``~user``, a symlink loop: the folder check says what is wrong)."""
    try:
        same = (
            bool(folder.strip())
            and bool(other.strip())
            and resolved_folder(folder) == resolved_folder(other)
        )
    except (RuntimeError, OSError, ValueError):
        return ""
    if not same:
        return ""
    return (
        f"these are the {other_title} images: validating on images the model trains on "
        "scores fitting, not new images; choose other images, or untick the separate "
        f"{title} data to hold out part of the {other_title} images"
    )


def resolved_folder(folder: str | Path) -> Path:
    """``folder`` as typed in a field (spaces around it, ``~``), absolute and resolved."""
    return Path(str(folder).strip()).expanduser().resolve()
