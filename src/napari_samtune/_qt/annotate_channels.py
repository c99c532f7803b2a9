"""The Annotate panel's channel choice for an image with channels on its first axis."""

from __future__ import annotations

from napari.utils.notifications import show_warning

from napari_samtune._qt.image_planes import channels_first_refusal
from napari_samtune._qt.layer_placement import sliced_point
from napari_samtune._qt.proxies import unproxied


class AnnotateChannelsMixin:
    """'channels on first axis' and the channel combo box of :class:`AnnotateWidget`."""

    def _on_channels_first(self, checked: bool) -> None:
        refusal = channels_first_refusal(self.image_layer) if checked else ""
        if refusal:  # the image stays annotated as it was
            check = self.ui.channels_first_check
            check.blockSignals(True)
            check.setChecked(False)
            check.blockSignals(False)
            show_warning(refusal)
            return
        if self.image_layer is not None:
            self._channels_first_of[unproxied(self.image_layer)] = checked
        self._fill_channels()
        self._on_image_choice()

    def _tick_as_chosen_for(self, layer) -> None:
        """Set 'channels on first axis' as it was chosen for ``layer`` (off for an image
        never ticked): one image's tick read a z-stack chosen next as channels, unsaid, and
        refused 2D and RGB images until it was unticked by hand."""
        check = self.ui.channels_first_check
        wanted = self._channels_first_of.get(unproxied(layer), False)
        if check.isChecked() != wanted:
            check.blockSignals(True)
            check.setChecked(wanted)
            check.blockSignals(False)

    def _fill_channels(self) -> None:
        """Offer the channels of the chosen image (when 'channels on first axis' is on)."""
        combo, checked = self.ui.channel_combo, self.ui.channels_first_check.isChecked()
        layer = self.image_layer
        has_channels = layer is not None and not channels_first_refusal(layer)
        n_channels = layer.data.shape[0] if (checked and has_channels) else 0
        if combo.count() == n_channels + (n_channels >= 3) and combo.isEnabled() == checked:
            return  # same channel count: keep the user's choice
        combo.blockSignals(True)
        combo.clear()
        for channel in range(n_channels):
            combo.addItem(f"channel {channel}", (channel,))
        if n_channels >= 3:
            combo.addItem("channels 0, 1, 2 as RGB", (0, 1, 2))
        if n_channels:
            combo.setCurrentIndex(self._channel_shown(layer, n_channels))
        combo.setEnabled(checked)
        combo.blockSignals(False)

    def _channel_shown(self, layer, n_channels: int) -> int:
        """The channel the viewer's slider shows (napari starts it mid-axis), so that SAM
        segments what the user sees."""
        shown = sliced_point(layer, self.viewer.dims.point)[0]
        return int(min(max(round(float(shown)), 0), n_channels - 1))
