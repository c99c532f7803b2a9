"""Procedurally generated microscopy-like images with instance labels.

Used for the napari sample data, the tests, the offline "nano" generalist and
the demo, so the whole product runs without downloading anything. Objects are
randomly sized, rotated, textured ellipses that may touch; images get a
background gradient, blur and noise, and come as 8- or 16-bit data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SyntheticStyle:
    """How a synthetic data set looks."""

    n_objects: tuple[int, int] = (8, 20)  # min/max objects per image
    radius: tuple[float, float] = (8.0, 20.0)  # min/max semi-axis length, pixels
    elongation: tuple[float, float] = (1.0, 1.8)  # ratio of long to short semi-axis
    foreground: tuple[float, float] = (0.5, 1.0)  # object brightness range (background 0.1)
    texture: float = 0.15  # relative strength of intra-object texture
    blur_sigma: float = 1.0  # Gaussian blur, pixels
    noise: float = 0.05  # additive Gaussian noise, in units of the brightness range
    dark_objects: bool = False  # dark objects on a bright background (e.g. brightfield)
    irregularity: float = 0.0  # relative boundary wobble: 0 gives ellipses, 0.3 lobed blobs
    background: float = 0.1  # background brightness (before illumination gradient and noise)

    def __post_init__(self) -> None:
        for name in ("n_objects", "radius", "elongation", "foreground"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} must be (low, high) with 0 <= low <= high"
                )
        for name in ("texture", "blur_sigma", "noise", "irregularity", "background"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}; use a value >= 0")


NUCLEI = SyntheticStyle()
# A domain the nano generalist never sees: few large, elongated, dark, grainy cells.
DARK_CELLS = SyntheticStyle(
    n_objects=(4, 9), radius=(14.0, 30.0), elongation=(1.4, 2.6), texture=0.35,
    blur_sigma=1.5, noise=0.08, dark_objects=True,
)  # fmt: skip


def random_style(rng: np.random.Generator, shape: tuple[int, int] = (256, 256)) -> SyntheticStyle:
    """A random bright-object (fluorescence-like) style: what the nano generalist trains on.

    Varies object size and density (from a few large cells to many small touching
    nuclei), shape (round to elongated, smooth to lobed), contrast, texture, blur
    and noise. Never dark objects on a bright background: that stays DARK_CELLS's
    unseen domain. ``shape`` is the image size the object count is chosen for.
    """
    radius_low = float(rng.uniform(4.0, 20.0))
    radius = (radius_low, radius_low * float(rng.uniform(1.2, 2.0)))
    # roughly constant covered area: many small objects or few large ones
    density = float(rng.uniform(0.2, 1.3))
    n_high = int(np.clip(density * shape[0] * shape[1] / (np.pi * radius[1] ** 2 * 1.3), 2, 250))
    n_objects = (max(1, n_high // 2), n_high)
    fg_low = float(rng.uniform(0.2, 0.8))
    return SyntheticStyle(
        n_objects=n_objects,
        radius=radius,
        elongation=(1.0, float(rng.uniform(1.0, 2.5))),
        foreground=(fg_low, min(1.0, fg_low + float(rng.uniform(0.05, 0.5)))),
        texture=float(rng.uniform(0.0, 0.4)),
        blur_sigma=float(rng.uniform(0.5, 2.5)),
        noise=float(rng.uniform(0.01, 0.12)),
        irregularity=float(rng.uniform(0.0, 0.3)),
        background=float(rng.uniform(0.0, 0.15)),
    )


def _ellipse_mask(
    shape: tuple[int, int], rng: np.random.Generator, style: SyntheticStyle
) -> tuple[tuple[slice, slice], np.ndarray]:
    """A random (wobbly) ellipse: its bounding window in the image and its bool mask there."""
    center_r, center_c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    short = rng.uniform(*style.radius)
    long = short * rng.uniform(*style.elongation)
    angle = rng.uniform(0, np.pi)
    reach = long * (1.0 + 2.1 * style.irregularity) + 2  # bounds the largest wobble below
    r0, r1 = int(max(0, center_r - reach)), int(min(shape[0], center_r + reach + 1))
    c0, c1 = int(max(0, center_c - reach)), int(min(shape[1], center_c + reach + 1))
    rows, cols = np.ogrid[r0:r1, c0:c1]
    dr, dc = rows - center_r, cols - center_c
    u = dr * np.cos(angle) + dc * np.sin(angle)
    v = -dr * np.sin(angle) + dc * np.cos(angle)
    radius = np.sqrt((u / long) ** 2 + (v / short) ** 2)
    window = (slice(r0, r1), slice(c0, c1))
    if style.irregularity <= 0:
        return window, radius <= 1.0
    # low-frequency wobble of the boundary in polar angle: lobed, cell-like outlines
    theta = np.arctan2(v / short, u / long)
    wobble = np.zeros_like(theta)
    for k in (2, 3, 5):
        amplitude = rng.normal(scale=style.irregularity / k)
        amplitude = np.clip(amplitude, -2 * style.irregularity / k, 2 * style.irregularity / k)
        wobble += amplitude * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return window, radius <= 1.0 + wobble


def make_image(
    shape: tuple[int, int] = (256, 256),
    style: SyntheticStyle = NUCLEI,
    seed: int = 0,
    dtype: type = np.uint8,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one image and its instance labels.

    Returns:
        image: (H, W) array of ``dtype`` (uint8 uses 0..255, uint16 0..~40000).
        labels: (H, W) uint32 instance labels, 0 = background, ids 1..N consecutive.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint32)
    intensity = np.full(shape, style.background, dtype=np.float32)
    n_objects = int(rng.integers(style.n_objects[0], style.n_objects[1] + 1))
    n_placed = 0
    for _ in range(n_objects):
        window, mask = _ellipse_mask(shape, rng, style)
        mask &= labels[window] == 0  # touching, never overlapping
        if mask.sum() < 20:
            continue
        n_placed += 1
        labels[window][mask] = n_placed
        intensity[window][mask] = rng.uniform(*style.foreground)
    grain = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
    intensity *= 1.0 + style.texture * grain / (grain.std() + 1e-6) * (labels > 0)
    intensity += 0.1 * np.linspace(0, 1, shape[1], dtype=np.float32)[None, :]  # uneven illumination
    intensity = ndimage.gaussian_filter(intensity, style.blur_sigma)
    intensity += rng.normal(scale=style.noise, size=shape).astype(np.float32)
    if style.dark_objects:
        intensity = 1.2 - intensity
    intensity = np.clip(intensity, 0, 1.2) / 1.2
    top = 255 if dtype == np.uint8 else 40000
    image = np.rint(intensity * top).astype(dtype)
    return image, relabel_consecutive(labels)


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Map instance ids to 1..N in increasing id order (0 stays background)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels]


def make_dataset(
    n_images: int,
    shape: tuple[int, int] = (256, 256),
    style: SyntheticStyle = NUCLEI,
    seed: int = 0,
    dtype: type = np.uint8,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` (image, labels) pairs with seeds ``seed .. seed + n_images - 1``."""
    return [make_image(shape, style, seed + i, dtype) for i in range(n_images)]


def make_varied_dataset(
    n_images: int, shape: tuple[int, int] = (256, 256), seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` pairs, each of its own :func:`random_style`; every third one is 16-bit.

    Image ``i`` depends on ``(seed, i)`` only, so data sets with different seeds
    (e.g. training and held-out) never share an image.
    """
    pairs = []
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        style = random_style(rng, shape)
        dtype = np.uint16 if i % 3 == 2 else np.uint8
        pairs.append(make_image(shape, style, int(rng.integers(2**31)), dtype))
    return pairs
