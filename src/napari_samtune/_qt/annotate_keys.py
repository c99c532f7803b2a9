"""The Annotate panel's keys (C, Shift+C, T, U): bound on the viewer and on each image's
helper layers, taken over on the annotated image's own layer, and refused where the layer
selected belongs to another image than the one annotated.

A mixin of :class:`~napari_samtune._qt.annotate.AnnotateWidget` (it uses the widget's
``viewer``, ``session`` and actions), kept apart so each module stays short.
"""

from __future__ import annotations

import functools
import weakref

from napari.layers import Image
from napari.utils.notifications import show_info

from napari_samtune._qt.layer_names import OWN_IMAGE_KEY
from napari_samtune._qt.proxies import unproxied


class AnnotateKeysMixin:
    """The widget's keys and where they act."""

    def _key_actions(self) -> dict:
        return {"C": self.commit, "Shift-C": self.clear, "T": self.toggle_polarity, "U": self.undo}

    def _bind_keys(self, provider, image_layer=None) -> None:
        """The keys on ``provider``: the viewer, or a helper layer of ``image_layer``, whose
        keys act only while that image is annotated (its layers stay when another is). They
        hold the image weakly: removed, it is freed though its layers stay."""
        image = None if image_layer is None else weakref.ref(unproxied(image_layer))
        for key, action in self._key_actions().items():
            act = functools.partial(self._act_unless_other_image, action)
            if image is not None:
                act = functools.partial(self._act_on, image, provider, action)
            provider.bind_key(key, lambda _provider, act=act: act(), overwrite=True)

    def _take_image_keys(self, image_layer, take: bool) -> None:
        """While ``image_layer`` is annotated, the widget's keys act on its layer too: napari
        binds C on image layers to auto-contrast, which took the key when the image was the
        selected layer (C reset its contrast instead of committing). The layer's own bindings
        come back when another image is chosen or the panel closes."""
        if take:
            self._image_keys_before = {
                key: image_layer.bind_key(key, lambda _layer, act=act: act(), overwrite=True)
                for key, act in self._key_actions().items()
            }
            return
        for key, before in self._image_keys_before.items():
            image_layer.bind_key(key, before, overwrite=True)  # None: napari's again
        self._image_keys_before = {}

    def _act_on(self, image, helper, action) -> None:
        if self._shut_down:  # the panel was closed: its keys are no longer the widget's
            return
        image_layer = image()
        if image_layer is None or image_layer not in self.viewer.layers:
            show_info(
                f"layer {helper.name!r} belongs to an image that was removed: add the image "
                "again and pick it under Image to act on its prompts, or select a layer of "
                "the image annotated now"
            )
            return
        if self.session is not None and self.session.image_layer == image_layer:
            action()
            return
        self._say_belongs_elsewhere(helper.name, image_layer.name)

    def _act_unless_other_image(self, action) -> None:
        """A key the viewer got: the selected layer has no binding of its own. With another
        image selected than the one annotated, it would act on that one (U undid its last
        commit) while the person meant the image selected: said instead, as on that image's
        prompt layers."""
        selected = self.viewer.layers.selection.active
        if self.session is not None and self._another_images_layer(selected):
            return
        if not isinstance(selected, Image) or self.session is None:
            action()
            return
        if unproxied(selected) == unproxied(self.session.image_layer):
            action()
            return
        annotated = self.session.image_layer.name
        show_info(
            f"image {selected.name!r} is selected, not the image annotated now "
            f"({annotated!r}): pick {selected.name!r} under Image to annotate it, or select "
            f"a layer of {annotated!r}"
        )

    def _another_images_layer(self, selected) -> bool:
        """Whether ``selected`` is a layer the widget made for another image than the one
        annotated now (said so): a panel closed and opened again has no keys on those, and
        U there undid the annotated image's last commit."""
        mark = getattr(selected, "metadata", {}).get(OWN_IMAGE_KEY)
        own = str(getattr(unproxied(self.session.image_layer), "unique_id", "") or "")
        if not isinstance(mark, dict) or not own or mark.get("image layer") == own:
            return False
        image = next(
            (
                layer.name
                for layer in self.viewer.layers
                if str(getattr(layer, "unique_id", "")) == mark.get("image layer")
            ),
            "another image",
        )
        self._say_belongs_elsewhere(selected.name, image)
        return True

    def _say_belongs_elsewhere(self, layer_name: str, image_name: str) -> None:
        """Say that a key on layer ``layer_name`` of image ``image_name`` did nothing, as that
        image is not the one annotated now."""
        now = "no image" if self.session is None else f"{self.session.image_layer.name!r}"
        show_info(
            f"layer {layer_name!r} belongs to image {image_name!r}, not to the image "
            f"annotated now ({now}): pick {image_name!r} under Image to act on its prompts, "
            "or select a layer of the image annotated now"
        )
