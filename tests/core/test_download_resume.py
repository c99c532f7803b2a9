"""A download the network cut short resumes with an HTTP Range request (``server`` fixture:
a real HTTP server on 127.0.0.1, see conftest.py)."""

import hashlib
import time

import pytest

from napari_samtune.core.download import DownloadError, download_file, is_verified
from napari_samtune.core.fetch import DownloadStopped, partial_path

PAYLOAD = bytes(range(251)) * 5000  # 1.26 MB: more than one read chunk; 251 so no period of 2^k
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
CUT = len(PAYLOAD) * 9 // 10  # the first answer drops at 90%


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def _download(server, dest, calls=None):
    def report(done, total):
        if calls is not None and total is not None:  # (not while the answer is awaited)
            calls.append((done, total))

    return download_file(server.url("/w.pt"), dest, SHA256, progress=report)


def _cut_off_download(server, dest):
    """A first download that the connection drops at 90%: the partial file stays."""
    server.files["/w.pt"] = PAYLOAD
    server.cut_once["/w.pt"] = CUT
    with pytest.raises(DownloadError, match="could not download") as info:
        _download(server, dest)
    part = partial_path(dest)
    assert part.read_bytes() == PAYLOAD[:CUT] and not dest.exists()
    assert f"{CUT} bytes received are kept in {part}" in str(info.value)
    assert "resumes" in str(info.value)


def test_a_cut_off_download_resumes_where_it_stopped(server, tmp_path):
    server.accepts_ranges = True
    dest = tmp_path / "w.pt"
    _cut_off_download(server, dest)
    calls = []
    _download(server, dest, calls)
    assert server.range_headers == [None, f"bytes={CUT}-"]
    assert server.answers[-1] == (206, len(PAYLOAD) - CUT)  # only the rest was sent
    assert calls[0] == (CUT, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and is_verified(dest, SHA256)
    assert _leftovers(tmp_path) == [".w.pt.verified", "w.pt"]  # the partial file was moved


def test_a_server_without_range_support_sends_it_all_again(server, tmp_path):
    dest = tmp_path / "w.pt"
    _cut_off_download(server, dest)
    calls = []
    _download(server, dest, calls)
    assert server.range_headers == [None, f"bytes={CUT}-"]
    assert server.answers[-1] == (200, len(PAYLOAD))
    assert calls[0] == (0, len(PAYLOAD))  # counted from zero, as the file is
    assert dest.read_bytes() == PAYLOAD  # not the first 90% twice
    assert _leftovers(tmp_path) == [".w.pt.verified", "w.pt"]


def test_a_partial_file_longer_than_the_file_is_started_again(server, tmp_path):
    server.accepts_ranges = True
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    partial_path(dest).write_bytes(PAYLOAD + b"left from another file")
    calls = []
    _download(server, dest, calls)
    assert server.range_headers == [f"bytes={len(PAYLOAD) + 22}-", None]
    assert [status for status, _ in server.answers] == [416, 200]
    assert calls[0] == (0, len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and not partial_path(dest).exists()


def test_a_resumed_file_with_the_wrong_hash_is_deleted_and_said(server, tmp_path):
    """The bytes on disk count in the hash: a partial file of another file is caught."""
    server.accepts_ranges = True
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    partial_path(dest).write_bytes(b"\0" * 1000)
    with pytest.raises(DownloadError, match="resumed at byte 1000") as info:
        _download(server, dest)
    assert "published hash" in str(info.value)
    assert "The next download starts from zero: try again" in str(info.value)
    assert server.answers == [(206, len(PAYLOAD) - 1000)]
    assert _leftovers(tmp_path) == []
    _download(server, dest)  # the next try fetches it whole
    assert server.range_headers[-1] is None and dest.read_bytes() == PAYLOAD


def test_a_download_that_drops_twice_resumes_twice(server, tmp_path):
    server.accepts_ranges = True
    dest = tmp_path / "w.pt"
    _cut_off_download(server, dest)
    server.cut_once["/w.pt"] = 1000
    with pytest.raises(DownloadError, match=f"{CUT + 1000} bytes received are kept"):
        _download(server, dest)
    _download(server, dest)
    assert server.range_headers == [None, f"bytes={CUT}-", f"bytes={CUT + 1000}-"]
    assert dest.read_bytes() == PAYLOAD


def test_a_cancelled_download_keeps_no_partial_file(server, tmp_path):
    server.accepts_ranges = True
    dest = tmp_path / "w.pt"
    _cut_off_download(server, dest)

    def cancel(done, total):
        raise InterruptedError("user pressed cancel")

    with pytest.raises(InterruptedError):
        download_file(server.url("/w.pt"), dest, SHA256, progress=cancel)
    assert _leftovers(tmp_path) == []


def _ctrl_c_after_the_first_chunk(received: list[int], stop=KeyboardInterrupt):
    """A progress callback standing for Ctrl+C pressed once the first chunk has arrived
    (SIGINT raises KeyboardInterrupt wherever the main thread is), or raising ``stop``."""

    def report(done, total):
        received.append(done)
        if done:
            raise stop

    return report


def test_ctrl_c_keeps_the_partial_file_and_the_next_download_resumes(server, tmp_path):
    """Ctrl+C during a multi-GB download deleted what had arrived: the next try started
    from zero. The hash at the end checks every byte, so keeping it risks nothing."""
    server.accepts_ranges = True
    server.files["/w.pt"] = PAYLOAD
    dest, received = tmp_path / "w.pt", []
    with pytest.raises(KeyboardInterrupt) as info:
        download_file(server.url("/w.pt"), dest, SHA256, _ctrl_c_after_the_first_chunk(received))
    done, part = received[-1], partial_path(dest)
    assert 0 < done < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:done]
    assert f"{done} bytes received are kept in {part}" in str(info.value)
    assert "next download resumes" in str(info.value) and not dest.exists()
    _download(server, dest)
    assert server.range_headers == [None, f"bytes={done}-"]
    assert dest.read_bytes() == PAYLOAD and is_verified(dest, SHA256)


def test_ctrl_c_without_a_hash_keeps_nothing(server, tmp_path):
    """Without a hash nothing would check a resumed file: it starts from zero next time."""
    server.accepts_ranges = True
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    with pytest.raises(KeyboardInterrupt) as info:
        download_file(server.url("/w.pt"), dest, None, _ctrl_c_after_the_first_chunk([]))
    assert _leftovers(tmp_path) == [] and str(info.value) == ""


def test_a_cancel_after_ctrl_c_deletes_the_kept_bytes(server, tmp_path):
    """A progress callback that raises is a program's cancel (the file is not wanted): the
    partial file goes, also one that Ctrl+C had kept."""
    server.accepts_ranges = True
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    with pytest.raises(KeyboardInterrupt):
        download_file(server.url("/w.pt"), dest, SHA256, _ctrl_c_after_the_first_chunk([]))
    assert partial_path(dest).is_file()

    def cancel(done, total):
        if done:
            raise InterruptedError("user pressed cancel")

    with pytest.raises(InterruptedError):
        download_file(server.url("/w.pt"), dest, SHA256, progress=cancel)
    assert _leftovers(tmp_path) == []


def test_a_download_while_another_holds_the_partial_file_does_not_touch_it(server, tmp_path):
    """Two downloads appending to one partial file would make a file of neither: the second
    goes to a temporary file of its own."""
    fcntl = pytest.importorskip("fcntl")  # Windows has no such locks
    server.accepts_ranges = True
    server.files["/w.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    part = partial_path(dest)
    part.write_bytes(PAYLOAD[:1000])
    with open(part, "ab") as other:  # another download, still going
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _download(server, dest)
        assert part.read_bytes() == PAYLOAD[:1000]  # neither appended to nor moved
    assert server.range_headers == [None] and dest.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == [".w.pt.part", ".w.pt.verified", "w.pt"]


def test_download_stopped_keeps_the_partial_file_and_the_next_download_resumes(server, tmp_path):
    """A widget's Cancel or a closed window stops a download for now: what arrived is kept
    as after Ctrl+C, and the message says where."""
    server.accepts_ranges = True
    server.files["/w.pt"] = PAYLOAD
    dest, received = tmp_path / "w.pt", []
    stop = DownloadStopped("cancelled")
    with pytest.raises(DownloadStopped) as info:
        download_file(
            server.url("/w.pt"), dest, SHA256, _ctrl_c_after_the_first_chunk(received, stop)
        )
    done, part = received[-1], partial_path(dest)
    assert info.value is stop and 0 < done < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:done]
    assert str(info.value).startswith("cancelled; the download of ")
    assert f"{done} bytes received are kept in {part}" in str(info.value)
    _download(server, dest)
    assert server.range_headers == [None, f"bytes={done}-"]
    assert dest.read_bytes() == PAYLOAD and is_verified(dest, SHA256)


def test_download_stopped_without_a_hash_keeps_nothing(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD
    with pytest.raises(DownloadStopped) as info:
        download_file(
            server.url("/w.pt"),
            tmp_path / "w.pt",
            None,
            _ctrl_c_after_the_first_chunk([], DownloadStopped()),
        )
    assert _leftovers(tmp_path) == [] and "kept" not in str(info.value)
    assert "was stopped" in str(info.value)


def test_cancel_stops_a_download_whose_server_stopped_sending_at_once(server, tmp_path):
    """A server that sent part of the file and then nothing: Cancel (the progress callback
    raising) waited for the next bytes, so the whole socket timeout (60 s), and the load
    then failed as "offline". The callback is now called while nothing arrives."""
    server.files["/w.pt"] = PAYLOAD
    server.stalls["/w.pt"] = 300_000
    dest, calls = tmp_path / "w.pt", []
    started = time.monotonic()

    def cancel_after_a_second(done, total):
        calls.append(done)
        if time.monotonic() - started > 1:
            raise DownloadStopped("cancelled")

    with pytest.raises(DownloadStopped) as info:
        download_file(server.url("/w.pt"), dest, SHA256, cancel_after_a_second, timeout=60)
    assert time.monotonic() - started < 30  # not the minute of the socket's timeout
    assert calls[-1] == 300_000 and calls.count(300_000) > 2  # called again while waiting
    assert partial_path(dest).read_bytes() == PAYLOAD[:300_000]
    assert "300000 bytes received are kept" in str(info.value)


def test_a_server_that_stopped_sending_still_times_out(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD
    server.stalls["/w.pt"] = 1000
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match="timed out") as info:
        download_file(server.url("/w.pt"), dest, SHA256, lambda *a: None, timeout=1)
    assert "1000 bytes received are kept" in str(info.value)
    assert partial_path(dest).read_bytes() == PAYLOAD[:1000]


def test_cancel_stops_a_download_whose_server_never_answers_at_once(server, tmp_path):
    """A server that took the connection but sent no answer: Cancel (the progress callback
    raising) waited for the socket timeout (a minute; napari's window closed, its process
    then hung as long), and the cancelled load then failed as "offline". The callback is
    now called while the answer is awaited, with the bytes kept and no total yet."""
    server.files["/w.pt"] = PAYLOAD
    server.silent.add("/w.pt")
    dest, calls = tmp_path / "w.pt", []
    partial_path(dest).write_bytes(PAYLOAD[:1000])  # kept from an earlier try
    started = time.monotonic()

    def cancel_after_a_second(done, total):
        calls.append((done, total))
        if time.monotonic() - started > 1:
            raise DownloadStopped("cancelled")

    with pytest.raises(DownloadStopped) as info:
        download_file(server.url("/w.pt"), dest, SHA256, cancel_after_a_second, timeout=60)
    assert time.monotonic() - started < 10  # not the minute of the socket's timeout
    assert len(calls) > 2 and set(calls) == {(1000, None)}
    assert partial_path(dest).read_bytes() == PAYLOAD[:1000]  # still there to resume
    assert "1000 bytes received are kept" in str(info.value)


def test_a_server_that_never_answers_still_times_out(server, tmp_path):
    server.files["/w.pt"] = PAYLOAD
    server.silent.add("/w.pt")
    with pytest.raises(DownloadError, match="timed out"):
        download_file(server.url("/w.pt"), tmp_path / "w.pt", SHA256, lambda *a: None, timeout=1)


@pytest.mark.parametrize("when", ["before the answer", "as it comes"])
def test_an_answer_after_a_stop_is_closed_and_the_kept_bytes_stay(server, tmp_path, when):
    """The answer came after the wait was given up: closing it failed ('tuple' object has
    no attribute 'close'), in its thread (napari showed the error) or, as the stop met the
    answer, in place of the stop, which then deleted the bytes kept for the next download."""
    import threading

    server.files["/w.pt"] = PAYLOAD
    server.delays["/w.pt"] = 0.6
    dest = tmp_path / "w.pt"
    partial_path(dest).write_bytes(PAYLOAD[:1000])
    failures, hook = [], threading.excepthook
    threading.excepthook = failures.append
    started = time.monotonic()

    def stop(done, total):
        if when == "as it comes" and time.monotonic() - started > 0.3:
            time.sleep(0.6)  # a slow callback (or Ctrl+C) while the answer arrives
        if time.monotonic() - started > 0.3:
            raise DownloadStopped("cancelled")

    try:
        with pytest.raises(DownloadStopped):
            download_file(server.url("/w.pt"), dest, SHA256, stop, timeout=10)
        time.sleep(1.0)  # the answer has come to the thread left waiting for it
    finally:
        threading.excepthook = hook
    assert failures == []
    assert partial_path(dest).read_bytes() == PAYLOAD[:1000]  # kept for the next one
