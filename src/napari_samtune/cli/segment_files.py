"""The files ``samtune segment`` reads and writes: the image, ``-o``'s name checked against
the image and the annotation widget's files, and each image's labels file in a folder.
Qt-free, used by :mod:`napari_samtune.cli.segment`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_samtune.core.label_files import labels_file_name
from napari_samtune.core.tiff_files import TIFF_SUFFIXES, read_tiff_with_axes


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """The pixels of a TIFF file, and the axes the file names (:func:`read_tiff_with_axes`)."""
    check_image_file(path)
    return read_tiff_with_axes(path)


def check_image_file(path: Path) -> None:
    """Refuse an image ``path`` that is no file: missing, or a pipe or device (a TIFF is read
    by seeking in it), which was said not to exist."""
    if not path.exists():
        raise ValueError(f"image {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(
            f"image {str(path)!r} is not a regular file (a pipe or a device); save the image "
            "as a TIFF file and give that"
        )


def check_labels_name(output: Path, image: Path, example: str, overwrite: bool) -> None:
    """``-o`` must name a TIFF file (what is written, and what training pairs) other than
    the image itself, which would be lost, and not existing unless ``overwrite``."""
    if output.suffix.lower() not in TIFF_SUFFIXES:
        folder = f", or, for a folder, write it with a trailing /: {output}/"
        folder = "" if output.suffix else folder  # no suffix: perhaps a folder meant
        raise ValueError(
            f"-o {str(output)!r} does not end in .tif: labels are written as a TIFF file; "
            f"give e.g. {output.with_name(example)}{folder}"
        )
    if output.resolve() == image.resolve():
        raise ValueError(
            f"-o {str(output)!r} is the input image: writing the labels there would destroy "
            f"it; give another name, e.g. {output.with_name(example)}"
        )
    if output.exists() and not overwrite:  # labels corrected since would be lost
        raise ValueError(
            f"-o {str(output)!r} exists already; pass --overwrite to replace it, or give "
            "another name"
        )
    check_record_free(output, image)


def check_record_free(output: Path, image: Path) -> None:
    """Refuse labels ``output`` of ``image`` whose record (``<name>.prompts.json``) is that
    of other labels beside it: ``cell.tif`` (an ``-o``) and ``cell.labels.tif`` (the
    annotation widget's, a folder's output) share ``cell.prompts.json``, and writing it
    would lose their prompts and image fingerprint (the widget, batch reruns and training
    would then take them for another image's)."""
    from napari_samtune.core.label_files import LABELS_SUFFIX, PROMPTS_SUFFIX, prompts_path_for

    record = prompts_path_for(output)
    stem = record.name[: -len(PROMPTS_SUFFIX)]
    owner = record.with_name(stem + LABELS_SUFFIX)
    if output.name == owner.name:  # a folder's output: an -o's labels beside it?
        others = [record.with_name(stem + suffix) for suffix in TIFF_SUFFIXES]
        owner = next((o for o in others if o.is_file() and o.resolve() != image.resolve()), None)
        if owner is None or output.exists() or not record.is_file():  # output's own record
            return
        raise ValueError(
            f"{image.name}'s labels {str(output)!r} would write their record to "
            f"{str(record)!r}, which is the record of the labels {str(owner)!r} (written "
            "with -o; their prompts and image fingerprint would be lost); write into another "
            f"folder, or move {owner.name} and {record.name} out of {str(output.parent)!r}"
        )
    if not (record.is_file() and owner.is_file()):
        return
    raise ValueError(
        f"-o {str(output)!r} would write its record to {str(record)!r}, which is the record "
        f"of the labels {str(owner)!r} (their prompts and image fingerprint would be lost); "
        f"give another name, e.g. {output.with_name(output.stem + '-cli' + output.suffix)}, "
        f"or -o {str(owner)!r} --overwrite to replace those labels"
    )


def output_for(image: Path, out_dir: Path) -> Path:
    """``<image>.labels.tif`` in ``out_dir``, or, where that file was saved in napari for
    another image of the same name (its record's fingerprint), ``<image>-<fingerprint>``
    as the annotation widget names it: a namesake's annotations are never skipped as done
    nor overwritten."""
    from napari_samtune.core.label_files import image_fingerprint, saved_fingerprint

    output = out_dir / labels_file_name(image.stem)
    saved = saved_fingerprint(output) if output.is_file() else None
    if saved is None:
        return output
    try:
        fingerprint = image_fingerprint(read_image(image)[0])
    except ValueError:  # reported when the image is segmented
        return output
    if saved == fingerprint:
        return output
    return namesake_output(out_dir, image, fingerprint)


def namesake_output(out_dir: Path, image: Path, fingerprint: str) -> Path:
    """``<image>-<fingerprint>.labels.tif`` in ``out_dir``: where an image's labels go when
    its own name there holds another image's, as the annotation widget names them."""
    from napari_samtune.core.label_files import namesake_name

    return out_dir / labels_file_name(namesake_name(image.stem, fingerprint))
