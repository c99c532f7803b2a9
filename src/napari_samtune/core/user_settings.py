"""Choices a person made in the widgets, kept for the next napari session: a small JSON
file, ``napari-samtune-settings.json``, beside the user models folder. A setting is a
convenience: one that cannot be read is taken as unset, one that cannot be written is left
(nothing is said, but for the case below).

The file is marked as this package's (``"format"``), and a file without the mark is never
written over (a warning, once per file and process, says why choices are not kept then):
with ``$SAMTUNE_MODELS_DIR`` set to ``<project>/models``, the file used to be
``<project>/settings.json``, and a project's own ``settings.json`` there was replaced. Such
a file written by earlier versions (only this package's keys) is still read.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.train_export import write_json

SETTINGS_NAME = "napari-samtune-settings.json"
EARLIER_SETTINGS_NAME = "settings.json"  # before 2026-12-06: read when it holds only ours
SETTINGS_FORMAT = "napari-samtune settings"
ANNOTATION_FOLDER = "annotation_folder"  # the folder last chosen in the annotation widget
ANNOTATE_MODEL = "annotate_model"  # the model the annotation widget last loaded
FINETUNE_MODEL = "finetune_model"  # the model the Finetune widget last started a run from
FINETUNE_FOLDER = "finetune_folder"  # the output folder of the Finetune widget's last run
KEYS = frozenset({ANNOTATION_FOLDER, ANNOTATE_MODEL, FINETUNE_MODEL, FINETUNE_FOLDER})
_FOREIGN_SAID: set[Path] = set()  # the files of others whose keeping out was said


def settings_path() -> Path:
    """``napari-samtune-settings.json`` next to
    :func:`~napari_samtune.core.registry.user_models_dir`."""
    return user_models_dir().parent / SETTINGS_NAME


def _json(path: Path) -> object:
    """The JSON in ``path``; None where there is none (missing, unreadable, not JSON, or
    nested past the parser's depth: a panel then failed to open)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _read_all() -> dict:
    """This package's settings: the marked file's, else those of an earlier version's
    ``settings.json`` that holds nothing but this package's keys."""
    ours = _json(settings_path())
    if _is_ours(ours):
        return {key: value for key, value in ours.items() if key != "format"}
    earlier = _json(settings_path().with_name(EARLIER_SETTINGS_NAME))
    return earlier if isinstance(earlier, dict) and earlier and set(earlier) <= KEYS else {}


def _is_ours(data: object) -> bool:
    return isinstance(data, dict) and data.get("format") == SETTINGS_FORMAT


def _is_foreign(path: Path) -> bool:
    """Whether ``path`` holds JSON that is not this package's settings (a damaged file,
    which cannot be anyone's data, is replaced)."""
    data = _json(path)
    return data is not None and not _is_ours(data)


def read_setting(key: str) -> str | None:
    """The text kept under ``key``, or None (never set, or the file unreadable)."""
    value = _read_all().get(key)
    return value if isinstance(value, str) else None


def write_setting(key: str, value: str) -> bool:
    """Keep ``value`` under ``key`` (the file written atomically); False where it cannot be
    written (a read-only folder) or where a file of that name is not this package's."""
    path = settings_path()
    if _is_foreign(path):
        if path not in _FOREIGN_SAID:
            _FOREIGN_SAID.add(path)
            warnings.warn(
                f"{path} holds JSON that is not napari-samtune's settings, so it is left "
                "as it is and the widgets' choices (models, folders) are not remembered "
                "for the next session; move that file elsewhere to have them kept",
                stacklevel=2,
            )
        return False
    try:
        write_json(path, {"format": SETTINGS_FORMAT, **_read_all(), key: value})
    except OSError:
        return False
    return True


def kept_folder(key: str) -> Path | None:
    """The folder kept under ``key`` where it still exists, else None (never kept, or
    moved or deleted since)."""
    kept = read_setting(key)
    return Path(kept) if kept and Path(kept).is_dir() else None


def default_output_folder() -> Path:
    """Where the Finetune widget puts runs at first: ``<user data>/training``, next to the
    user models folder."""
    return user_models_dir().parent / "training"


def starting_output_folder() -> Path:
    """The last run's output folder where it still exists (after a restart runs went to the
    default again, and Continue… looked there), else :func:`default_output_folder`."""
    return kept_folder(FINETUNE_FOLDER) or default_output_folder()
