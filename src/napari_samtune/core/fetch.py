"""One HTTP transfer of a file, resumed where an earlier transfer was cut off.

The bytes go to a partial file ``.<name>.part`` next to the destination (same file
system, so the final rename is atomic). When the network cuts a transfer short and
the published hash is known, the partial file is kept and the next transfer asks for
the rest with ``Range: bytes=N-``. The server's answer decides:

- 206 with ``Content-Range: bytes N-...``: the new bytes are appended;
- 200 (no range support), 416 (the partial file is not shorter than the file) or a
  206 for another range: the partial file is emptied and the file fetched whole.

The digest covers the bytes already on disk and the new ones; only a file with the
published hash is renamed into place. A download holds a lock on the partial file until
then: another download of the same file meanwhile (another process or thread) goes to a
private temporary file, as all downloads did before they could resume. Ctrl+C (a
``KeyboardInterrupt``, or the CLI's SIGTERM) keeps the partial file like a network failure:
the hash at the end still checks every byte; so does a progress callback that raises
:class:`DownloadStopped` (a program's "stop for now": a widget's Cancel, a closed window).
A mismatch, a cancel (a progress callback that raises anything else: a program's explicit
"not wanted", so the disk space comes back) or a download without a hash to check against
keeps no partial file.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import re
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import BinaryIO

from napari_samtune import __version__
from napari_samtune.core.arriving import answered, arriving
from napari_samtune.core.checkpoints import (
    ABANDONED_WRITE_SECONDS,
    remove_abandoned_writes,
    write_error,
)
from napari_samtune.core.registry import parse_hash
from napari_samtune.core.run_lock import same_file, try_lock

ProgressCallback = Callable[[int, "int | None"], None]  # (bytes_done, bytes_total or None)
CHUNK_SIZE = 1 << 20  # bytes read per step: big enough for speed, small enough for progress
DEFAULT_TIMEOUT = 60.0  # seconds without data before a download is abandoned
PARTIAL_SUFFIX = ".part"  # an unfinished download of <name> is kept as .<name><suffix>

_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class DownloadError(OSError):
    """A model file could not be downloaded, or what arrived was not the published file."""


class DownloadStopped(Exception):
    """Raised by a progress callback to stop a download and keep what arrived for the next
    download to resume (where the published hash is known); :func:`fetch` raises it on
    with its message saying what was kept and where, and ``kept_bytes`` how many."""

    kept_bytes = 0  # received and kept in the partial file for the next download


class _ProgressCallbackFailed(Exception):
    """Carries a progress callback's own exception past the network error handlers."""


def new_hasher(algorithm: str):
    """A hashlib-style hasher for "sha256" or "xxh128" (the latter needs ``xxhash``)."""
    if algorithm == "sha256":
        return hashlib.sha256()
    try:
        import xxhash
    except ImportError as err:
        raise ModuleNotFoundError(
            f"checking a {algorithm} hash needs the 'xxhash' package: pip install xxhash"
        ) from err
    return xxhash.xxh3_128()


def partial_path(dest: str | Path) -> Path:
    """Where an unfinished download of ``dest`` is kept: ``.<name>.part`` next to it."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}{PARTIAL_SUFFIX}")


def _manual_hint(url: str, dest: Path) -> str:
    return f"To install it by hand, download {url} in a browser and save it as {dest}"


@contextmanager
def _progress_reporter(
    progress: ProgressCallback | None, dest: Path, total: int | None
) -> Iterator[ProgressCallback]:
    if progress is not None:
        yield progress
        return
    from napari_samtune.core.progress import progress_bar

    desc = f"Downloading {dest.name}"
    with progress_bar(total, desc, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        yield lambda done, _total: bar.update(done - bar.n)


def _call_progress(report: ProgressCallback, done: int, total: int | None) -> None:
    try:
        report(done, total)
    except Exception as err:
        raise _ProgressCallbackFailed() from err


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"napari-samtune/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _continues_at(response: http.client.HTTPResponse, offset: int) -> bool:
    """True when ``response`` is a 206 whose body starts at byte ``offset`` of the file."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return response.status == 206 and match is not None and int(match[1]) == offset


def _open_from(url: str, offset: int, timeout: float) -> tuple[http.client.HTTPResponse, int]:
    """The response to read and the byte of the file its body starts at (``offset`` or 0)."""
    if offset:
        try:
            response = _request(url, offset, timeout)
        except urllib.error.HTTPError as err:
            if err.code != 416:  # 416: the partial file is as long as the file, or longer
                raise
            err.close()
        else:
            if _continues_at(response, offset):
                return response, offset
            if response.status == 200:  # no range support: this is the whole file
                return response, 0
            response.close()
    return _request(url, 0, timeout), 0


def _total_size(response: http.client.HTTPResponse, start: int) -> int | None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if start and match and match[2].isdigit():
        return int(match[2])
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _hash_on_disk(path: Path, size: int, hasher) -> None:
    """Feed the first ``size`` bytes of ``path`` to ``hasher``."""
    with open(path, "rb") as stream:
        left = size
        while left and (chunk := stream.read(min(CHUNK_SIZE, left))):
            hasher.update(chunk)
            left -= len(chunk)


@contextmanager
def _disk_errors(out: BinaryIO) -> Iterator[None]:
    """Raise a failed write to the partial file ``out`` (a full disk) as an error that names
    the file and the fix, not as a bare errno taken for a network failure."""
    try:
        yield
    except OSError as err:
        raise write_error(Path(out.name), err) from err


def _stream(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    hasher,
    start: int,
    total: int | None,
    report: ProgressCallback,
) -> None:
    done = start
    _call_progress(report, done, total)
    with closing(
        arriving(response, CHUNK_SIZE, lambda: _call_progress(report, done, total))
    ) as chunks:
        for chunk in chunks:
            with _disk_errors(out):
                out.write(chunk)
            hasher.update(chunk)
            done += len(chunk)
            _call_progress(report, done, total)
    if total is not None and done != total:
        raise DownloadError(f"the connection closed after {done} of {total} bytes")


def _download_into(
    url: str,
    out: BinaryIO,
    resume: bool,
    file_hash: str | None,
    dest: Path,
    progress: ProgressCallback | None,
    timeout: float,
) -> tuple[str, int]:
    """Fill the partial file ``out`` (open for appending) with the file at ``url``, resuming
    at its end when ``resume``; returns the hex digest of the whole file and the byte the
    transfer resumed at (0: from the start)."""
    offset = os.fstat(out.fileno()).st_size if resume else 0

    def waiting() -> None:  # for the server's answer: the total is not known yet
        if progress is not None:
            _call_progress(progress, offset, None)

    response, start = answered(
        lambda: _open_from(url, offset, timeout), waiting, lambda opened: opened[0].close()
    )
    with response:
        out.truncate(start)  # a restart empties the partial file; appending goes on from here
        hasher = new_hasher(parse_hash(file_hash)[0] if file_hash else "sha256")
        _hash_on_disk(Path(out.name), start, hasher)
        total = _total_size(response, start)
        with _progress_reporter(progress, dest, total) as report:
            _stream(response, out, hasher, start, total, report)
    return hasher.hexdigest(), start


def _open_new(path: Path, dest: Path, mode: str) -> BinaryIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode)
    except OSError as err:
        raise write_error(dest, err) from err


def _claim_partial(dest: Path) -> tuple[BinaryIO, Path, bool]:
    """The partial file of ``dest`` open for appending and locked by this process, its path,
    and True; while another process (or thread) downloads into it, a private temporary file
    next to it and False (nothing to resume from or keep). The lock, freed on closing, keeps
    two downloads from appending to one file; where the system has no locks (Windows, some
    network file systems) they are not kept apart."""
    part = partial_path(dest)
    try:
        import fcntl
    except ImportError:
        return _open_new(part, dest, "ab"), part, True
    while True:
        out = _open_new(part, dest, "ab")
        held = try_lock(fcntl, out)
        if held is None or (held and same_file(out, part)):
            return out, part, True
        out.close()
        if held is False:
            private = part.with_name(f"{part.name}-{secrets.token_hex(4)}")
            return _open_new(private, dest, "xb"), private, False
        # else the download holding it just put it in place: open the new partial file


def drop_leftover_partials(dest: Path, max_age_s: float = ABANDONED_WRITE_SECONDS) -> None:
    """Delete what unfinished downloads of ``dest`` left that nothing will resume: its
    partial file once ``dest`` is in place (saved by hand, or by another download) and no
    download holds it; the private files of downloads that ran beside another, once
    untouched for ``max_age_s`` (a running one writes every second; a killed one leaves
    them, up to a model's size each)."""
    remove_abandoned_writes(dest.parent, f"{glob.escape(partial_path(dest).name)}-*", max_age_s)
    part = partial_path(dest)
    if not (dest.is_file() and part.is_file()):
        return
    try:
        import fcntl
    except ImportError:  # no locks: another download may be writing it
        return
    try:
        with open(part, "ab") as out:
            if try_lock(fcntl, out) and same_file(out, part):
                part.unlink()
    except OSError:  # gone meanwhile, or not ours to delete
        pass


def _failure_reason(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"the server answered HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"{err.reason} (are you offline or behind a proxy?)"
    return str(err) or type(err).__name__


def _keep_or_drop(part: Path, keep: bool) -> str:
    """Keep a non-empty partial file when ``keep``; the clause that says so, else ''."""
    size = part.stat().st_size if part.is_file() else 0
    if keep and size:
        return f"; the {size} bytes received are kept in {part} and the next download resumes there"
    part.unlink(missing_ok=True)
    return ""


def _say_what_was_kept(stop: BaseException, url: str, kept: str) -> None:
    """Append to the message of ``stop`` that the download was stopped and ``kept``."""
    note = f"the download of {url} was stopped{kept}"
    stop.args = ("; ".join(filter(None, [str(stop), note])),)


class _NotPlaced(Exception):
    """Carries the error that kept a complete download out of place (a hash mismatch, a
    failed rename) past the network error handlers; ``error`` is raised."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@contextmanager
def _download_errors(url: str, dest: Path, part: Path, keep: bool) -> Iterator[None]:
    """Raise what went wrong inside as the caller should see it; ``part`` (closed by then,
    which Windows needs to delete it) is kept after a network failure when ``keep`` and
    holds bytes, else deleted."""
    try:
        yield
    except _ProgressCallbackFailed as failed:
        error = failed.__cause__
        if not isinstance(error, DownloadStopped):
            part.unlink(missing_ok=True)
            raise error from None
        _say_what_was_kept(error, url, _keep_or_drop(part, keep))
        error.kept_bytes = part.stat().st_size if part.is_file() else 0
        raise error from None
    except _NotPlaced as failed:
        part.unlink(missing_ok=True)
        raise failed.error from failed.error.__cause__
    except (OSError, http.client.HTTPException) as err:
        kept = _keep_or_drop(part, keep)
        reason = _failure_reason(err)
        hint = _manual_hint(url, dest)
        error = DownloadError(f"could not download {url}: {reason}{kept}. {hint}")
        # a full disk's errno, for the caller to say where else the models can go; not the
        # network's (an SSL error's 1 reads as EPERM)
        error.errno = None if isinstance(err, ssl.SSLError) else getattr(err, "errno", None)
        raise error from err
    except KeyboardInterrupt as stop:  # the same object goes on, saying what was kept
        kept = _keep_or_drop(part, keep)
        if kept:
            _say_what_was_kept(stop, url, kept)
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def fetch(
    url: str,
    dest: Path,
    file_hash: str | None,
    progress: ProgressCallback | None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Download ``url`` to ``dest`` through its partial file and rename it into place.

    With a ``file_hash`` a partial file left by a cut-off transfer is resumed, and a
    network failure or a ``KeyboardInterrupt`` (its message then says so) keeps what
    arrived; without one every transfer starts from zero and keeps nothing. Raises
    :class:`DownloadError` for network failures and a hash mismatch (which deletes the
    partial file); a progress callback's exception propagates as is (a cancel: the
    partial file is deleted), except :class:`DownloadStopped`, which keeps what arrived
    as a network failure does and says so in its message.
    """
    out, part, shared = _claim_partial(dest)  # an unwritable folder fails before any request
    resume = shared and file_hash is not None
    with _download_errors(url, dest, part, resume), out:  # the file closes first
        digest, start = _download_into(url, out, resume, file_hash, dest, progress, timeout)
        with _disk_errors(out):
            out.flush()
        _check_digest(digest, file_hash, url, dest, start)
        if os.name != "nt":  # renamed while locked, so no other download takes it meanwhile
            _move_into_place(part, dest)
    if os.name == "nt":  # Windows renames no open file (and has no locks here)
        with _download_errors(url, dest, part, resume):
            _move_into_place(part, dest)


def _move_into_place(part: Path, dest: Path) -> None:
    try:
        os.replace(part, dest)
    except OSError as err:
        error = write_error(dest, err)
        error.__cause__ = err
        raise _NotPlaced(error) from None


def _check_digest(digest: str, file_hash: str | None, url: str, dest: Path, start: int) -> None:
    """Raise (as :class:`_NotPlaced`) a :class:`DownloadError` when ``digest`` is not
    ``file_hash``'s."""
    if file_hash is None:
        return
    algorithm, expected = parse_hash(file_hash)
    if digest == expected:
        return
    if start:  # the earlier part may be what was wrong: starting afresh may succeed
        resumed = f" (resumed at byte {start} of an earlier download)"
        advice = "The next download starts from zero: try again"
    else:
        resumed = ""
        advice = (
            "If it happens again, the server sends another file (a login or error page?) "
            "or the file changed there"
        )
    raise _NotPlaced(
        DownloadError(
            f"the file downloaded from {url}{resumed} has {algorithm} {digest}, but the "
            f"published hash is {expected}: it is corrupt, so it was not kept. {advice}. "
            f"{_manual_hint(url, dest)}"
        )
    )
