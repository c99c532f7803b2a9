"""What ``samtune segment`` shares between one image and a batch: the model it loads, the
automatic segmentation's settings, and the labels it writes with their record."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_samtune.cli.console import shell_path
from napari_samtune.cli.segment_files import namesake_output
from napari_samtune.cli.segment_planes import download_bar

AUTO_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_area")
# The core's parameter names as the options that set them, for its error messages.
OPTION_NAMES: dict[str, str] = {
    **{name: "--" + name.replace("_", "-") for name in AUTO_OPTIONS},
    "channel_axis": "--channel-axis",
    "channels": "--channels",
    "device": "--device",
}

# an image's labels written by someone else (the annotation widget) while it was segmented
APPEARED = (
    "{} was saved meanwhile (by the annotation widget or another run?) with other labels, and "
    "is kept; --overwrite replaces it"
)


def auto_config(args: argparse.Namespace, img_size: int | None = None):
    """--auto's settings: the defaults for a model of input size ``img_size`` (SAM's while
    no model is loaded yet, to check the options early), then the options given."""
    from napari_samtune.core.automatic import AutoSegmentConfig, default_auto_config

    base = AutoSegmentConfig() if img_size is None else default_auto_config(img_size)
    overrides = {name: getattr(args, name) for name in AUTO_OPTIONS}
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def load_segmenter(args: argparse.Namespace):
    """The Segmenter of ``--model`` on ``--device``, and the model's name: a weights file's
    full path (every run's export is a ``model.pth``: its stem told them apart in no record)."""
    from napari_samtune.core.devices import resolve_device
    from napari_samtune.core.models import is_registered_name, load_model
    from napari_samtune.core.predict import Segmenter

    device = resolve_device(args.device)
    with download_bar(not args.no_progress) as progress:
        loaded = load_model(args.model, device=device, progress=progress)
    segmenter = Segmenter(
        loaded.sam, model_id=loaded.model_id, device=device, use_disk_cache=not args.no_cache
    )
    by_file = loaded.path is not None and not is_registered_name(str(args.model))
    return segmenter, str(loaded.path.resolve()) if by_file else loaded.name


@dataclass(frozen=True)
class Written:
    """Labels written by :func:`write_labels`."""

    path: Path  # the labels file (beside a namesake's saved meanwhile, where it moved)
    n_objects: int
    n_planes: int  # planes of a stack that hold some object (0 for a 2D image)


def write_labels(
    path: Path,
    labels: np.ndarray,
    image: Path,
    pixels,
    made: dict,
    overwrite: bool,
    beside_namesakes: bool = False,
) -> Written | None:
    """Write labels atomically, with the annotation widget's record next to them
    (``<name>.prompts.json``: the fingerprint of the image's ``pixels``, so that an image of
    the same name elsewhere is told apart, and ``made``: how the objects were made).

    Checked under the folder's lock: unless ``overwrite``, nothing is written where ``path``
    exists (saved since the batch began, by the annotation widget?). With
    ``beside_namesakes`` (``path`` is named after the image in a folder), labels of another
    image of the same name (its fingerprint) saved there since are never replaced, not even
    with ``overwrite``: these go beside them as ``<name>-<fingerprint>``, as a later run
    would write them. Returns None where nothing is written."""
    from napari_samtune.core.annotation_files import (
        ChangedMeanwhile,
        unchanged_since,
        write_annotations,
    )
    from napari_samtune.core.label_files import image_fingerprint

    ids = np.unique(labels)
    ids = ids[ids > 0]
    planes = np.flatnonzero(labels.reshape(len(labels), -1).any(1)) if labels.ndim == 3 else []
    objects = {"ids": ids.tolist(), "planes": [int(p) for p in planes], **made}
    fingerprint = image_fingerprint(pixels)
    record = {
        "image_fingerprint": fingerprint,
        "objects": [objects],  # one run made them all (an empty one says so too)
        "prompts": {"points": [], "point_labels": [], "boxes": []},
    }
    written = Written(path, len(ids), len(planes))
    if not overwrite:
        check = unchanged_since(None)
    else:  # a file named on the command line is replaced, as asked
        check = _no_other_image_s(fingerprint) if beside_namesakes else None
    try:
        write_annotations(path, image.stem, labels, record, check)
    except ChangedMeanwhile:
        # the same labels, written by another samtune segment run on this image: done (both
        # runs of a folder in parallel failed every image, "saved by the annotation widget?")
        if _holds(path, labels):
            return written
        beside = namesake_output(path.parent, image, fingerprint)
        if not beside_namesakes or beside == path or not _another_image_s(path, fingerprint):
            return None
        return write_labels(beside, labels, image, pixels, made, overwrite)
    return written


def _another_image_s(path: Path, fingerprint: str) -> bool:
    """Whether the labels file ``path`` was saved for other pixels than ``fingerprint``'s."""
    from napari_samtune.core.label_files import saved_fingerprint

    saved = saved_fingerprint(path) if path.is_file() else None
    return saved is not None and saved != fingerprint


def _no_other_image_s(fingerprint: str):
    """A ``before_write`` check: ``--overwrite`` replaces the labels of this image, or of
    none recorded, never those another image of the same name got since the batch chose the
    file (the annotation widget's, another batch's)."""
    from napari_samtune.core.annotation_files import ChangedMeanwhile

    def check(labels_path: Path) -> None:
        if _another_image_s(labels_path, fingerprint):
            raise ChangedMeanwhile(labels_path)

    return check


def _holds(path: Path, labels: np.ndarray) -> bool:
    """Whether the labels file ``path`` holds ``labels`` (read as training reads it)."""
    from napari_samtune.core.tiff_files import read_label_tiff

    try:
        return bool(np.array_equal(read_label_tiff(path), labels))
    except (OSError, ValueError):
        return False


def made_by(args: argparse.Namespace, model_name: str, config, weights_id: str) -> dict:
    """How ``samtune segment`` made the objects, for the labels' record: the model by its
    name and its weights (a continued run gives a name other weights)."""
    from dataclasses import asdict

    model = {"model": model_name, "weights_id": weights_id}
    if args.auto:
        return {"source": "automatic", **model, "settings": asdict(config)}
    prompts = args.points if args.points is not None else args.boxes
    kind = "points" if args.points is not None else "boxes"
    return {"source": f"{kind} file", **model, "prompts_file": str(prompts)}


def using(segmenter, model_name: str) -> str:
    return f"model {shell_path(model_name)}, device {segmenter.model.device}"


def objects_text(n_objects: int) -> str:
    return f"{n_objects} object" if n_objects == 1 else f"{n_objects} objects"
