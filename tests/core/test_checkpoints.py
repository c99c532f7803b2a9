import os
from pathlib import Path

import pytest
import torch

from napari_samtune.core.checkpoints import (
    atomic_torch_save,
    atomic_write,
    check_output_folder,
)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "model.pth"
    atomic_torch_save({"w": torch.ones(2)}, target)

    def broken(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert torch.load(target, weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]  # no temp file left


def test_atomic_write_gives_ordinary_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_output_folders_that_cannot_be_made_or_written_are_refused(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ValueError) as raised:
        check_output_folder(tmp_path / "afile" / "sub", "out_dir")
    assert str(raised.value) == (
        f"out_dir {str(tmp_path / 'afile' / 'sub')!r} cannot be made: "
        f"{str(tmp_path / 'afile')!r} is a file; give a folder (created if missing)"
    )
    assert check_output_folder(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ValueError, match=f"{str(tmp_path)!r} is read-only or not yours to write"):
        check_output_folder(tmp_path / "new" / "run", "out_dir")
