"""Download model weights once, verify them, and never keep a partial or corrupt file.

A download streams into a temporary file next to its destination while the
hash is computed on the fly; only a complete file with the published hash is
renamed into place. A verified file gets a small stamp (``.<name>.verified``,
holding size, modification time and hash), so later loads do not re-hash
gigabytes; a file that changed since (or was put there by hand) is hashed again.
A file found where the download goes but with another hash is never deleted: it
is moved aside to ``<name>.wrong-hash`` (and said so) before downloading. Every
failure raises :class:`DownloadError` naming the URL and the exact path where
the file can be saved by hand.

User models and packaged weights have no URL: their files are checked against
the size and hash recorded for them (:func:`local_weights_problem`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from napari_samtune import __version__
from napari_samtune.core.checkpoints import atomic_write, first_free
from napari_samtune.core.registry import ModelSpec, parse_hash

ProgressCallback = Callable[[int, "int | None"], None]  # (bytes_done, bytes_total or None)
CHUNK_SIZE = 1 << 20  # bytes read per step: big enough for speed, small enough for progress
DEFAULT_TIMEOUT = 60.0  # seconds without data before a download is abandoned
WRONG_HASH_SUFFIX = ".wrong-hash"  # a file with the wrong hash is moved to <name><suffix>[-n]

# Notes that are no error (a file moved aside): shown plainly on stderr by logging's
# last-resort handler when the application configured no logging, never as a Python warning.
_log = logging.getLogger(__name__)


class DownloadError(OSError):
    """A model file could not be downloaded, or what arrived was not the published file."""


class _ProgressCallbackFailed(Exception):
    """Carries a progress callback's own exception past the network error handlers."""


def _new_hasher(algorithm: str):
    if algorithm == "sha256":
        return hashlib.sha256()
    try:
        import xxhash
    except ImportError as err:
        raise ModuleNotFoundError(
            f"checking a {algorithm} hash needs the 'xxhash' package: pip install xxhash"
        ) from err
    return xxhash.xxh3_128()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes with ``algorithm`` ("sha256" or "xxh128")."""
    hasher = _new_hasher(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def stamp_path(path: str | Path) -> Path:
    """The verification stamp kept next to ``path``: ``.<name>.verified``."""
    path = Path(path)
    return path.with_name(f".{path.name}.verified")


def _stamp_content(path: Path, file_hash: str) -> dict:
    stat = path.stat()
    return {"file_hash": file_hash, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _has_valid_stamp(path: Path, file_hash: str) -> bool:
    try:
        stamp = json.loads(stamp_path(path).read_text(encoding="utf-8"))
        return stamp == _stamp_content(path, file_hash)
    except (OSError, ValueError):
        return False


def write_stamp(path: str | Path, file_hash: str) -> None:
    """Record that ``path`` (as it is now) has ``file_hash``; call only right after checking it.

    A folder that cannot be written to only costs hashing the file again next time."""
    path = Path(path)
    try:
        stamp_path(path).write_text(json.dumps(_stamp_content(path, file_hash)), encoding="utf-8")
    except OSError:
        pass


def mismatched_digest(path: str | Path, file_hash: str) -> str | None:
    """None when the existing file ``path`` has ``file_hash``, else the hex digest it has.

    A valid stamp spares the hashing; a file found to match is stamped."""
    path = Path(path)
    if _has_valid_stamp(path, file_hash):
        return None
    algorithm, expected = parse_hash(file_hash)
    digest = file_digest(path, algorithm)
    if digest != expected:
        return digest
    write_stamp(path, file_hash)
    return None


def is_verified(path: str | Path, file_hash: str) -> bool:
    """True when the file at ``path`` exists and has ``file_hash`` (stamped after a first check)."""
    path = Path(path)
    return path.is_file() and mismatched_digest(path, file_hash) is None


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


def _stream_to_file(
    url: str,
    tmp: Path,
    dest: Path,
    algorithm: str,
    progress: ProgressCallback | None,
    timeout: float,
) -> str:
    """Copy the response body of ``url`` into ``tmp``; return the hex digest of what arrived."""
    hasher = _new_hasher(algorithm)
    request = urllib.request.Request(url, headers={"User-Agent": f"napari-samtune/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with _progress_reporter(progress, dest, total) as report:
            _call_progress(report, 0, total)
            while chunk := response.read(CHUNK_SIZE):
                out.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                _call_progress(report, done, total)
    if total is not None and done != total:
        raise DownloadError(f"the connection closed after {done} of {total} bytes")
    return hasher.hexdigest()


def _fetch(
    url: str,
    tmp: Path,
    dest: Path,
    file_hash: str | None,
    progress: ProgressCallback | None,
    timeout: float,
) -> None:
    algorithm, expected = parse_hash(file_hash) if file_hash else ("sha256", None)
    try:
        digest = _stream_to_file(url, tmp, dest, algorithm, progress, timeout)
    except _ProgressCallbackFailed as failed:
        raise failed.__cause__ from None
    except urllib.error.HTTPError as err:
        reason = f"the server answered HTTP {err.code} {err.reason}"
        raise DownloadError(
            f"could not download {url}: {reason}. {_manual_hint(url, dest)}"
        ) from err
    except urllib.error.URLError as err:
        reason = f"{err.reason} (are you offline or behind a proxy?)"
        raise DownloadError(
            f"could not download {url}: {reason}. {_manual_hint(url, dest)}"
        ) from err
    except (OSError, http.client.HTTPException) as err:
        reason = str(err) or type(err).__name__
        raise DownloadError(
            f"could not download {url}: {reason}. {_manual_hint(url, dest)}"
        ) from err
    if expected is not None and digest != expected:
        raise DownloadError(
            f"the file downloaded from {url} has {algorithm} {digest}, but the published hash "
            f"is {expected}: it is corrupt or was changed on the server, so it was not kept. "
            f"Try again later; {_manual_hint(url, dest)}"
        )


def _move_aside(dest: Path, expected_hash: str, found: str) -> str:
    """Move the file at ``dest`` (which has digest ``found``) out of the way of a download, to
    the first free ``<name>.wrong-hash[-n]`` next to it; returns the sentence that says so."""
    algorithm, expected = parse_hash(expected_hash)
    what = (
        f"{dest} ({dest.stat().st_size} bytes) has {algorithm} {found}, not the published "
        f"{expected}: it is not the published file (an unfinished download, or a web page "
        "saved in its place?)"
    )

    def taken(name: str) -> bool:
        return dest.with_name(name).exists() or dest.with_name(name).is_symlink()

    aside = dest.with_name(first_free(dest.name + WRONG_HASH_SUFFIX, taken))
    try:
        dest.rename(aside)
    except OSError as err:
        raise DownloadError(
            f"{what}; it could not be moved aside to {aside} to make room for the download "
            f"({err}). Move or delete it yourself, then try again"
        ) from err
    stamp_path(dest).unlink(missing_ok=True)
    return f"{what}, so it was moved to {aside}"


def download_file(
    url: str,
    dest: str | Path,
    expected_hash: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``dest`` unless a file with ``expected_hash`` is already there.

    ``expected_hash`` is ``"sha256:<hex>"``, ``"xxh128:<hex>"``, a bare sha256 hex,
    or None (no check: any file already at ``dest`` counts as present). A file at
    ``dest`` with another hash is not deleted: it is moved to ``<dest>.wrong-hash``
    (``-2``, ``-3``... when taken) and downloaded afresh; the move is logged (a plain
    line on stderr unless logging is configured), or said in the error if that fails.
    ``progress(bytes_done, bytes_total)`` is called as data arrives (``bytes_total``
    is None when the server does not say); without it a tqdm bar is shown on stderr;
    a callback that raises cancels the download (its exception propagates, nothing is
    kept). Raises :class:`DownloadError` (an ``OSError``) on HTTP errors, network
    failures, truncation and hash mismatch; then nothing is left at ``dest``, and the
    message also says where a file moved aside went.
    """
    dest = Path(dest)
    if expected_hash is not None:
        parse_hash(expected_hash)  # a malformed hash is a ValueError before any network use
    moved = ""
    if dest.is_file():
        found = None if expected_hash is None else mismatched_digest(dest, expected_hash)
        if found is None:
            return dest
        moved = _move_aside(dest, expected_hash, found)
    stamp_path(dest).unlink(missing_ok=True)
    try:
        atomic_write(dest, lambda tmp: _fetch(url, tmp, dest, expected_hash, progress, timeout))
    except DownloadError as err:
        if not moved:
            raise
        raise DownloadError(f"{moved}; then {err}") from err
    except BaseException:  # cancelled: the move is said here, as no error of ours says it
        if moved:
            _log.warning("%s; the download of %s was stopped", moved, url)
        raise
    if moved:
        _log.warning("%s; the published file was downloaded from %s in its place", moved, url)
    if expected_hash is not None:
        write_stamp(dest, expected_hash)  # _fetch checked the hash of what arrived
    return dest


def _size_problem(spec: ModelSpec, path: Path) -> str | None:
    size = path.stat().st_size
    if spec.file_size is None or size == spec.file_size:
        return None
    return (
        f"at {path} are {size} bytes, not the {spec.file_size} bytes recorded when the "
        "model was registered"
    )


def local_weights_problem(spec: ModelSpec) -> str | None:
    """What is wrong with the existing weights file of a model without URL (user or packaged).

    None when it has the recorded size (user models registered since sizes are kept)
    and hash; else a clause to follow "the weights of model 'x' ...", e.g. "at PATH do
    not match their recorded sha256 hash (expected ..., found ...)". The size is checked
    first, at no cost. A user model's file is hashed only if it changed since its last
    check (its stamp); packaged weights (small, in a folder that may be read-only) are
    always hashed.
    """
    path = spec.local_path()
    problem = _size_problem(spec, path)
    if problem is not None or spec.file_hash is None:
        return problem
    algorithm, expected = parse_hash(spec.file_hash)
    if spec.packaged:
        found = file_digest(path, algorithm)
        if found == expected:
            return None
    else:
        found = mismatched_digest(path, spec.file_hash)
        if found is None:
            return None
    return (
        f"at {path} do not match their recorded {algorithm} hash "
        f"(expected {expected}, found {found})"
    )


def _local_model_file(spec: ModelSpec) -> Path:
    """The checked weights file of a user model or packaged model (no URL)."""
    # user_models imports this module: import late
    from napari_samtune.core.user_models import broken_user_model_fix, damaged_user_model_fix

    path = spec.local_path()
    user = spec.is_user_model
    what = "user model" if user else "built-in model"
    reinstall = "reinstall napari-samtune (e.g. pip install --force-reinstall napari-samtune)"
    if not path.is_file():
        fix = broken_user_model_fix(spec.name) if user else reinstall
        raise FileNotFoundError(f"the weights of {what} {spec.name!r} are missing: {path}; {fix}")
    problem = local_weights_problem(spec)
    if problem is not None:
        fix = damaged_user_model_fix(spec.name) if user else reinstall
        raise ValueError(
            f"the weights of {what} {spec.name!r} {problem}: the file is damaged or was "
            f"replaced; {fix}"
        )
    return path


def ensure_model_file(
    spec: ModelSpec, download: bool = True, progress: ProgressCallback | None = None
) -> Path:
    """Path of the verified weights of ``spec``, downloading them first when needed and allowed."""
    if spec.url is None:
        return _local_model_file(spec)
    path = spec.local_path()
    if download:
        return download_file(spec.url, path, spec.file_hash, progress)
    found = None
    if path.is_file() and spec.file_hash is not None:
        found = mismatched_digest(path, spec.file_hash)
    if path.is_file() and found is None:
        return path
    if found is None:
        problem, replace = "does not exist", ""
    else:
        algorithm, expected = parse_hash(spec.file_hash)
        problem = (
            f"does not match the published hash: it has {algorithm} {found}, the published "
            f"file has {expected}"
        )
        replace = f" (the file there is then moved to {path.name}{WRONG_HASH_SUFFIX})"
    raise DownloadError(
        f"model {spec.name!r} is not downloaded ({path} {problem}) and downloading is off. "
        f"Allow downloading{replace}, or download {spec.url} in a browser and save it as {path}"
    )


def download_status(spec: ModelSpec) -> Literal["verified", "present", "missing"]:
    """Quick look (no hashing): "verified" (stamped as matching), "present" or "missing"."""
    path = spec.local_path()
    if not path.is_file():
        return "missing"
    if spec.file_hash is not None and _has_valid_stamp(path, spec.file_hash):
        return "verified"
    return "present"
