"""napari sample data: generated images with instance labels (no downloads)."""

from __future__ import annotations

from napari_samtune.core.synthetic import DARK_CELLS, NUCLEI, SyntheticStyle, make_image


def _sample(style: SyntheticStyle, name: str, seed: int) -> list[tuple]:
    image, labels = make_image((512, 512), style, seed=seed)
    return [
        (image, {"name": name}, "image"),
        (labels, {"name": f"{name} labels"}, "labels"),
    ]


def sample_nuclei() -> list[tuple]:
    """A 512x512 uint8 image of synthetic nuclei and its instance labels."""
    return _sample(NUCLEI, "synthetic nuclei", seed=1)


def sample_dark_cells() -> list[tuple]:
    """A 512x512 uint8 image of dark, elongated synthetic cells and its instance labels."""
    return _sample(DARK_CELLS, "synthetic dark cells", seed=2)
