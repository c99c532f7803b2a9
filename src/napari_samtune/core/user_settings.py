"""Choices a person made in the widgets, kept for the next napari session: a small JSON
file, ``settings.json``, beside the user models folder. A setting is a convenience: one that
cannot be read is taken as unset, one that cannot be written is left (nothing is said)."""

from __future__ import annotations

import json
from pathlib import Path

from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.train_export import write_json

SETTINGS_NAME = "settings.json"
ANNOTATION_FOLDER = "annotation_folder"  # the folder last chosen in the annotation widget
ANNOTATE_MODEL = "annotate_model"  # the model the annotation widget last loaded
FINETUNE_MODEL = "finetune_model"  # the model the Finetune widget last started a run from
FINETUNE_FOLDER = "finetune_folder"  # the output folder of the Finetune widget's last run


def settings_path() -> Path:
    """``settings.json`` next to :func:`~napari_samtune.core.registry.user_models_dir`."""
    return user_models_dir().parent / SETTINGS_NAME


def _read_all() -> dict:
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_setting(key: str) -> str | None:
    """The text kept under ``key``, or None (never set, or the file unreadable)."""
    value = _read_all().get(key)
    return value if isinstance(value, str) else None


def write_setting(key: str, value: str) -> bool:
    """Keep ``value`` under ``key`` (the file written atomically); False where it cannot be
    written (a read-only folder)."""
    try:
        write_json(settings_path(), {**_read_all(), key: value})
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
