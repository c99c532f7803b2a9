"""The viewer as napari hands it to a dock widget opened from the Plugins menu."""

from __future__ import annotations

from napari.utils._proxies import PublicOnlyProxy


def as_plugin_sees_it(viewer):
    """A proxy of ``viewer`` whose layers, events and methods' results are proxies too
    (``is`` between such a layer and the layer itself fails; private names warn)."""
    return PublicOnlyProxy(viewer)
