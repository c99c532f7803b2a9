"""The model last used in each dock is the one it offers first in the next napari session;
one gone since (removed, moved) falls back to the default."""

from __future__ import annotations

from napari_samtune._qt.annotate_jobs import LOAD_TASK
from napari_samtune._qt.model_picker import DEFAULT_MODEL, FILE_ENTRY, ModelPickerWidget
from napari_samtune.core.architectures import TINY
from napari_samtune.core.user_model_removal import remove_user_model
from napari_samtune.core.user_models import register_user_model
from napari_samtune.core.user_settings import (
    ANNOTATE_MODEL,
    FINETUNE_MODEL,
    default_output_folder,
)

WAIT_MS = 120_000


def test_annotate_offers_the_model_it_loaded_last(
    viewer_widget, tiny_checkpoint, run_job, make_napari_viewer
):
    from napari_samtune._qt.annotate import AnnotateWidget

    _, widget = viewer_widget
    assert widget.ui.model_picker.model_source() == DEFAULT_MODEL  # nothing kept yet
    register_user_model(tiny_checkpoint, "my_tiny", TINY)
    widget.refresh_models()
    widget.select_model("my_tiny")
    run_job(widget, widget.load_model, LOAD_TASK)
    assert widget.model_name == "my_tiny"
    later = AnnotateWidget(make_napari_viewer())  # the next napari session
    assert later.ui.model_picker.model_source() == "my_tiny"
    assert later.segmenter is None  # offered, not loaded: loading stays the person's choice
    remove_user_model("my_tiny")
    assert ModelPickerWidget(remembered_as=ANNOTATE_MODEL).model_source() == DEFAULT_MODEL


def test_a_weights_file_loaded_is_offered_by_its_full_path(
    viewer_widget, tiny_checkpoint, run_job, monkeypatch
):
    _, widget = viewer_widget
    monkeypatch.chdir(tiny_checkpoint.parent)
    widget.select_model(tiny_checkpoint.name)  # relative to the folder napari started in
    run_job(widget, widget.load_model, LOAD_TASK)
    monkeypatch.chdir("/")
    picker = ModelPickerWidget(remembered_as=ANNOTATE_MODEL)
    assert picker.model_combo.currentData() == FILE_ENTRY
    assert picker.model_source() == tiny_checkpoint.resolve()
    tiny_checkpoint.unlink()  # moved away since: the default instead
    assert ModelPickerWidget(remembered_as=ANNOTATE_MODEL).model_source() == DEFAULT_MODEL


def test_a_failed_load_is_not_remembered(viewer_widget, tmp_path, run_job):
    _, widget = viewer_widget
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    widget.select_model(str(broken))
    run_job(widget, widget.load_model, LOAD_TASK)
    assert widget.model_name == "tiny"  # the model in use stays
    assert ModelPickerWidget(remembered_as=ANNOTATE_MODEL).model_source() == DEFAULT_MODEL


def test_finetune_offers_the_model_its_last_run_started_from(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, tmp_path, tiny_checkpoint
):
    _, widget = finetune_on_cells(n=1)
    assert widget.settings.model_picker.model_source() == DEFAULT_MODEL
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "runs"))
    assert add_pair(widget.train_data, "cells0", "cells0 labels")
    assert ModelPickerWidget(remembered_as=FINETUNE_MODEL).model_source() == DEFAULT_MODEL
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    assert ModelPickerWidget(remembered_as=FINETUNE_MODEL).model_source() == tiny_checkpoint
    # the two docks keep their own: the annotation dock has loaded nothing
    assert ModelPickerWidget(remembered_as=ANNOTATE_MODEL).model_source() == DEFAULT_MODEL


def test_finetune_starts_in_the_output_folder_of_its_last_run(
    finetune_on_cells, add_pair, use_tiny_model, qtbot, tmp_path
):
    """Runs went to the default folder again after a restart; Continue… looked there."""
    _, widget = finetune_on_cells(n=1)
    use_tiny_model(widget, epochs=1)
    widget.settings.out_dir_edit.setText(str(tmp_path / "my runs"))
    assert add_pair(widget.train_data, "cells0", "cells0 labels")
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    _, later = finetune_on_cells(n=1)  # the next napari session
    assert later.settings.output_folder() == tmp_path / "my runs"
    (tmp_path / "my runs").rename(tmp_path / "moved")  # gone since: the default again
    _, after_move = finetune_on_cells(n=1)
    assert after_move.settings.output_folder() == default_output_folder()


def test_a_model_renamed_since_is_offered_under_its_new_name(qtbot, tiny_checkpoint, notifications):
    """After `samtune models --rename cells cells_v2` the remembered 'cells' fell back to
    the default model (a download), and ↻ warned it had been removed."""
    from napari_samtune.core.user_model_rename import rename_user_model

    register_user_model(tiny_checkpoint, "cells", TINY)
    picker = ModelPickerWidget(remembered_as=ANNOTATE_MODEL)
    qtbot.addWidget(picker)
    picker.select_model("cells")
    picker.remember("cells")
    rename_user_model("cells", "cells_v2")
    picker.refresh_models()
    assert picker.model_source() == "cells_v2"
    assert any("'cells' was renamed 'cells_v2'" in n for n in notifications)
    assert not [n for n in notifications if n.severity == "warning"]
    later = ModelPickerWidget(remembered_as=ANNOTATE_MODEL)  # the next napari session
    qtbot.addWidget(later)
    assert later.model_source() == "cells_v2"


def test_the_picker_s_tooltip_says_what_a_built_in_s_file_is(qtbot):
    """A file of the wrong hash in a built-in's place, and the packaged nano, were both
    described as "present", where ``samtune models`` says "unverified" and "packaged"."""
    from qtpy.QtCore import Qt

    from napari_samtune.core.registry import builtin_model

    stray = builtin_model("vit_t").local_path()
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"ten bytes!")
    picker = ModelPickerWidget()
    qtbot.addWidget(picker)

    def tooltip(name: str) -> str:
        return picker.model_combo.itemData(picker.model_combo.findData(name), Qt.ToolTipRole)

    assert "not verified yet: its hash is checked when it is used" in tooltip("vit_t")
    assert tooltip("nano").endswith("; packaged")
    assert tooltip("vit_h").endswith("; downloads on first use")
    assert "present" not in tooltip("vit_t") + tooltip("nano")
