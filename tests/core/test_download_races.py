"""Downloads beside other downloads, and what unfinished ones leave (``server`` fixture: a
real HTTP server on 127.0.0.1, see conftest.py)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_samtune.core import download
from napari_samtune.core.download import DownloadError, download_file, ensure_model_file
from napari_samtune.core.fetch import partial_path
from napari_samtune.core.registry import ModelSpec

PAYLOAD = bytes(range(251)) * 5000  # 1.26 MB
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
WRONG = b"<html>a login page</html>" * 1000


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _while_hashing(monkeypatch, then) -> None:
    """``then()`` runs, as another download would, while the file in place is hashed: the
    hash is of what was there before."""
    real, done = download.mismatched_digest, []

    def hashed(path, file_hash):
        found = real(path, file_hash)
        if not done:
            done.append(True)
            then()
        return found

    monkeypatch.setattr(download, "mismatched_digest", hashed)


def test_a_good_file_put_in_place_while_a_wrong_one_was_hashed_is_kept(
    server, tmp_path, monkeypatch
):
    """Another download put the published file in place meanwhile: it was moved aside as
    the wrong file (named with the hash of the file it replaced), and downloaded again."""
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    dest.write_bytes(WRONG)
    finished = tmp_path / ".w.pt.part"

    def other_download_finishes():
        finished.write_bytes(PAYLOAD)
        os.replace(finished, dest)

    _while_hashing(monkeypatch, other_download_finishes)
    assert download_file(server.url("/w.pt"), dest, SHA256) == dest
    assert dest.read_bytes() == PAYLOAD and server.requests == []
    assert not [name for name in _names(tmp_path) if "wrong-hash" in name]


def test_a_wrong_file_moved_aside_by_another_download_is_no_error(server, tmp_path, monkeypatch):
    """It said "No such file or directory: 'w.pt'" and stopped."""
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    dest.write_bytes(WRONG)
    _while_hashing(monkeypatch, lambda: dest.rename(tmp_path / "w.pt.wrong-hash"))
    assert download_file(server.url("/w.pt"), dest, SHA256) == dest
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "w.pt.wrong-hash").read_bytes() == WRONG
    assert "w.pt.wrong-hash-2" not in _names(tmp_path)


def test_a_partial_file_left_beside_a_file_saved_by_hand_goes(server, tmp_path):
    """The error of a cut-off download says to save the file by hand; once that was done,
    the partial file (GBs for the large models) stayed for ever."""
    dest = tmp_path / "w.pt"
    partial_path(dest).write_bytes(PAYLOAD[:1000])
    dest.write_bytes(PAYLOAD)
    assert download_file(server.url("/w.pt"), dest, SHA256) == dest
    assert _names(tmp_path) == [".w.pt.verified", "w.pt"] and server.requests == []


def test_private_partial_files_of_killed_downloads_go_once_old(server, tmp_path):
    """A download beside another writes a private ``.<name>.part-<hex>``; a killed one left
    it for ever."""
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    old, young = tmp_path / ".w.pt.part-0a1b2c3d", tmp_path / ".w.pt.part-4e5f6a7b"
    for path in (old, young):
        path.write_bytes(PAYLOAD[:1000])
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    download_file(server.url("/w.pt"), dest, SHA256)
    assert not old.exists()
    assert young.exists()  # maybe a download still going
    other = tmp_path / ".v.pt.part-0a1b2c3d"  # another file's: not this download's to judge
    other.write_bytes(b"x")
    os.utime(other, (hours_ago, hours_ago))
    download_file(server.url("/w.pt"), dest, SHA256)
    assert other.exists()


class _Stalling(BaseHTTPRequestHandler):
    """Promises PAYLOAD, sends SENT bytes of it, then goes quiet (a stalled link)."""

    SENT = 700_000  # less than a read chunk (1 MB)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: self.SENT])
        self.wfile.flush()
        time.sleep(3)

    def log_message(self, *args):
        pass


def test_what_arrived_before_a_stall_is_kept_and_shown(tmp_path):
    """Reads waited for a whole MB: the progress stayed at 0, and the timeout lost what had
    arrived."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/w.pt"
    dest, shown = tmp_path / "w.pt", []
    try:
        with pytest.raises(DownloadError, match="timed out"):
            download_file(url, dest, SHA256, lambda done, total: shown.append(done), timeout=1.0)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert partial_path(dest).stat().st_size == _Stalling.SENT
    assert max(shown) == _Stalling.SENT


def test_a_download_folder_that_cannot_be_written_says_how_to_move_it(monkeypatch, tmp_path):
    spec = ModelSpec(
        name="w",
        architecture="vit_b",
        filename="w.pt",
        url="http://127.0.0.1:9/w.pt",
        file_hash=SHA256,
        source="official SAM",
    )
    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(a_file))
    with pytest.raises(OSError) as info:
        ensure_model_file(spec)
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert "set SAMTUNE_CACHE_DIR to a folder you can write to" in str(info.value)
    assert str(a_file / "models") in str(info.value)


def test_a_file_that_keeps_changing_is_moved_aside_after_a_few_looks(server, tmp_path, monkeypatch):
    """A file still being written by hand changes at every look: the download does not wait
    for it for ever, it moves it aside as it was last seen."""
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    dest.write_bytes(WRONG)
    real, looks = download.mismatched_digest, []

    def hashed_while_written(path, file_hash):
        found = real(path, file_hash)
        looks.append(found)
        with open(path, "ab") as out:  # written to meanwhile
            out.write(b"x")
        return found

    monkeypatch.setattr(download, "mismatched_digest", hashed_while_written)
    assert download_file(server.url("/w.pt"), dest, SHA256) == dest
    assert len(looks) == download.LOOKS_AT_A_CHANGING_FILE
    assert dest.read_bytes() == PAYLOAD and (tmp_path / "w.pt.wrong-hash").is_file()


def _served(server, tmp_path, monkeypatch) -> ModelSpec:
    """A model the local server serves, downloaded into a cache folder of ``tmp_path``."""
    server.files["/w.pt"] = PAYLOAD
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    return ModelSpec(
        name="w", architecture="vit_b", filename="w.pt", url=server.url("/w.pt"),
        file_hash=SHA256, source="official SAM",
    )  # fmt: skip


def test_a_disk_that_fills_during_a_download_says_how_to_move_the_models(
    server, tmp_path, monkeypatch
):
    """A read-only folder got "set SAMTUNE_CACHE_DIR to a folder you can write to"; a full
    disk did not: the download's error dropped the write's errno."""
    from pathlib import Path

    from napari_samtune.core import fetch
    from napari_samtune.core.checkpoints import write_error

    spec = _served(server, tmp_path, monkeypatch)

    def full(response, out, *args):
        raise write_error(Path(out.name), OSError(errno.ENOSPC, "No space left", out.name))

    monkeypatch.setattr(fetch, "_stream", full)
    with pytest.raises(OSError) as info:
        ensure_model_file(spec)
    assert info.value.errno == errno.ENOSPC
    assert "set SAMTUNE_CACHE_DIR to a folder you can write to" in str(info.value)


def test_a_tls_failure_gets_no_download_folder_hint(server, tmp_path, monkeypatch):
    """An SSL error's errno 1 reads as EPERM: with 5694848 a broken TLS record was told to
    move the models folder."""
    import ssl

    from napari_samtune.core import fetch

    spec = _served(server, tmp_path, monkeypatch)

    def bad_record(*args):
        raise ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad record mac")

    monkeypatch.setattr(fetch, "_stream", bad_record)
    with pytest.raises(DownloadError) as info:
        ensure_model_file(spec)
    assert "bad record mac" in str(info.value) and "SAMTUNE_CACHE_DIR" not in str(info.value)
