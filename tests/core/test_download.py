"""Downloads against a real HTTP server on 127.0.0.1 (no internet needed)."""

import hashlib
import logging
import warnings

import pytest
import xxhash

from napari_samtune.core.download import (
    DownloadError,
    download_file,
    download_status,
    ensure_model_file,
    file_digest,
    is_verified,
)
from napari_samtune.core.registry import ModelSpec, models_cache_dir

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
XXH128 = "xxh128:" + xxhash.xxh3_128(PAYLOAD).hexdigest()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_is_downloaded_verified_and_reported(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD
    calls = []
    dest = download_file(
        server.url("/w.pt"), tmp_path / "w.pt", SHA256, progress=lambda d, t: calls.append((d, t))
    )
    assert dest.read_bytes() == PAYLOAD
    assert all(c == (0, None) for c in calls[: calls.index((0, len(PAYLOAD)))])  # answer awaited
    calls = calls[calls.index((0, len(PAYLOAD))) :]
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 2
    assert _leftovers(tmp_path) == [".w.pt.verified", "w.pt"]  # no temporary file left


def test_default_progress_is_a_tqdm_bar(server, tmp_path, capsys):
    server.files["/bar.pt"] = PAYLOAD
    download_file(server.url("/bar.pt"), tmp_path / "bar.pt", SHA256)
    assert "Downloading bar.pt" in capsys.readouterr().err


@pytest.mark.parametrize("file_hash", [XXH128, SHA256.split(":")[1], None])
def test_xxh128_bare_sha256_and_no_hash_are_accepted(server, tmp_path, file_hash):
    server.files["/w.pt"] = PAYLOAD
    dest = download_file(
        server.url("/w.pt"), tmp_path / "w.pt", file_hash, progress=lambda *a: None
    )
    assert dest.read_bytes() == PAYLOAD


def test_corrupt_download_raises_and_leaves_nothing(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD[:-1] + b"\x00"
    folder = tmp_path / "cache"
    with pytest.raises(DownloadError, match="published hash") as info:
        download_file(server.url("/w.pt"), folder / "w.pt", XXH128, progress=lambda *a: None)
    assert str(folder / "w.pt") in str(info.value)
    assert "If it happens again, the server sends another file" in str(info.value)
    assert _leftovers(folder) == []


def test_missing_file_error_names_url_and_manual_path(server, tmp_path):
    url = server.url("/nope.pt")
    dest = tmp_path / "cache" / "nope.pt"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, SHA256, progress=lambda *a: None)
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert "HTTP 404" in message and url in message and f"save it as {dest}" in message
    assert _leftovers(dest.parent) == []


def test_truncated_download_is_not_kept(server, tmp_path):
    server.files["/cut.pt"] = PAYLOAD
    server.short.add("/cut.pt")
    with pytest.raises(DownloadError, match="cut.pt"):
        download_file(server.url("/cut.pt"), tmp_path / "cut.pt", None, progress=lambda *a: None)
    assert _leftovers(tmp_path) == []


def test_a_cancelled_download_still_says_where_the_wrong_file_went(server, tmp_path, caplog):
    server.files["/w.pt"] = PAYLOAD
    (tmp_path / "w.pt").write_bytes(b"not it")

    def cancel(done, total):
        raise InterruptedError("user pressed cancel")

    with caplog.at_level(logging.WARNING), pytest.raises(InterruptedError):
        download_file(server.url("/w.pt"), tmp_path / "w.pt", SHA256, progress=cancel)
    assert _leftovers(tmp_path) == ["w.pt.wrong-hash"]
    [note] = [r.getMessage() for r in caplog.records if r.name.startswith("napari_samtune")]
    assert f"moved to {tmp_path / 'w.pt.wrong-hash'}" in note and "was stopped" in note


def test_a_progress_callback_can_cancel_and_nothing_is_kept(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD

    def cancel(done, total):
        if done > 0:
            raise InterruptedError("user pressed cancel")

    with pytest.raises(InterruptedError, match="cancel"):
        download_file(server.url("/w.pt"), tmp_path / "w.pt", SHA256, progress=cancel)
    assert _leftovers(tmp_path) == []


def test_unreachable_server_is_a_clear_error(server, tmp_path):
    url = server.url("/w.pt")
    server.httpd.shutdown()
    server.httpd.server_close()  # nothing listens on that port any more
    with pytest.raises(DownloadError, match="could not download .*offline") as info:
        download_file(url, tmp_path / "w.pt", SHA256, progress=lambda *a: None)
    assert url in str(info.value)


def test_second_call_does_not_download_again(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD
    for _ in range(3):
        download_file(server.url("/w.pt"), tmp_path / "w.pt", SHA256, progress=lambda *a: None)
    assert server.requests == ["/w.pt"]


def test_present_file_with_wrong_hash_is_moved_aside_and_downloaded_again(server, tmp_path, caplog):
    """It used to be deleted, with a raw Python warning on the terminal."""
    server.files["/w.pt"] = PAYLOAD
    dest = download_file(server.url("/w.pt"), tmp_path / "w.pt", SHA256, progress=lambda *a: None)
    dest.write_bytes(b"tampered")  # same path, new content: the stamp no longer matches
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")  # told as a plain message, not as a Python warning
        download_file(server.url("/w.pt"), dest, SHA256, progress=lambda *a: None)
    assert dest.read_bytes() == PAYLOAD and is_verified(dest, SHA256)
    assert len(server.requests) == 2
    aside = tmp_path / "w.pt.wrong-hash"
    assert aside.read_bytes() == b"tampered"  # kept, not deleted
    [note] = [r.getMessage() for r in caplog.records if r.name.startswith("napari_samtune")]
    assert f"moved to {aside}" in note and hashlib.sha256(b"tampered").hexdigest() in note
    assert SHA256.split(":")[1] in note and "downloaded from" in note and "in its place" in note


def test_wrong_file_placed_by_hand_is_kept_and_the_offline_error_says_so(server, caplog):
    """Offline, the error used to ask for the file to be saved by hand at the very path where
    the user had just saved one, without saying that file had the wrong hash (and was gone)."""
    spec = _spec(server)
    server.httpd.shutdown()
    server.httpd.server_close()  # offline
    path = spec.local_path()
    path.parent.mkdir(parents=True)
    earlier = path.parent / "served.pt.wrong-hash"
    earlier.write_bytes(b"moved aside by an earlier attempt")
    placed = b"<html>\n"
    path.write_bytes(placed)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        with pytest.raises(DownloadError) as info:
            ensure_model_file(spec, progress=lambda *a: None)
    assert [r for r in caplog.records if r.name.startswith("napari_samtune")] == []  # said once
    aside = path.parent / "served.pt.wrong-hash-2"
    assert aside.read_bytes() == placed and not path.exists()
    assert earlier.read_bytes() == b"moved aside by an earlier attempt"  # not overwritten
    message = str(info.value)
    assert f"{path} (7 bytes) has sha256 {hashlib.sha256(placed).hexdigest()}" in message
    assert f"not the published {SHA256.split(':')[1]}" in message
    assert f"moved to {aside}" in message
    assert "could not download" in message and "offline" in message
    assert f"save it as {path}" in message


def test_malformed_hash_fails_before_any_request(server, tmp_path):
    with pytest.raises(ValueError, match="algorithm 'md5'"):
        download_file(server.url("/w.pt"), tmp_path / "w.pt", "md5:" + "0" * 32)
    assert server.requests == []


def test_file_digest_and_verification(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert file_digest(path, "sha256") == SHA256.split(":")[1]
    assert file_digest(path, "xxh128") == XXH128.split(":")[1]
    assert is_verified(path, XXH128) and not is_verified(path, "xxh128:" + "0" * 32)
    assert not is_verified(tmp_path / "absent.bin", SHA256)


def _spec(server, file_hash=SHA256):
    return ModelSpec("served", "tiny", "served.pt", server.url("/served.pt"), file_hash, "", "test")


def test_ensure_model_file_downloads_into_the_cache_once(server):
    server.files["/served.pt"] = PAYLOAD
    spec = _spec(server)
    assert download_status(spec) == "missing"
    path = ensure_model_file(spec, progress=lambda *a: None)
    assert path == models_cache_dir() / "served.pt" and path.read_bytes() == PAYLOAD
    assert download_status(spec) == "verified"
    assert ensure_model_file(spec) == path
    assert server.requests == ["/served.pt"]


def test_ensure_without_download_names_the_manual_path(server):
    spec = _spec(server)
    with pytest.raises(DownloadError, match="downloading is off") as info:
        ensure_model_file(spec, download=False)
    assert spec.url in str(info.value) and str(spec.local_path()) in str(info.value)
    assert server.requests == []


def test_file_placed_by_hand_is_used_when_its_hash_matches(server):
    spec = _spec(server, XXH128)
    spec.local_path().parent.mkdir(parents=True)
    spec.local_path().write_bytes(PAYLOAD)
    assert download_status(spec) == "present"  # not hashed yet
    assert ensure_model_file(spec, download=False) == spec.local_path()
    assert download_status(spec) == "verified"
    spec.local_path().write_bytes(b"wrong file")
    with pytest.raises(DownloadError, match="does not match the published hash") as info:
        ensure_model_file(spec, download=False)
    found = xxhash.xxh3_128(b"wrong file").hexdigest()
    assert f"it has xxh128 {found}, the published file has {XXH128.split(':')[1]}" in str(
        info.value
    )
    assert spec.local_path().read_bytes() == b"wrong file"  # not downloading: left alone
    assert server.requests == []


def test_user_model_without_its_file_is_a_clear_error():
    spec = ModelSpec("mine", "tiny", "mine.pt")
    with pytest.raises(FileNotFoundError, match="weights of user model 'mine' are missing") as info:
        ensure_model_file(spec)
    assert "samtune models --remove mine" in str(info.value)


def test_a_wrong_file_in_a_read_only_cache_names_another_cache_folder(server, monkeypatch):
    """It said "Move or delete it yourself, then try again", which a read-only folder does
    not allow (nor would the download be written there), without the SAMTUNE_CACHE_DIR
    hint that a read-only cache without such a file gets."""
    import errno
    from pathlib import Path

    spec = _spec(server)
    path = spec.local_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>\n")

    def read_only(self, target):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "rename", read_only)
    with pytest.raises(DownloadError) as info:
        ensure_model_file(spec, progress=lambda *a: None)
    message = str(info.value)
    assert info.value.errno == errno.EROFS
    assert "could not be moved aside" in message and "Move or delete it yourself" not in message
    assert "The folder cannot be written, so the download could not go there either" in message
    assert "set SAMTUNE_CACHE_DIR to a folder you can write to" in message
    assert path.read_bytes() == b"<html>\n"
