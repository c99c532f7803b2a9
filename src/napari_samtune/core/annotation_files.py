"""Save and load annotations: the labels as TIFF, the prompts and object records as JSON.

The annotation widget autosaves with these, and ``samtune segment`` writes the same two
files, so either's output opens in the other and pairs for training. For an image named
``name`` the folder holds

* ``<name>.labels.tif``: uint32 instance labels, (H, W) or (Z, H, W), zlib-compressed
  (named by :mod:`napari_samtune.core.label_files`);
* ``<name>.prompts.json``: ``{"format": FORMAT, "format_version": 1, "image": name,
  "shape": [...], "objects": [{"ids", "planes", "source", "model", "weights_id",
  "points", "point_labels", "boxes"}, ...], "prompts": {"points", "point_labels",
  "boxes"}}``
  with coordinates in napari layer order, (row, col) or (plane, row, col).

Both files are written atomically (temporary file + rename), so a crash during a save
leaves the previous save intact.

Names repeat across experiments (``Image_001.tif``), and the default folder is shared by
all of them. The record therefore carries an ``image_fingerprint`` (see
:func:`napari_samtune.core.label_files.image_fingerprint`), and an image whose name is
taken by another image's annotations saves under ``<name>-<fingerprint>`` instead
(:func:`save_name`): neither overwrites the other, and training pairs each image with its
own (:func:`napari_samtune.core.label_files.choose_namesake`).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

from napari_samtune.core.checkpoints import atomic_write, first_line, remove_abandoned_writes
from napari_samtune.core.label_files import (
    LABELS_SUFFIX,
    PROMPTS_SUFFIX,
    labels_file_name,
    namesake_name,
    prompts_path_for,
    safe_stem,
    saved_fingerprint,
)
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.tiff_files import float_labels_problem, read_label_tiff

FORMAT = "napari-samtune-annotations"
FORMAT_VERSION = 1
ANNOTATIONS_ENV = "SAMTUNE_ANNOTATIONS_DIR"
SAME_IMAGE_SCAN_LIMIT = 2000  # records looked at for an image's saves under other names
_FINGERPRINT_FIELD = re.compile(r'"image_fingerprint":\s*"([0-9a-f]+)"')
MAX_ID = int(np.iinfo(np.uint32).max)  # labels files are uint32


class ChangedMeanwhile(OSError):
    """The labels file was written by someone else (a second napari, ``samtune segment``)
    between choosing it for a save and the save itself: nothing was written."""

    def __init__(self, labels_path: Path) -> None:
        super().__init__(
            f"{labels_path} was written by another program (or napari) just as this save "
            "began; nothing was saved over it: save again"
        )
        self.labels_path = labels_path


def file_state(path: str | Path) -> tuple[int, int, int] | None:
    """(modification time in ns, size, inode) of ``path``, or None where it is not there."""
    try:
        status = os.stat(Path(path))
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino


def unchanged_since(state: tuple[int, int, int] | None) -> Callable[[Path], None]:
    """A ``before_write`` check for :func:`write_annotations`: the labels file must still be
    in ``state`` (:func:`file_state`, None: absent), as it was when the save chose it."""

    def check(labels_path: Path) -> None:
        if file_state(labels_path) != state:
            raise ChangedMeanwhile(labels_path)

    return check


def default_annotation_folder() -> Path:
    """``$SAMTUNE_ANNOTATIONS_DIR`` (``~`` expanded), else ``annotations/`` next to the user
    models folder."""
    env = os.environ.get(ANNOTATIONS_ENV)
    return Path(env).expanduser() if env else user_models_dir().parent / "annotations"


def starting_annotation_folder() -> Path:
    """Where the annotation widget starts: ``$SAMTUNE_ANNOTATIONS_DIR`` when set, else the
    folder chosen in the widget's last session, if it is still there (chosen by hand, it was
    forgotten at the next start, and the annotations saved there looked lost), else
    :func:`default_annotation_folder`."""
    from napari_samtune.core.user_settings import ANNOTATION_FOLDER, kept_folder

    chosen = None if os.environ.get(ANNOTATIONS_ENV) else kept_folder(ANNOTATION_FOLDER)
    return chosen or default_annotation_folder()


def annotation_paths(folder: str | Path, image_name: str) -> tuple[Path, Path]:
    """The labels TIFF and prompts JSON paths for ``image_name`` in ``folder``."""
    folder = Path(folder)
    return folder / labels_file_name(image_name), folder / (safe_stem(image_name) + PROMPTS_SUFFIX)


def saved_for_another_image(labels_path: Path, fingerprint: str, shape: tuple) -> bool:
    """Whether an existing annotation file belongs to another image, or to this image read
    with other axes (a (3, H, W) image as a stack, then as channels): its record names
    another fingerprint, or its labels have another shape (files without a record, e.g.
    from ``samtune segment``, are told apart by the shape alone)."""
    saved = saved_fingerprint(labels_path)
    if saved is not None and saved != fingerprint:
        return True
    try:
        return _saved_shape(labels_path) != tuple(shape)
    except Exception:  # unreadable (see unreadable_reason): never save over it
        return True


def unreadable_reason(labels_path: Path) -> str | None:
    """Why ``labels_path`` cannot be read as a TIFF (a damaged or half-written file), or
    None when its header and first series read."""
    try:
        _saved_shape(labels_path)
    except Exception as err:  # tifffile raises many kinds on garbage
        return f"{type(err).__name__}: {first_line(str(err))}"
    return None


def saved_shape(labels_path: Path) -> tuple[int, ...] | None:
    """The shape of the labels in a TIFF, from its header, or None when it cannot be read."""
    try:
        return _saved_shape(labels_path)
    except Exception:  # tifffile raises many kinds on garbage (see unreadable_reason)
        return None


def _saved_shape(labels_path: Path) -> tuple[int, ...]:
    """The shape of the labels in a TIFF, from its header (the pixels are not read)."""
    with tifffile.TiffFile(labels_path) as tif:
        return tuple(tif.series[0].shape)


def same_image_saves(
    folder: str | Path,
    fingerprint: str,
    shape: tuple,
    exclude: tuple[Path, ...] = (),
    newer_than: float | None = None,
) -> list[Path]:
    """Labels files in ``folder`` (but ``exclude``) saved for the image ``fingerprint``,
    whose labels have ``shape``, newest first: an image's annotations saved under another
    name (its file renamed or copied since), which autosave, finding files by name, does not
    see. Of the :data:`SAME_IMAGE_SCAN_LIMIT` newest records at most (a folder shared by
    many experiments), each read only as far as its fingerprint (near its start); with
    ``newer_than`` (a modification time), of the records written since only."""
    try:
        records = [e for e in os.scandir(folder) if e.name.endswith(PROMPTS_SUFFIX)]
    except OSError:  # no folder yet, or not readable: nothing saved there to offer
        return []
    if newer_than is not None:
        records = [e for e in records if _modified(e) > newer_than]
    records.sort(key=_modified, reverse=True)
    found = []
    for entry in records[:SAME_IMAGE_SCAN_LIMIT]:
        labels = Path(folder) / (entry.name[: -len(PROMPTS_SUFFIX)] + LABELS_SUFFIX)
        if labels in exclude or _record_fingerprint(entry.path, labels) != fingerprint:
            continue
        if saved_shape(labels) == tuple(shape):
            found.append(labels)
    return found


def _modified(entry: os.DirEntry) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def _record_fingerprint(record_path: str, labels_path: Path) -> str | None:
    """The fingerprint a record names, from its first 4 KB where it is (as every record
    written here), else from the whole record."""
    try:
        with open(record_path, "rb") as file:
            head = file.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return None
    match = _FINGERPRINT_FIELD.search(head)
    return match.group(1) if match else saved_fingerprint(labels_path)


def save_name(folder: str | Path, image_name: str, fingerprint: str, shape: tuple) -> str:
    """The name the annotations of this image are saved under in ``folder``: the image's own
    name, unless that file belongs to another image; then ``<name>-<fingerprint>``."""
    labels_path, _ = annotation_paths(folder, image_name)
    if labels_path.is_file() and saved_for_another_image(labels_path, fingerprint, shape):
        return namesake_name(image_name, fingerprint)
    return image_name


def save_annotations(
    folder: str | Path,
    image_name: str,
    labels: np.ndarray,
    record: dict,
    file_name: str | None = None,
    before_write: Callable[[Path], None] | None = None,
) -> tuple[Path, Path]:
    """Atomically write ``labels`` (integer (H, W) or (Z, H, W)) and ``record`` (JSON-ready)
    as the annotations of ``image_name``, under ``file_name`` (default: ``image_name``; see
    :func:`save_name`); ``before_write`` as in :func:`write_annotations`.

    Returns the paths of the TIFF and the JSON file.
    """
    labels_path, _ = annotation_paths(folder, file_name or image_name)
    return write_annotations(labels_path, image_name, labels, record, before_write)


def write_annotations(
    labels_path: str | Path,
    image_name: str,
    labels: np.ndarray,
    record: dict,
    before_write: Callable[[Path], None] | None = None,
) -> tuple[Path, Path]:
    """Atomically write ``labels`` (integer (H, W) or (Z, H, W)) to ``labels_path`` and
    ``record`` (JSON-ready; the format, ``image_name`` and the shape added) next to it, to
    :func:`napari_samtune.core.label_files.prompts_path_for`. Returns both paths.

    ``before_write(labels_path)`` runs while the folder is locked against other saves, just
    before writing (e.g. :func:`unchanged_since`); what it raises leaves both files as they
    were."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (2, 3):
        raise ValueError(
            f"labels have dtype {labels.dtype} and shape {labels.shape!r}; "
            "expected integer instance labels of shape (H, W) or (Z, H, W)"
        )
    labels_path = Path(labels_path)
    prompts_path = prompts_path_for(labels_path)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "image": image_name,
        "shape": list(labels.shape),
        **record,
    }
    if _beyond_uint32(labels):  # uint32 would wrap them onto other ids
        raise ValueError(
            f"labels hold ids up to {int(labels.max())}, beyond the {MAX_ID} a labels file "
            "keeps; renumber the objects 1, 2, ... (e.g. skimage.segmentation."
            "relabel_sequential) before saving"
        )
    text = json.dumps(document, indent=1)  # first: a record that cannot be saved changes nothing
    data = labels.astype(np.uint32, copy=False)

    def labels_then_record(tmp: Path) -> None:
        # one gray page per plane: without it, tifffile stores (3, H, W) and (4, H, W)
        # stacks as one RGB(A) page, which Pillow and Fiji read as colour, not as planes
        tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack")
        # the record goes in once its labels are written, and they follow it at once: a disk
        # that filled between the two left new labels beside the old record (or none), which
        # the next run took for another image's, or refused as "exists"
        atomic_write(prompts_path, lambda record: record.write_text(text, encoding="utf-8"))

    with folder_locked(labels_path.parent):  # another save of the pair waits for this one
        if before_write is not None:
            before_write(labels_path)
        atomic_write(labels_path, labels_then_record)
    for path in (labels_path, prompts_path):  # left by a save killed mid-write (hidden, as
        # large as the labels: they stayed for ever); a younger one may be a save going on
        remove_abandoned_writes(path.parent, f".{glob.escape(path.name)}.*.tmp")
    return labels_path, prompts_path


@contextmanager
def folder_locked(folder: Path) -> Iterator[None]:
    """Hold ``folder`` (an flock on the folder itself: no file left in it) while a labels
    file and its record are written: two saves of one file at once (the widget's autosave
    and samtune segment, two processes) left the labels of one beside the record of the
    other, 48 times in 150. Unlocked where the folder does not exist yet (nothing else
    writes there) or cannot be locked (Windows, some network disks)."""
    try:
        import fcntl

        handle = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # ENOLCK, EOPNOTSUPP: as without
            pass
        yield
    finally:
        os.close(handle)  # and the lock with it


def load_annotations(labels_path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a labels TIFF (and its JSON record when present; else an empty record).

    Returns:
        labels: uint32 array (H, W) or (Z, H, W); a file from another tool with ids beyond
            uint32 has those objects given the lowest ids free, in the order of their ids
            (the other objects keep theirs).
        record: the saved JSON document, or ``{}``.
    """
    labels_path = Path(labels_path)
    if not labels_path.is_file():
        raise FileNotFoundError(f"no annotation file at {str(labels_path)!r}")
    labels = read_label_tiff(labels_path)
    if labels.dtype == bool:  # a foreground mask as a bool image saves it: one id, 1
        labels = labels.view(np.uint8)
    problem = _not_labels(labels)
    if problem:
        raise ValueError(
            f"{labels_path.name!r} holds {labels.dtype} data that are not instance labels: "
            f"{problem}"
        )
    if _beyond_uint32(labels):  # uint32 would wrap them onto other ids
        labels = _with_free_ids(labels)
    return labels.astype(np.uint32, copy=False), load_record(labels_path)


def _with_free_ids(labels: np.ndarray) -> np.ndarray:
    """``labels`` whose ids beyond uint32 get the lowest ids free, in the order of their
    ids; the others keep theirs (all were renumbered 1, 2, ..., unsaid: 7 and 12 of a file
    with one id of 2**33 were loaded as 1 and 2)."""
    ids = np.unique(labels)
    small, big = ids[ids <= MAX_ID], ids[ids > MAX_ID]
    free = np.setdiff1d(np.arange(1, len(ids) + 1, dtype=np.int64), small)[: len(big)]
    beyond = labels > MAX_ID
    kept = np.where(beyond, 0, labels).astype(np.uint32)
    kept[beyond] = free[np.searchsorted(big, labels[beyond])]
    return kept


def _not_labels(labels: np.ndarray) -> str:
    """Why ``labels`` read from a file are not instance labels, or ""."""
    if np.issubdtype(labels.dtype, np.floating):  # read_label_tiff kept them: say why
        return float_labels_problem(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        return "annotations are whole-number ids, 0 for the background"
    lowest = labels.min(initial=0)
    if lowest < 0:
        return f"they hold negative ids (the lowest is {lowest}); use ids >= 0"
    return ""


COUNT_BY_BINS_UP_TO = 1 << 20  # highest id counted by bins (8 MB of them per plane)


def count_objects(labels: np.ndarray) -> int:
    """How many different ids other than 0 (background) integer ``labels`` (H, W) or
    (Z, H, W) hold. By each plane's ``np.bincount`` when the ids fit
    ``COUNT_BY_BINS_UP_TO``: 0.8 s for 60 x 2048 x 2048 uint32 labels, where
    ``np.unique``'s sort of every pixel took 6.9 s."""
    labels = np.asarray(labels)
    highest = int(labels.max(initial=0))
    if labels.size == 0 or highest == 0:
        return 0
    if labels.min(initial=0) < 0 or highest > COUNT_BY_BINS_UP_TO:
        return int(np.count_nonzero(np.unique(labels)))
    present = np.zeros(highest + 1, dtype=bool)
    for plane in labels.reshape(-1, *labels.shape[-2:]):  # an intp copy of one plane at a time
        present |= np.bincount(
            plane.ravel().astype(np.intp, copy=False), minlength=highest + 1
        ).astype(bool)
    return int(np.count_nonzero(present[1:]))


def _beyond_uint32(labels: np.ndarray) -> bool:
    """Whether ``labels`` hold ids a uint32 labels file cannot; a pass over the pixels only
    for dtypes wider than that (the widget's and most tools' labels are not)."""
    return labels.dtype.itemsize > 4 and labels.size > 0 and labels.max() > MAX_ID


def load_record(labels_path: str | Path) -> dict:
    """The JSON record saved next to a labels TIFF, or ``{}`` when there is none; the labels
    are not read. ``ValueError`` for a record that is damaged or of another format."""
    prompts_path = prompts_path_for(labels_path)
    if not prompts_path.is_file():
        return {}
    try:
        record = json.loads(prompts_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(
            f"cannot read {prompts_path.name!r} ({err}); move it away to load the labels alone"
        ) from None
    found = record.get("format") if isinstance(record, dict) else type(record).__name__
    if found != FORMAT:
        raise ValueError(
            f"{prompts_path.name!r} is not a napari-samtune annotation record "
            f"(format {found!r}); move it away to load the labels alone"
        )
    objects = record.get("objects", [])
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        # (the panel replaced the labels, then failed on them: no message, no autosave)
        raise ValueError(
            f"{prompts_path.name!r} holds objects of the wrong kind ({objects!r:.60}: a list "
            "of records expected); move it away to load the labels alone"
        )
    return record
