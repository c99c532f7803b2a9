"""Download model weights once, verify them, and never put a partial or corrupt file in place.

A download streams into a partial file next to its destination while the hash is
computed on the fly; only a complete file with the published hash is renamed into
place. A download the network cut short keeps its partial file and the next one
resumes it with an HTTP Range request (:mod:`napari_samtune.core.fetch`).
A verified file gets a small stamp (``.<name>.verified``, holding size,
modification time and hash), so later loads do not re-hash gigabytes; a file that
changed since (or was put there by hand) is hashed again.
A file found where the download goes but with another hash is never deleted: it
is moved aside to ``<name>.wrong-hash`` (and said so) before downloading. Every
failure raises :class:`DownloadError` naming the URL and the exact path where
the file can be saved by hand.

User models and packaged weights have no URL: their files are checked against
the size and hash recorded for them (:func:`local_weights_problem`).
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Literal

from napari_samtune.core.checkpoints import first_free, write_error
from napari_samtune.core.fetch import (
    CHUNK_SIZE,
    DEFAULT_TIMEOUT,
    DownloadError,
    ProgressCallback,
    drop_leftover_partials,
    fetch,
    new_hasher,
)
from napari_samtune.core.registry import ModelSpec, models_cache_dir, parse_hash

WRONG_HASH_SUFFIX = ".wrong-hash"  # a file with the wrong hash is moved to <name><suffix>[-n]

# Notes that are no error (a file moved aside): shown plainly on stderr by logging's
# last-resort handler when the application configured no logging, never as a Python warning.
_log = logging.getLogger(__name__)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes with ``algorithm`` ("sha256" or "xxh128")."""
    hasher = new_hasher(algorithm)
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


_PRESENT = "present"  # _present_or_mismatch: the file is there, with the hash asked for
LOOKS_AT_A_CHANGING_FILE = 5  # hashings of a file that changes meanwhile, before moving it


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, modification time) of the file at ``path``; None where there is none."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _present_or_mismatch(
    dest: Path, expected_hash: str | None
) -> str | tuple[str, tuple[int, int, int]] | None:
    """:data:`_PRESENT` when ``dest`` holds the file (any file without ``expected_hash``),
    None when nothing is there, else (the digest it has, its identity) for moving it aside.

    Hashing a large file takes seconds, in which another download may put the published
    file in place, or move this one aside: a file that changed while it was hashed is
    looked at again, so that a good file is never moved aside (it was, with a message
    naming the other file's hash) and a vanished one is no error. A file that keeps
    changing (still being written) is taken as it was at the last look."""
    found = None
    for _ in range(LOOKS_AT_A_CHANGING_FILE):
        identity = _file_identity(dest)
        if identity is None or not dest.is_file():
            return None
        if expected_hash is None:
            return _PRESENT
        try:
            found = mismatched_digest(dest, expected_hash)
        except FileNotFoundError:  # moved aside meanwhile by another download
            continue
        if found is None:
            return _PRESENT
        if _file_identity(dest) == identity:
            break
    return None if found is None else (found, identity)


def _move_aside(dest: Path, expected_hash: str, found: str, identity: tuple) -> str:
    """Move the file at ``dest`` (which has digest ``found``; ``identity`` as
    :func:`_file_identity` gives it) out of the way of a download, to the first free
    ``<name>.wrong-hash[-n]`` next to it; returns the sentence that says so, or '' when
    another download moved it first."""
    algorithm, expected = parse_hash(expected_hash)
    what = (
        f"{dest} ({identity[1]} bytes) has {algorithm} {found}, not the published "
        f"{expected}: it is not the published file (an unfinished download, or a web page "
        "saved in its place?)"
    )

    def taken(name: str) -> bool:
        return dest.with_name(name).exists() or dest.with_name(name).is_symlink()

    aside = dest.with_name(first_free(dest.name + WRONG_HASH_SUFFIX, taken))
    try:
        dest.rename(aside)
    except FileNotFoundError:
        return ""
    except OSError as err:
        unwritable = err.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        fix = (  # a read-only folder: nobody moves it, nor could the download go there
            "The folder cannot be written, so the download could not go there either"
            if unwritable
            else "Move or delete it yourself, then try again"
        )
        error = DownloadError(
            f"{what}; it could not be moved aside to {aside} to make room for the download "
            f"({err}). {fix}"
        )
        error.errno = err.errno  # the caller's hint of another cache folder follows it
        raise error from err
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
    is None when the server does not say), and every quarter second while none does (with
    ``bytes_total`` None until the server answers); without it a tqdm bar is shown on stderr;
    a callback that raises cancels the download (its exception propagates, nothing is
    kept), unless it raises :class:`~napari_samtune.core.fetch.DownloadStopped` ("stop
    for now": what arrived is kept as after a network failure). Raises
    :class:`DownloadError` (an ``OSError``) on HTTP errors, network
    failures, truncation and hash mismatch; then nothing is left at ``dest``, and the
    message also says where a file moved aside went. With ``expected_hash``, what arrived
    before a network failure or Ctrl+C (``KeyboardInterrupt``) stays in ``.<name>.part``
    (the message says so) and the next call resumes from there when the server supports
    Range requests; the progress then starts at the resumed byte.
    """
    dest = Path(dest)
    if expected_hash is not None:
        parse_hash(expected_hash)  # a malformed hash is a ValueError before any network use
    found = _present_or_mismatch(dest, expected_hash)
    if found is _PRESENT:
        drop_leftover_partials(dest)
        return dest
    moved = "" if found is None else _move_aside(dest, expected_hash, *found)
    try:
        stamp_path(dest).unlink(missing_ok=True)
    except OSError as err:  # e.g. SAMTUNE_CACHE_DIR is a file: said as a failed write is
        raise write_error(dest, err) from err
    try:
        fetch(url, dest, expected_hash, progress, timeout)
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
        write_stamp(dest, expected_hash)  # fetch checked the hash of what arrived
    drop_leftover_partials(dest)
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
        try:
            return download_file(spec.url, path, spec.file_hash, progress)
        except OSError as err:
            if err.errno not in _FOLDER_ERRNOS:
                raise
            raise _with_cache_folder_hint(err) from err
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


# a download's folder cannot take it: read-only, not a folder, full (write_error's errnos)
_FOLDER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EROFS", "EACCES", "EPERM", "EEXIST", "ENOTDIR", "ENOSPC", "EDQUOT")
    if hasattr(errno, name)
)


def _with_cache_folder_hint(err: OSError) -> OSError:
    """``err`` (same type and errno) saying how to download the models elsewhere: its
    "choose another folder" did not say how."""
    hint = (
        f"downloaded models are kept in {models_cache_dir()}; to keep them elsewhere, set "
        "SAMTUNE_CACHE_DIR to a folder you can write to (they go into its 'models' folder)"
    )
    worded = type(err)(f"{err}. {hint}")
    worded.errno = err.errno
    return worded


def download_status(spec: ModelSpec) -> Literal["verified", "present", "missing"]:
    """Quick look (no hashing): "verified" (stamped as matching), "present" or "missing"."""
    path = spec.local_path()
    if not path.is_file():
        return "missing"
    if spec.file_hash is not None and _has_valid_stamp(path, spec.file_hash):
        return "verified"
    return "present"
