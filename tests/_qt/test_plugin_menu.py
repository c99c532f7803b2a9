"""Every dock widget opens as napari opens it from Plugins > SAM tune: ``Finetune SAM``
failed there with "TrainWidget.__init__() missing 1 required positional argument:
'viewer'" (napari injects the viewer by type annotation only), and the tests, which built
the widget themselves, never saw it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "napari.yaml"


def _widgets() -> list[str]:
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    return [widget["display_name"] for widget in manifest["contributions"]["widgets"]]


def test_the_manifest_lists_both_docks():
    assert _widgets() == ["Annotate with SAM", "Finetune SAM"]


@pytest.mark.parametrize("name", _widgets())
def test_each_dock_opens_from_the_plugins_menu(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-samtune", name)
    viewer.add_image(np.zeros((32, 32), np.uint8), name="cells")
    assert [layer.name for layer in widget.viewer.layers][0] == "cells"
    assert dock.name == f"{name} (napari-samtune)"
