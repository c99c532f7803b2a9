"""Saved annotations following their image's new name: which files are the image's, moving
them to where the image finds them under that name, and what to tell the person.

Used by :class:`~napari_samtune._qt.annotate_session.AnnotationSession` for the image being
annotated and by the widget for images renamed while another one is chosen.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from napari_samtune.core.annotation_files import annotation_paths, save_name, saved_shape
from napari_samtune.core.checkpoints import first_free
from napari_samtune.core.label_files import namesake_name, saved_fingerprint


def taken_notes(image: str, taken: list[tuple[str, str]]) -> list[str]:
    """What to say when layers of ``image`` (its new name) could not take their new names:
    ``taken`` holds (the name a layer keeps, the name another layer has)."""
    if not taken:
        return []
    wanted = ", ".join(repr(name) for _, name in taken)
    kept = ", ".join(repr(name) for name, _ in taken)
    return [
        f"layer(s) {wanted} exist already, so the layers of image {image!r} keep the names {kept}"
    ]


def saved_file_names(folder: Path, image_name: str, fingerprint: str) -> list[str]:
    """The names under which the image of ``fingerprint``, named ``image_name``, has
    annotations in ``folder``: its own name (when their record names this image) and
    ``<name>-<fingerprint>`` (where another image's had its name)."""
    own, _ = annotation_paths(folder, image_name)
    names = [image_name] if own.is_file() and saved_fingerprint(own) == fingerprint else []
    namesake = namesake_name(image_name, fingerprint)
    return names + ([namesake] if annotation_paths(folder, namesake)[0].is_file() else [])


def follow_saved_rename(
    folder: Path, file_name: str, new: str, *, fingerprint: str, shape: tuple | None = None
) -> tuple[str, str]:
    """The annotations saved as ``file_name`` in ``folder`` (or to be saved: nothing yet),
    those of the image of ``fingerprint`` renamed to ``new``, move to where the image finds
    them under its new name (:func:`save_name`): ``new``, or ``<new>-<fingerprint>`` where
    another image's annotations, or a file that cannot be read, have ``new``. They stay,
    never written over a file, where that name's files exist (or ``new`` holds this image's
    own). ``shape``: that of the image's labels (default: the saved ones'; unreadable, a
    ``new`` that can be read is taken for another image's). Returns the name they have now
    and what is worth telling the person ('' when nothing)."""
    if shape is None:
        shape = saved_shape(annotation_paths(folder, file_name)[0]) or ()
    moved = move_saved(folder, file_name, save_name(folder, new, fingerprint, shape))
    labels_path = annotation_paths(folder, moved)[0]
    if not labels_path.is_file():
        return moved, ""
    if moved == file_name:
        return moved, (
            f"the annotations of {new!r} stay saved as {labels_path}: the file for its new "
            f"name exists already (if {new!r}, picked under Image, shows none of them, "
            "'Load annotations…' opens that file)"
        )
    return moved, f"the annotations of {new!r} are now saved as {labels_path}"


def move_saved(folder: Path, file_name: str, new_name: str) -> str:
    """Rename saved annotations ``file_name`` in ``folder`` to ``new_name`` (the labels
    first: they are what comes back) unless a file has that name; the name they have."""
    (labels, record), (new_labels, new_record) = (
        annotation_paths(folder, file_name),
        annotation_paths(folder, new_name),
    )
    if new_labels.exists() or new_record.exists():
        return file_name
    try:
        if labels.is_file():
            labels.rename(new_labels)
    except OSError:
        return file_name  # nothing moved: saves go on under the old name
    with contextlib.suppress(OSError):  # left behind, it is written anew with the labels
        if record.is_file():
            record.rename(new_record)
    return new_name


def move_earlier_aside(folder: Path, name: str, fingerprint: str) -> tuple[str, str]:
    """``name``'s files in ``folder`` hold earlier annotations of the image of
    ``fingerprint``, which another set of its annotations is to be saved as: they move to
    ``<name>-<fingerprint>`` (``...-<attempt>`` where taken), not overwritten, and the
    newer are saved as ``name``, where the image looks. Returns the name to save the newer
    as (beside them where they could not move) and what to tell the person."""
    earlier, _ = annotation_paths(folder, name)
    aside = first_free(
        namesake_name(name, fingerprint),  # then <name>-<fingerprint>-2, ... as namesakes are
        lambda free: any(path.exists() for path in annotation_paths(folder, free)),
    )
    if move_saved(folder, name, aside) == name:  # could not move: saves go beside them
        return aside, (
            f"{earlier} holds earlier annotations of {name!r}, not those annotated now; so "
            f"that they are not overwritten, these are saved as {aside!r} ('Load "
            "annotations…' opens either)"
        )
    return name, (
        f"{earlier} held earlier annotations of {name!r}, not those annotated now: they "
        f"are moved to {annotation_paths(folder, aside)[0]}, not overwritten ('Load "
        f"annotations…' opens them), and these are saved as {earlier.name}"
    )


def take_earlier_name(folder: Path, file_name: str, name: str, fingerprint: str) -> tuple[str, str]:
    """The image of ``fingerprint`` has annotations saved as ``file_name`` in ``folder``
    (or none yet), and ``name``'s files hold its earlier ones: those move aside
    (:func:`move_earlier_aside`) and the saved ones take ``name``, where the image renamed
    to it looks. Returns the name they have now and what to tell the person."""
    target, note = move_earlier_aside(folder, name, fingerprint)
    moved = move_saved(folder, file_name, target)
    if moved != target:  # they could not move: saves go on where they are
        note = (
            f"{note}; but those annotated now could not be moved there and stay saved as "
            f"{annotation_paths(folder, moved)[0]}"
        )
    return moved, note


def holds_earlier(folder: Path, name: str, fingerprint: str, shape: tuple) -> bool:
    """Whether ``name``'s files in ``folder`` hold annotations of the image of
    ``fingerprint`` read with labels of ``shape`` (its earlier ones, where another set of
    them is to take ``name``): not another image's, nor a file that cannot be read."""
    labels_path, _ = annotation_paths(folder, name)
    return labels_path.is_file() and save_name(folder, name, fingerprint, shape) == name


def follow_unkept_rename(folder: Path, old: str, new: str, fingerprint: str) -> list[str]:
    """The image of ``fingerprint``, whose annotations no session holds, was renamed from
    ``old`` to ``new``: its files in ``folder`` (:func:`saved_file_names`) follow
    (:func:`follow_saved_rename`). Where ``new``'s files hold its earlier annotations, the
    ones the image had under ``old`` (the first found: its own name's, else
    ``<old>-<fingerprint>``) take ``new`` and the earlier move aside
    (:func:`take_earlier_name`), as a session's do. Returns what to tell the person."""
    notes = []
    for index, file_name in enumerate(saved_file_names(folder, old, fingerprint)):
        shape = saved_shape(annotation_paths(folder, file_name)[0]) or ()  # read once
        moved, note = follow_saved_rename(
            folder, file_name, new, fingerprint=fingerprint, shape=shape
        )
        stayed = moved == file_name != new
        if stayed and index == 0 and holds_earlier(folder, new, fingerprint, shape):
            note = take_earlier_name(folder, file_name, new, fingerprint)[1]
        notes.append(note)
    return [note for note in notes if note]
