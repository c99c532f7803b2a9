"""The embeddings cache on disk: one file per image view or training patch, within a size limit.

The annotation widgets, ``samtune segment`` and frozen-encoder training share one folder
(:func:`default_cache_dir`) and one limit, ``$SAMTUNE_EMBEDDING_CACHE_GB`` (default 10 GB;
0 keeps nothing new, and deletes nothing: training with it had kept the folder as it was,
while a prompt's save went over the limit and emptied it). Past the limit the least recently
used files go.

Finding them means reading every file's size and time: 22 ms for the 2,500 files a full
cache holds (ViT-B's 4 MB embeddings), more than a save's own write. So a cache object
keeps a running total, rescans when that total goes over the limit or when
:data:`RESCAN_SECONDS` have passed (other processes save too), and evicts down to
:data:`EVICT_TO` of the limit, which lets the next saves scan nothing. On a 2-core AMD
EPYC (``benchmarks/bench_cache.py``), a 4 MB save into a folder of 2,500 files took 3.0
instead of 24.6 ms at the median (3.4 ms into an empty folder with a scan at every save).
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import time
import warnings
import zlib
from pathlib import Path

import torch

from napari_samtune.core.checkpoints import (
    atomic_torch_save,
    first_line,
    remove_abandoned_writes,
)
from napari_samtune.core.registry import cache_dir

CACHE_FORMAT = "napari-samtune-embeddings"
CACHE_FORMAT_VERSION = 2  # 2: the features' CRC-32 (files of 1 are recomputed, unsaid)
CACHE_LIMIT_ENV = "SAMTUNE_EMBEDDING_CACHE_GB"
DEFAULT_CACHE_LIMIT_GB = 10.0
RESCAN_SECONDS = 10.0  # a cache within its limit by this object's count is rescanned this often
HALF_WRITTEN = ".*.pt.*.tmp"  # atomic_write's temporary files of the saves
EVICT_TO = 0.95  # eviction leaves this fraction of the limit (5% of 10 GB: 125 ViT-B saves)
# the name of a file the cache writes: embedding_key's 40 hex digits; any other file in its
# folder (a model kept there, a folder passed as cache_dir by mistake) is never deleted
ENTRY_NAME = re.compile(r"[0-9a-f]{40}\.pt")


def default_cache_dir() -> Path:
    """The per-user embeddings folder: ``registry.cache_dir() / "embeddings"``."""
    return cache_dir() / "embeddings"


class EmbeddingCache:
    """Embeddings on disk, one ``<key>.pt`` file per image and view (or training patch).

    Reading never crashes: a missing, unreadable or mismatching file is a miss
    (with a warning for the latter two) and the caller recomputes. Each file holds its
    features' CRC-32: damaged bytes in them (zeros after a crash, a bad disk) loaded as
    an embedding gave empty masks, and training on them a loss called divergence.
    """

    def __init__(
        self, directory: str | os.PathLike | None = None, max_bytes: int | None = None
    ) -> None:
        # "~/cache" as the shell means it (a folder named "~" was made in the current one)
        self.directory = (
            default_cache_dir()
            if directory is None
            else Path(os.path.expanduser(os.fspath(directory)))
        )
        self.max_bytes = cache_limit_bytes() if max_bytes is None else max_bytes
        self._bytes = 0  # the folder at the last scan, plus this object's saves since
        self._scanned_at = -math.inf  # time.monotonic() of the last scan: none yet

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str, expected_shape: tuple[int, ...]) -> torch.Tensor | None:
        """The cached float32 features for ``key``, or None on a miss."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("format") == CACHE_FORMAT and data.get("format_version") == 1:
                return None  # written before the checksum: recomputed and written anew
            features = data["features"]
            valid = (
                data.get("format") == CACHE_FORMAT
                and data.get("key") == key
                and isinstance(features, torch.Tensor)
                and tuple(features.shape) == tuple(expected_shape)
                and features.dtype == torch.float32
            )
            reason = "unexpected content"
            if valid and data.get("crc32") != _checksum(features):
                valid, reason = False, "its numbers are damaged: their checksum differs"
        except FileNotFoundError:  # evicted or cleared meanwhile by another process
            return None
        except Exception as err:  # any unreadable file is a miss, never a crash
            valid, reason = False, _unreadable(err, path)
        if not valid:
            warnings.warn(
                f"ignoring corrupt embedding cache file {str(path)!r} ({reason}); recomputing",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return features

    def save(self, key: str, features: torch.Tensor) -> bool:
        """Store features atomically; a failing disk only costs a warning (and False), a
        limit of 0 nothing (False)."""
        if self.max_bytes <= 0:
            return False
        features = features.detach().to("cpu", torch.float32).contiguous()
        payload = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_FORMAT_VERSION,
            "key": key,
            "features": features,
            "crc32": _checksum(features),
        }
        path = self.path(key)
        try:
            atomic_torch_save(payload, path)
        except OSError as err:
            warnings.warn(
                f"could not write the embedding cache in {str(self.directory)!r} ({err}); "
                "embeddings will be recomputed next time",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        try:  # evicted at once by another process sharing the cache: written all the same
            self._bytes += path.stat().st_size
        except OSError:
            pass
        stale = time.monotonic() - self._scanned_at > RESCAN_SECONDS
        if stale or self._bytes > self.max_bytes:
            self.evict()
        return True

    def remove(self, key: str) -> bool:
        """Delete ``key``'s entry (an entry another now holds); whether a file was deleted.
        A file that cannot be deleted stays, to be evicted in its turn."""
        path = self.path(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:  # gone already (evicted meanwhile), or not ours to delete
            return False
        self._bytes = max(0, self._bytes - size)
        return True

    def evict(self) -> list[Path]:
        """Scan the folder; over ``max_bytes``, delete the least recently used files until
        :data:`EVICT_TO` of it is left. Also delete the half-written files of saves that
        never ended (a process killed while saving). Returns what was deleted."""
        deleted = remove_abandoned_writes(self.directory, HALF_WRITTEN)
        files = self.entries()
        total = sum(size for _, size, _ in files)
        if total > self.max_bytes:
            for _, size, path in files:
                if total <= self.max_bytes * EVICT_TO:
                    break
                try:
                    path.unlink(missing_ok=True)
                except OSError:  # not ours to delete (permissions): keep going with the others
                    continue
                total -= size
                deleted.append(path)
        self._bytes, self._scanned_at = total, time.monotonic()
        return deleted

    def entries(self) -> list[tuple[int, int, Path]]:
        """(last use in ns, bytes, path) of each cached embedding's file, least recently
        used first; none if the folder does not exist. Only files named as the cache
        names them (:data:`ENTRY_NAME`) count: eviction and :meth:`clear` delete these."""
        files = []
        for path in self.directory.glob("*.pt"):
            if not ENTRY_NAME.fullmatch(path.name):
                continue
            try:
                info = path.stat()
            except OSError:  # deleted meanwhile (another viewer evicting)
                continue
            if stat.S_ISREG(info.st_mode):
                files.append((info.st_mtime_ns, info.st_size, path))
        return sorted(files)

    def clear(self) -> tuple[int, int]:
        """Delete every cached embedding, and the half-written files of saves that never
        ended (those over an hour old: a younger one may be another process's save in
        progress); embeddings are computed again when needed. Returns (files, bytes) deleted.
        A file that cannot be deleted raises ``OSError`` naming it."""
        n_files = n_bytes = 0
        for _, size, path in self.entries():
            try:
                path.unlink()
            except FileNotFoundError:  # evicted meanwhile by another viewer or run
                continue
            except OSError as err:
                message = (
                    f"could not delete {str(path)!r} from the embeddings cache "
                    f"({err.strerror or err}); {n_files} cached embeddings were deleted before "
                    "it; delete the rest as the folder's owner, or set SAMTUNE_CACHE_DIR to a "
                    "folder of your own"
                )
                builtin = type(err).__module__ == "builtins"  # PermissionError, ...
                raise (type(err)(message) if builtin else OSError(message)) from err
            n_files, n_bytes = n_files + 1, n_bytes + size
        remove_abandoned_writes(self.directory, HALF_WRITTEN)
        return n_files, n_bytes  # (a running total left too high only brings the next scan early)


def _unreadable(err: Exception, path: Path) -> str:
    """Why an entry could not be read, in a line: an empty or cut file as such (torch says
    "EOFError: ", "[Errno 22] Invalid argument" or "failed finding central directory. This
    is an internal miniz error"),
    and no pickle error's advice to load without ``weights_only``, which is not for the
    cache."""
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return "the file is empty: its writing was cut short"
    cut = isinstance(err, EOFError) or "PytorchStreamReader" in str(err)
    if cut or (isinstance(err, OSError) and err.errno == errno.EINVAL):  # a seek past its end
        return f"the file is cut short or not the cache's ({size} bytes)"
    if "weights_only" in str(err):
        return f"{type(err).__name__}: not a file the cache wrote"
    return f"{type(err).__name__}: {first_line(str(err))}"


def _checksum(features: torch.Tensor) -> int:
    """CRC-32 of contiguous float32 ``features``' bytes (2-4 ms for ViT-B's 4 MB)."""
    return zlib.crc32(features.numpy())


def cache_limit_bytes() -> int:
    """The embedding cache's size limit: ``$SAMTUNE_EMBEDDING_CACHE_GB`` (default 10; set
    but empty, as ``VAR= cmd`` leaves it, is the default too)."""
    text = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    if text:
        try:
            gigabytes = float(text)
        except ValueError:
            gigabytes = -1.0
        if math.isfinite(gigabytes) and gigabytes >= 0:
            return int(gigabytes * 2**30)
        warnings.warn(
            f"{CACHE_LIMIT_ENV}={text!r} is not a size in GB (e.g. 10, or 0 to store nothing new); "
            f"using {DEFAULT_CACHE_LIMIT_GB:g}",
            RuntimeWarning,
            stacklevel=2,
        )
    return int(DEFAULT_CACHE_LIMIT_GB * 2**30)
