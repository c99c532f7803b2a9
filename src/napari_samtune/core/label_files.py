"""How annotation label files are named, so every part of the loop finds them.

The annotation widget autosaves the labels of an image layer named ``name`` as
``<safe_stem(name)>.labels.tif``; ``samtune segment`` names its outputs for several
images the same way, so the widget restores them for correcting; training pairs
them with their images (:func:`napari_samtune.core.data.pair_files`, which compares
names through :func:`safe_stem` as well).
"""

from __future__ import annotations

import re

LABELS_STEM_SUFFIX = ".labels"  # what the file stem ends in (a label suffix for pairing)
LABELS_SUFFIX = LABELS_STEM_SUFFIX + ".tif"


def safe_stem(image_name: str) -> str:
    """A file-name-safe version of a layer or file name (letters, digits, ``._-``; any run
    of other characters becomes ``_``), e.g. ``"cell 1"`` -> ``"cell_1"``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", image_name).strip("._")
    return stem or "image"


def labels_file_name(image_name: str) -> str:
    """``"cell 1"`` -> ``"cell_1.labels.tif"``: the labels of an image (layer) of that name."""
    return safe_stem(image_name) + LABELS_SUFFIX
