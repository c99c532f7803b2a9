"""Start waits for the Annotate panels' background saves only where the run reads them."""

from __future__ import annotations

from napari_samtune._qt import train_run


class _Panel:
    def __init__(self, folder) -> None:
        self.folder, self.flushed = folder, 0

    def annotation_folder(self):
        return self.folder

    def flush_autosave(self) -> None:
        self.flushed += 1


def test_start_waits_only_for_saves_into_the_folders_the_run_reads(monkeypatch, tmp_path):
    """A 30 x 2048 x 2048 stack's autosave held the viewer 1.8 s at the Start of a run on
    layer pairs, which reads no folder."""
    read, other = _Panel(tmp_path / "read"), _Panel(tmp_path / "other")
    read.folder.mkdir(), other.folder.mkdir()
    monkeypatch.setattr(train_run, "annotation_widgets", lambda viewer: [read, other])
    train_run.flush_autosaves(None, [])  # layer pairs only
    assert (read.flushed, other.flushed) == (0, 0)
    train_run.flush_autosaves(None, [tmp_path / "other" / ".." / "read"])
    assert (read.flushed, other.flushed) == (1, 0)
    train_run.flush_autosaves(None, [tmp_path / "*" / "x"])  # a glob: any folder may match
    train_run.flush_autosaves(None, None)  # the fields are not usable yet
    assert (read.flushed, other.flushed) == (3, 2)
