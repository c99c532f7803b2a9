"""The panel's words for a held-out part without objects (see tests/core/test_split_left_out.py)."""

from __future__ import annotations

from napari_samtune._qt.train_run import held_out_message
from napari_samtune.core.validation_split import EmptyPartError


def test_the_panel_says_it_in_its_own_terms():
    told = held_out_message(EmptyPartError("a.tif", "rows 58..63", "validation", ["b.tif"]))
    assert told.startswith(
        "'a.tif' is the only training image with objects (the 1 other pair(s) given have none "
        "and are left out: b.tif), so part of it is held out"
    )


def test_the_part_kept_for_training_is_not_called_held_out():
    """ "rows 0..114 were held out for training": they were kept for it."""
    error = str(EmptyPartError("a.tif", "rows 0..114", "training"))
    assert "rows 0..114 were kept for training, but that part has no objects" in error
    assert "held out for training" not in error
