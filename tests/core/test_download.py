"""Downloads against a real HTTP server on 127.0.0.1 (no internet needed)."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class _Server:
    """Serves ``files`` (path -> bytes); ``short`` paths promise more bytes than they send."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.short else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_is_downloaded_verified_and_reported(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD
    calls = []
    dest = download_file(
        server.url("/w.pt"), tmp_path / "w.pt", SHA256, progress=lambda d, t: calls.append((d, t))
    )
    assert dest.read_bytes() == PAYLOAD
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
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


def test_present_file_with_wrong_hash_is_downloaded_again(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD
    dest = download_file(server.url("/w.pt"), tmp_path / "w.pt", SHA256, progress=lambda *a: None)
    dest.write_bytes(b"tampered")  # same path, new content: the stamp no longer matches
    with pytest.warns(UserWarning, match="downloading it again"):
        download_file(server.url("/w.pt"), dest, SHA256, progress=lambda *a: None)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


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
    with pytest.raises(DownloadError, match="does not match the published hash"):
        ensure_model_file(spec, download=False)
    assert server.requests == []


def test_user_model_without_its_file_is_a_clear_error():
    spec = ModelSpec("mine", "tiny", "mine.pt")
    with pytest.raises(FileNotFoundError, match="weights of model 'mine' are missing"):
        ensure_model_file(spec)
