"""Model management and download fixes found by using them as a user would (``server``
fixture: a real HTTP server on 127.0.0.1, see conftest.py)."""

import errno
import hashlib

import pytest

from napari_samtune.cli import main
from napari_samtune.core import fetch
from napari_samtune.core.download import DownloadError, download_file
from napari_samtune.core.fetch import partial_path
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.user_models import scan_user_models

PAYLOAD = bytes(range(251)) * 5000  # 1.26 MB: more than one read chunk
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


class _FullDisk:
    """A partial file whose writes after the first fail as on a full disk."""

    def __init__(self, stream):
        self.stream, self.writes = stream, 0

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.stream.__exit__(*exc)

    def write(self, data):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.stream.write(data)


def test_a_full_disk_during_a_download_says_which_folder_and_the_fix(server, tmp_path, monkeypatch):
    open_new = fetch._open_new
    monkeypatch.setattr(fetch, "_open_new", lambda *args: _FullDisk(open_new(*args)))
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/w.pt"), dest, SHA256, progress=lambda *a: None)
    message = str(info.value)
    assert f"no space left on the device holding {tmp_path}; free space" in message
    assert not dest.exists()
    assert f"kept in {partial_path(dest)}" in message  # freeing space, the next one resumes


def test_a_json_file_no_model_can_be_named_after_is_not_offered_for_removal(capsys):
    """``samtune models --remove`` takes model names only: suggesting it for 'my notes.json'
    (another program's file, or a copy made by hand) gave a command that fails."""
    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my notes.json").write_text("{}", encoding="utf-8")
    assert scan_user_models() == ([], [])
    assert main(["models"]) == 0
    assert "--remove" not in capsys.readouterr().out


def test_a_cache_dir_that_is_a_file_is_a_clear_error_naming_it(server, tmp_path):
    blocking = tmp_path / "cache"
    blocking.write_text("not a folder", encoding="utf-8")
    server.files["/w.pt"] = PAYLOAD
    with pytest.raises(OSError, match=f"{blocking} is a file, not a folder; choose another"):
        download_file(server.url("/w.pt"), blocking / "models" / "w.pt", SHA256)
    assert server.requests == []
