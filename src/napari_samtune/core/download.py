"""Download model weights once, verify them, and never keep a partial or corrupt file.

A download streams into a temporary file next to its destination while the
hash is computed on the fly; only a complete file with the published hash is
renamed into place. A verified file gets a small stamp (``.<name>.verified``,
holding size, modification time and hash), so later loads do not re-hash
gigabytes; a file that changed since (or was put there by hand) is hashed again.
Every failure raises :class:`DownloadError` naming the URL and the exact path
where the file can be saved by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from napari_samtune import __version__
from napari_samtune.core.checkpoints import atomic_write
from napari_samtune.core.registry import ModelSpec, parse_hash

ProgressCallback = Callable[[int, "int | None"], None]  # (bytes_done, bytes_total or None)
CHUNK_SIZE = 1 << 20  # bytes read per step: big enough for speed, small enough for progress
DEFAULT_TIMEOUT = 60.0  # seconds without data before a download is abandoned


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


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stamp_content(path: Path, file_hash: str) -> dict:
    stat = path.stat()
    return {"file_hash": file_hash, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _has_valid_stamp(path: Path, file_hash: str) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        return stamp == _stamp_content(path, file_hash)
    except (OSError, ValueError):
        return False


def is_verified(path: str | Path, file_hash: str) -> bool:
    """True when the file at ``path`` exists and has ``file_hash`` (stamped after a first check)."""
    path = Path(path)
    if not path.is_file():
        return False
    if _has_valid_stamp(path, file_hash):
        return True
    algorithm, expected = parse_hash(file_hash)
    if file_digest(path, algorithm) != expected:
        return False
    _stamp_path(path).write_text(json.dumps(_stamp_content(path, file_hash)), encoding="utf-8")
    return True


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
    ``dest`` with another hash is replaced. ``progress(bytes_done, bytes_total)``
    is called as data arrives (``bytes_total`` is None when the server does not say);
    without it a tqdm bar is shown on stderr; a callback that raises cancels the
    download (its exception propagates, nothing is kept). Raises :class:`DownloadError` (an
    ``OSError``) on HTTP errors, network failures, truncation and hash mismatch;
    then nothing is left at ``dest``.
    """
    dest = Path(dest)
    if expected_hash is not None:
        parse_hash(expected_hash)  # a malformed hash is a ValueError before any network use
    if dest.is_file():
        if expected_hash is None or is_verified(dest, expected_hash):
            return dest
        warnings.warn(
            f"{dest} does not have hash {expected_hash}; downloading it again", stacklevel=2
        )
        dest.unlink()
    _stamp_path(dest).unlink(missing_ok=True)
    atomic_write(dest, lambda tmp: _fetch(url, tmp, dest, expected_hash, progress, timeout))
    if expected_hash is not None:
        is_verified(dest, expected_hash)  # writes the stamp
    return dest


def _check_local_hash(spec: ModelSpec, path: Path) -> None:
    """Packaged or registered weights with a recorded hash must still match it."""
    if spec.file_hash is None:
        return
    algorithm, expected = parse_hash(spec.file_hash)
    if file_digest(path, algorithm) != expected:
        raise ValueError(
            f"the weights of model {spec.name!r} at {path} do not match their recorded "
            f"{algorithm} hash (the file is damaged or was replaced); reinstall napari-samtune "
            "or register the model again"
        )


def ensure_model_file(
    spec: ModelSpec, download: bool = True, progress: ProgressCallback | None = None
) -> Path:
    """Path of the verified weights of ``spec``, downloading them first when needed and allowed."""
    path = spec.local_path()
    if spec.url is None:
        if path.is_file():
            _check_local_hash(spec, path)
            return path
        raise FileNotFoundError(
            f"the weights of model {spec.name!r} are missing: {path}; register the model again"
        )
    if download:
        return download_file(spec.url, path, spec.file_hash, progress)
    if path.is_file() and (spec.file_hash is None or is_verified(path, spec.file_hash)):
        return path
    problem = "does not match the published hash" if path.is_file() else "does not exist"
    raise DownloadError(
        f"model {spec.name!r} is not downloaded ({path} {problem}) and downloading is off. "
        f"Allow downloading, or download {spec.url} in a browser and save it as {path}"
    )


def download_status(spec: ModelSpec) -> Literal["verified", "present", "missing"]:
    """Quick look (no hashing): "verified" (stamped as matching), "present" or "missing"."""
    path = spec.local_path()
    if not path.is_file():
        return "missing"
    if spec.file_hash is not None and _has_valid_stamp(path, spec.file_hash):
        return "verified"
    return "present"
