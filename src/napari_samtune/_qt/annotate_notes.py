"""The messages the annotation widget shows about commits, propagation and automatic
segmentation, and how they name planes ("planes 1-3, 7").

Planes are numbered as napari's slider shows them, from 0; ``None`` is a 2D image's one
plane.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from napari_samtune._qt.propagate import planes_past


def plane_ranges(planes: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (sorted planes)."""
    runs, start = [], planes[0]
    for before, plane in pairwise(planes):
        if plane != before + 1:
            runs.append((start, before))
            start = plane
    runs.append((start, planes[-1]))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def planes_phrase(planes: list[int]) -> str:
    """``[4]`` -> ``"plane 4"``, ``[1, 2, 3, 7]`` -> ``"planes 1-3, 7"`` (sorted planes)."""
    return ("plane " if len(planes) == 1 else "planes ") + plane_ranges(planes)


def found_where(session: Any, planes: list[int | None]) -> str:
    """ "the objects found on planes 0-2 of 'stack'" (or "in 'image'", 2D): what automatic
    segmentation wrote on ``planes`` (sorted) of ``session``'s image."""
    name = session.image_layer.name
    if None in planes or not planes:
        return f"the objects found in {name!r}"
    where = planes_phrase(planes)
    return f"the objects found on {where} of {name!r}"


def commit_note(planes: list[int | None], in_view: int | None, one_object: bool) -> str:
    """What a person should know about committing the preview on ``planes`` (sorted, from
    ``preview_planes``) while viewing ``in_view``, as ``one_object`` or not (batched mode):
    "" for the usual case, one plane in view or a run of neighbouring planes through it (an
    object propagated through them)."""
    if not planes or None in planes:
        return ""
    where = planes_phrase(planes)
    if one_object and planes[-1] - planes[0] + 1 != len(planes):
        return (
            f"committed one object on {where}, with planes between them left empty: prompts "
            "on separate planes make one object until committed; commit (C) after each "
            "object to keep objects apart (U undoes this)"
        )
    if in_view not in planes:
        return f"committed the preview on {where}, not on the plane in view ({in_view})"
    return ""


def covered_note(shown: int, committed: int) -> str:
    """What became of the objects a commit did not write: of ``shown`` objects in the
    preview, ``committed`` got pixels (with overwrite off, the others lay wholly on existing
    objects; their prompts are cleared with the rest). "" when every object went in."""
    if committed >= shown:
        return ""
    left = shown - committed
    return (
        f"committed {committed} of the {shown} objects in the preview: {left} lay wholly on "
        f"existing objects and {'was' if left == 1 else 'were'} left out (overwrite is off); "
        "to add them over those objects, tick overwrite and prompt them again"
    )


def planes_left_note(planes: list, written: list) -> str:
    """The planes of a commit's preview (``planes``) where it wrote nothing (not in
    ``written``): there the object lay wholly on existing objects, and the 3D object went
    in with a gap, unsaid. "" when it went in on every plane."""
    left = [plane for plane in planes if plane not in written]
    if not left or not written:  # nothing written at all: said as such
        return ""
    which = ", ".join(str(plane) for plane in left)
    return (
        f"plane{'s' * (len(left) > 1)} {which} of the object left out: it lay wholly on "
        "existing objects there (overwrite is off); to add it there, tick overwrite, view "
        "the plane and prompt it again"
    )


def behind_note(planes: list[int | None]) -> str:
    """Why a commit waits: the preview of ``planes`` (sorted; ``[None]`` for a 2D image)
    does not show their latest prompts yet."""
    waits = (
        "does not show your latest prompts (it waits for the model or an embedding, or "
        "segmenting them failed)"
    )
    if planes == [None]:
        return f"not committed yet: the preview {waits}; when it does, commit (C)"
    where = planes_phrase(planes)
    return (
        f"not committed yet: the preview of {where} {waits}; view {where} until it does, "
        "then commit (C)"
    )


def stopped_propagation_note(start: int, reached: list[int]) -> str:
    """What a propagation from plane ``start`` that Stop ended had done: the planes it
    ``reached`` (sorted), which stay in the preview."""
    if not reached:
        return f"propagation from plane {start} stopped before it reached another plane"
    return (
        f"propagation from plane {start} stopped; it reached {planes_phrase(reached)}, kept in "
        "the preview: commit (C) to write the 3D object, or propagate again to go on"
    )


def apart_note(apart: list[int]) -> str:
    """What commit left of the preview beside a propagated object: the planes (sorted) of
    another object's prompts; "" for none."""
    if not apart:
        return ""
    one = len(apart) == 1
    return (
        f"committed the propagated object alone: {planes_phrase(apart)} "
        f"{'holds' if one else 'hold'} another object's prompts, left for a commit of "
        f"{'its' if one else 'their'} own (C again)"
    )


def propagation_note(
    start: int,
    reached: list[int],
    n_planes: int,
    max_area_ratio: float,
    max_planes: int,
    kept_out: tuple[int, ...] = (),
) -> str:
    """What propagation from plane ``start`` did: the planes it ``reached`` (any order), the
    planes where the stopping rule ended it (not the ends of the stack or the ``max_planes``
    limit), and those it ``kept_out`` of, which hold another object's prompts. Planes are
    numbered as napari's slider shows them, from 0."""
    stops = [
        plane
        for plane in planes_past(start, reached)
        if 0 <= plane < n_planes and abs(plane - start) <= max_planes and plane not in kept_out
    ]
    rule = (
        f"the object vanished or its area changed more than {max_area_ratio:g}× from the "
        "plane before"
    )
    where = ("plane " if len(stops) == 1 else "planes ") + " and ".join(map(str, sorted(stops)))
    parts = []
    if stops and not reached:
        parts.append(
            f"on {where} {rule}; raise 'stop at area change ×' or prompt the object there yourself"
        )
    elif stops:
        parts.append(f"it stopped at {where}, where {rule}")
    if kept_out:
        one = len(kept_out) == 1
        parts.append(
            f"{planes_phrase(sorted(kept_out))} {'holds' if one else 'hold'} another object's "
            f"prompts, left as {'it was' if one else 'they were'}: commit or clear them to "
            "propagate through"
        )
    if not reached:
        return "propagation reached no other plane: " + "; ".join(parts)
    note = f"propagated the object from plane {start} through planes " + plane_ranges(
        sorted([*reached, start])
    )
    commit = "check them, then commit (C) to write the 3D object"
    if kept_out:
        commit += " (alone: the other object's prompts stay for a commit of their own)"
    return "; ".join([note, *parts, commit])


def automatic_note(found: int, added: int, overwrite: bool) -> str:
    """What automatic segmentation did: ``found`` objects, of which ``added`` got pixels
    (without ``overwrite`` an object covered by existing ones gets none)."""
    if found == 0:
        return (
            "automatic segmentation found no objects: lower 'min predicted IoU', 'min "
            "stability' or 'min area' and run it again"
        )
    if added == found:
        return f"automatic segmentation added {added} object{'' if added == 1 else 's'}"
    return (
        f"automatic segmentation added {added} of the {found} objects it found; the others "
        "lie on existing objects" + ("" if overwrite else " (tick overwrite to replace them)")
    )


def shape_phrase(shape: tuple[int, ...] | None) -> str:
    """``(5, 64, 64)`` -> "5 planes of 64 x 64 pixels", ``(64, 64)`` -> "64 x 64 pixels"."""
    if shape is None:
        return "an unknown shape"
    plane = " x ".join(map(str, shape[-2:])) + " pixels"
    return f"{shape[0]} planes of {plane}" if len(shape) == 3 else plane
