"""What an image's annotations are named (``<name>.labels.tif``, a namesake's
``<name>-<fingerprint>.labels.tif``, the record ``<name>.prompts.json`` beside them) and the
fingerprint of the pixels they were saved for, which tells images of one name apart.
How label files pair with their images: :mod:`napari_samtune.core.label_files`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from napari_samtune.core.file_names import safe_stem

LABELS_STEM_SUFFIX = ".labels"  # what the file stem ends in (a label suffix for pairing)
LABELS_SUFFIX = LABELS_STEM_SUFFIX + ".tif"
PROMPTS_SUFFIX = ".prompts.json"  # the annotation widget's record next to <name>.labels.tif
FINGERPRINT_SAMPLES = 1 << 20  # pixels hashed at most: an even sample of larger images
LAZY_FINGERPRINT_BYTES = 64 << 20  # lazy (dask, zarr) images up to this size are read
# Label files are often named after their image plus one of these.
LABEL_SUFFIXES = (
    *("_labels", "_label", "_masks", "_mask", "_seg", "_gt", "-labels", "-mask"),
    LABELS_STEM_SUFFIX,  # what the annotation widget autosaves: <image>.labels.tif
)


def labels_file_name(image_name: str) -> str:
    """``"cell 1"`` -> ``"cell_1.labels.tif"``: the labels of an image (layer) of that name."""
    return safe_stem(image_name) + LABELS_SUFFIX


def namesake_name(image_name: str, fingerprint: str, attempt: int = 1) -> str:
    """The name an image's annotations take where another image's have its own name:
    ``<name>-<fingerprint>``; ``<name>-<fingerprint>-<attempt>`` where that (and those of
    the attempts before) could not be read back (:data:`NAMESAKE_STEM` reads both back
    when pairing)."""
    name = f"{image_name}-{fingerprint}"
    return name if attempt == 1 else f"{name}-{attempt}"


def prompts_path_for(labels_path: str | Path) -> Path:
    """The annotation record (JSON) saved next to a labels TIFF: ``<name>.prompts.json``."""
    labels_path = Path(labels_path)
    name = labels_path.name
    stem = name[: -len(LABELS_SUFFIX)] if name.endswith(LABELS_SUFFIX) else labels_path.stem
    return labels_path.with_name(stem + PROMPTS_SUFFIX)


def image_fingerprint(data) -> str:
    """A 16-digit hex hash of an image's shape, dtype and pixels (at most
    FINGERPRINT_SAMPLES of them, evenly spaced: milliseconds for any size). Arrays not in
    memory (dask, zarr) of up to :data:`LAZY_FINGERPRINT_BYTES` are read, and hash as
    the same pixels in memory do; of larger ones only the shape and dtype are hashed
    (their samples would read every chunk). Lazy images hashed by shape alone had other
    images' annotations of that name restored, and written into."""
    digest = hashlib.blake2b(repr((tuple(data.shape), str(data.dtype))).encode(), digest_size=8)
    if not isinstance(data, np.ndarray):
        data = _read_if_small(data)
    if isinstance(data, np.ndarray) and data.size:
        step = max(1, data.size // FINGERPRINT_SAMPLES)
        digest.update(np.ascontiguousarray(data.flat[::step]))  # no copy of the whole image
    return digest.hexdigest()


def _read_if_small(data):
    """A lazy array as a numpy array, where it is small enough to read here; else itself."""
    try:
        size = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
        return np.asarray(data) if 0 < size <= LAZY_FINGERPRINT_BYTES else data
    except (TypeError, ValueError, OSError, MemoryError):  # unreadable: told by shape
        return data


def saved_fingerprint(labels_path: str | Path) -> str | None:
    """The fingerprint of the image an annotation file was saved for (its record's), or
    None: no record (e.g. ``samtune segment`` output), an older one, or unreadable."""
    try:
        record = json.loads(prompts_path_for(labels_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = record.get("image_fingerprint") if isinstance(record, dict) else None
    return found if isinstance(found, str) else None
