"""The names of the layers the annotation widget makes for an image, and how it knows its own.

Image ``<image>`` gets ``<image> points``, ``<image> boxes``, ``<image> current object`` and
``<image> annotations`` (see :mod:`~napari_samtune._qt.prompt_layers`); where a layer of the
person's has one of these names, napari names the widget's ``<image> points [1]`` and so
on. Each is marked with its role (the suffix) in ``layer.metadata[OWN_LAYER_KEY]``, so
that a layer of the person's that happens to have such a name is never taken for one, and
with its image (:class:`ImageMark`) in ``layer.metadata[OWN_IMAGE_KEY]``, so that another
image given the name later (the first renamed) never takes the first one's layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from napari.layers import Image, Labels

# the four layers' names: the image's name and these
ANNOTATIONS, PREVIEW, BOXES, POINTS = " annotations", " current object", " boxes", " points"
NAME_SUFFIXES = (ANNOTATIONS, PREVIEW, BOXES, POINTS)
# in layer.metadata, the suffix of a layer the widget made: its role
OWN_LAYER_KEY = "napari-samtune layer"
# in layer.metadata, the image a layer the widget made is for: ImageMark.as_metadata()
OWN_IMAGE_KEY = "napari-samtune image"
_SUFFIX_PATTERN = re.compile(
    "(" + "|".join(map(re.escape, NAME_SUFFIXES)) + r")(?: \[\d+\])?"
)  # a suffix, and the " [n]" napari gives a name already taken


def strip_taken_number(name: str) -> str:
    """``name`` without the " [n]" napari adds to a name already taken."""
    return re.sub(r" \[\d+\]$", "", name)


def suffix_of(name: str, image_name: str) -> str | None:
    """The suffix (:data:`POINTS`, ...) of a layer named ``name`` after image ``image_name``:
    ``<image><suffix>``, or ``<image><suffix> [n]``; None for other names."""
    if not name.startswith(image_name):
        return None
    match = _SUFFIX_PATTERN.fullmatch(name[len(image_name) :])
    return match.group(1) if match else None


@dataclass(frozen=True)
class ImageMark:
    """Which image a layer the widget made is for: the image layer's ``unique_id`` (the
    same through renames, picking it again and reopening the panel) and its fingerprint
    (:func:`~napari_samtune.core.label_files.image_fingerprint`), by which the image
    removed and opened again (a new layer) finds its layers left in the viewer."""

    layer_id: str  # the image layer's unique_id ('' where napari has none)
    fingerprint: str  # of the image's pixels (of a dask/zarr image: its shape and dtype)

    @classmethod
    def of(cls, image_layer, fingerprint: str) -> ImageMark:
        return cls(str(getattr(image_layer, "unique_id", "") or ""), fingerprint)

    def as_metadata(self) -> dict:
        return {"image layer": self.layer_id, "fingerprint": self.fingerprint}

    def owns(self, layer, viewer) -> bool | None:
        """Whether ``layer``, marked with an image, is this image's: marked with its layer,
        or with its fingerprint where the layer marked is gone from ``viewer`` (a lazy
        image's fingerprint is its shape and dtype only: another image of the viewer may
        have it). None where ``layer`` has no image mark."""
        mark = layer.metadata.get(OWN_IMAGE_KEY)
        if not isinstance(mark, dict):
            return None
        marked_id = mark.get("image layer")
        if self.layer_id and marked_id == self.layer_id:
            return True
        ids = {str(getattr(other, "unique_id", "")) for other in viewer.layers}
        return marked_id not in ids and mark.get("fingerprint") == self.fingerprint


def role_for(layer, image_name: str, image: ImageMark, viewer) -> str | None:
    """The suffix (:data:`POINTS`, ...) for which the widget may use ``layer`` as one of
    image ``image_name``'s layers: one it made for it (marked so, for ``image``, and named
    after it), or a Labels layer named "<image> annotations" that the widget did not make
    for another image, however it came (annotations painted or opened elsewhere are
    continued). None for other layers: a person's own Points layer "<image> points" (the
    widget's would break it: other features), the layers of an image that had the name
    before (renamed, its layers could not follow where their new names were taken)."""
    suffix = suffix_of(layer.name, image_name)
    if suffix is None:
        return None
    owned = image.owns(layer, viewer)
    if owned is False:
        return None
    if layer.metadata.get(OWN_LAYER_KEY) == suffix:
        return suffix
    named = suffix == ANNOTATIONS and layer.name == image_name + suffix
    return suffix if named and isinstance(layer, Labels) else None


def marked_role(layer, image: ImageMark) -> str | None:
    """The suffix (:data:`POINTS`, ...) of ``layer`` where the widget made it for ``image``'s
    layer (marked with its ``unique_id``), whatever its name: renamed with its image where
    the new name was taken, it kept the old one. None for other layers (those found by the
    fingerprint only need their name: see :meth:`ImageMark.owns`)."""
    mark = layer.metadata.get(OWN_IMAGE_KEY)
    if not image.layer_id or not isinstance(mark, dict):
        return None
    suffix = layer.metadata.get(OWN_LAYER_KEY)
    marked = mark.get("image layer") == image.layer_id
    return suffix if marked and suffix in NAME_SUFFIXES else None


def layers_of_image(viewer, image_name: str, image: ImageMark) -> list:
    """The layers of ``viewer`` that the widget made for ``image``, named ``image_name``:
    those marked with its layer whatever their names (:func:`marked_role`), those found by
    their names ("<name> points", "<name> points [1]", ...), and its Labels layer
    "<name> annotations" (see :func:`role_for`); not the person's others."""
    return [
        layer
        for layer in viewer.layers
        if marked_role(layer, image) or role_for(layer, image_name, image, viewer)
    ]


def rename_layers(viewer, layers, old: str, new: str) -> list[tuple[str, str]]:
    """Image ``old`` was renamed ``new``: those of ``layers`` named after it
    ("<old> points", or "<old> points [1]" where the person had a layer so named), or made
    by the widget and named for their role after an earlier name of the image (kept where
    a rename found the new name taken), are renamed "<new> points" and so on, so that they
    are found again when the image is picked again. Returns (name kept, new name) for those
    whose new names other layers have (they keep their names)."""
    taken = []
    for layer in layers:
        suffix = _suffix_to_follow(layer, old)
        if suffix is None or layer not in viewer.layers or layer.name == new + suffix:
            continue  # renamed by the person, removed, or named so already: leave it be
        if new + suffix in viewer.layers:
            taken.append((layer.name, new + suffix))
        else:
            layer.name = new + suffix
    return taken


def _suffix_to_follow(layer, old: str) -> str | None:
    """The suffix that ``layer``, one of image ``old``'s, keeps after the image's new name:
    its role where the widget made it and its name ends in that ("<earlier name> points
    [1]"), else its name's after ``old``; None where the person gave it another name."""
    role = layer.metadata.get(OWN_LAYER_KEY)
    if role in NAME_SUFFIXES and strip_taken_number(layer.name).endswith(role):
        return role
    return suffix_of(layer.name, old)


def earlier_image_name(viewer, image_layer, image: ImageMark) -> str | None:
    """The name ``image_layer`` had when the widget made the layers marked with it (see
    :func:`marked_role`) that are named after another name: the image was renamed while
    the Annotate panel was closed, so they (and its saved annotations) did not follow it.
    None where they are named after its name, or there are none, where they disagree, or
    where another image has that name: then a person renamed them (a Labels layer of the
    person's own, named after that other image, was renamed for this one)."""
    names = set()
    for layer in viewer.layers:
        role = marked_role(layer, image)
        name = strip_taken_number(layer.name)
        if role and name.endswith(role):
            names.add(name[: -len(role)])
    images = {other.name for other in viewer.layers if isinstance(other, Image)}
    if len(names) != 1 or image_layer.name in names or names & images:
        return None
    return names.pop()
