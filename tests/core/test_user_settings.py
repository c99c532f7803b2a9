"""The settings file the widgets keep their choices in (core.user_settings)."""

from napari_samtune.core.user_settings import (
    ANNOTATE_MODEL,
    read_setting,
    settings_path,
    write_setting,
)


def test_a_settings_file_nested_past_the_parser_s_depth_reads_as_unset():
    """json.loads raised RecursionError, which no caller caught: the Annotate and Finetune
    panels, which read their model at opening, failed to open."""
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert read_setting(ANNOTATE_MODEL) is None
    assert write_setting(ANNOTATE_MODEL, "nano")  # damaged, not anyone's data: replaced
    assert read_setting(ANNOTATE_MODEL) == "nano"
