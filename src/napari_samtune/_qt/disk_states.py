"""What the annotation files of an image were on disk when this napari last read or wrote
them, to notice a file changed since by another program (a second napari, Fiji, a script,
``samtune segment --overwrite``): the next save would have replaced its annotations unsaid."""

from __future__ import annotations

from pathlib import Path

from napari_samtune.core.annotation_files import file_state

FOREIGN = (-1, -1, -1)  # the state of a file whose annotations are not this session's
ABSENT = (-2, -2, -2)  # the state of a file looked for here and not found


class DiskStates:
    """The state of each labels file as last read or written here, by path."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int, int]] = {}
        # files of the same image saved under another name, and newer, that were named
        self.said_newer_saves: set[Path] = set()

    def note(self, path: str | Path) -> None:
        """``path`` was just read or written here: that is its state now."""
        state = file_state(path)
        if state is None:
            self._seen.pop(Path(path), None)
        else:
            self._seen[Path(path)] = state

    def state(self, path: str | Path) -> tuple[int, int, int] | None:
        """The state noted for ``path`` (None: never noted)."""
        return self._seen.get(Path(path))

    def note_foreign(self, path: str | Path) -> None:
        """``path`` holds annotations other than this session's (an annotations layer kept
        from a file opened in napari, or edited since): a save beside it, not over it."""
        self._seen[Path(path)] = FOREIGN

    def note_absent(self, path: str | Path) -> None:
        """``path`` was looked for here (the image's annotations, when it was first
        annotated) and is not there: a file there later was written by someone else (a
        second napari, ``samtune segment``), which the next save replaced unsaid."""
        if file_state(path) is None:
            self._seen[Path(path)] = ABSENT

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str | Path) and Path(path) in self._seen

    def changed(self, path: str | Path) -> bool:
        """Whether ``path``, read or written here before (or found absent), is now another
        file (written or replaced since); False for one never seen here or gone (a save
        makes it anew)."""
        seen, now = self._seen.get(Path(path)), file_state(path)
        return seen is not None and now is not None and now != seen
