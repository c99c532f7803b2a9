"""The annotation folder chosen in the widget is the next session's: chosen by hand, it was
forgotten at the next start, and the annotations saved there looked lost."""

from __future__ import annotations

import json

from napari_samtune._qt.annotate import AnnotateWidget
from napari_samtune.core.annotation_files import default_annotation_folder
from napari_samtune.core.user_settings import read_setting, settings_path, write_setting


def _type_folder(widget, folder) -> None:
    """As a person types the folder and leaves the field."""
    widget.ui.folder_edit.setText(str(folder))
    widget.ui.folder_edit.setModified(True)
    widget.ui.folder_edit.editingFinished.emit()


def test_a_folder_chosen_in_the_widget_is_where_the_next_session_starts(
    make_napari_viewer, tmp_path, monkeypatch
):
    monkeypatch.delenv("SAMTUNE_ANNOTATIONS_DIR", raising=False)
    chosen = tmp_path / "my experiment annotations"
    chosen.mkdir()
    first = AnnotateWidget(make_napari_viewer())
    assert first.annotation_folder() == default_annotation_folder()
    _type_folder(first, chosen)
    assert json.loads(settings_path().read_text())["annotation_folder"] == str(chosen)
    again = AnnotateWidget(make_napari_viewer())  # napari started again
    assert again.annotation_folder() == chosen

    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", str(tmp_path / "from the environment"))
    assert AnnotateWidget(make_napari_viewer()).annotation_folder() == tmp_path / (
        "from the environment"
    )  # set for this session: it wins
    monkeypatch.delenv("SAMTUNE_ANNOTATIONS_DIR")
    chosen.rmdir()  # moved away since: the default, not a folder made again unasked
    assert AnnotateWidget(make_napari_viewer()).annotation_folder() == default_annotation_folder()


def test_a_settings_file_that_cannot_be_read_or_written_is_no_error(tmp_path):
    settings_path().parent.mkdir(parents=True, exist_ok=True)
    settings_path().write_text("{not json")
    assert read_setting("annotation_folder") is None
    assert write_setting("annotation_folder", str(tmp_path))
    assert read_setting("annotation_folder") == str(tmp_path)
    settings_path().unlink()
    settings_path().mkdir()  # a folder where the file goes: cannot be written
    assert not write_setting("annotation_folder", "x")
    assert read_setting("annotation_folder") is None
