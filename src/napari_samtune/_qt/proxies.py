"""The layers themselves behind the proxies napari hands a plugin opened from its menu."""

from __future__ import annotations


def unproxied(layer):
    """The layer itself where napari hands a plugin a proxy of it (a weak reference to a
    proxy made for one call would die at once, and a proxy's private names warn)."""
    return getattr(layer, "__wrapped__", layer)
