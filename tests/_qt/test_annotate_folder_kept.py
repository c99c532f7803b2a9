"""The annotation folder chosen in the widget is the next session's: chosen by hand, it was
forgotten at the next start, and the annotations saved there looked lost."""

from __future__ import annotations

import json

import pytest

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


def test_a_project_s_own_settings_json_beside_the_models_is_never_written_over(
    tmp_path, monkeypatch
):
    """$SAMTUNE_MODELS_DIR=<project>/models: <project>/settings.json was replaced."""
    import json

    project = tmp_path / "project"
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(project / "models"))
    project.mkdir()
    theirs = '[{"experiment": "E12", "exposure_ms": 40}]'
    (project / "settings.json").write_text(theirs)
    assert write_setting("annotate_model", "nano")
    assert (project / "settings.json").read_text() == theirs
    assert read_setting("annotate_model") == "nano"
    assert settings_path() == project / "napari-samtune-settings.json"
    settings_path().write_text('{"window": "large"}')  # someone else's file of that name
    with pytest.warns(UserWarning, match="is not napari-samtune's settings") as said:
        assert not write_setting("annotate_model", "vit_b")
        assert not write_setting("finetune_model", "nano")  # said once: not at every choice
    assert len(said) == 1 and str(settings_path()) in str(said[0].message)
    assert json.loads(settings_path().read_text()) == {"window": "large"}


def test_settings_kept_by_an_earlier_version_are_still_read(tmp_path, monkeypatch):
    project = tmp_path / "p"
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(project / "models"))
    project.mkdir()
    (project / "settings.json").write_text('{"annotate_model": "vit_b_lm"}')
    assert read_setting("annotate_model") == "vit_b_lm"
    assert write_setting("finetune_model", "nano")  # into the new file, with the earlier ones
    assert (read_setting("annotate_model"), read_setting("finetune_model")) == ("vit_b_lm", "nano")
    assert (project / "settings.json").read_text() == '{"annotate_model": "vit_b_lm"}'
    (project / "settings.json").write_text('{"annotate_model": "x", "theirs": 1}')
    settings_path().unlink()
    assert read_setting("annotate_model") is None  # not only ours: not read


def test_a_relative_folder_typed_is_kept_as_the_folder_it_named(
    make_napari_viewer, tmp_path, monkeypatch
):
    """ "annotations" typed in project A was the next session's own "annotations" folder
    wherever it began (project B's), saved into and restored from there."""
    monkeypatch.delenv("SAMTUNE_ANNOTATIONS_DIR", raising=False)
    for project in ("A", "B"):
        (tmp_path / project / "annotations").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "A")
    _type_folder(AnnotateWidget(make_napari_viewer()), "annotations")
    monkeypatch.chdir(tmp_path / "B")
    again = AnnotateWidget(make_napari_viewer())
    assert again.annotation_folder().resolve() == tmp_path / "A" / "annotations"
