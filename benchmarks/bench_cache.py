"""The embeddings cache: saving and reading one ViT-B embedding (4 MB) in a full folder.

A full cache (10 GB by default) holds about 2,500 ViT-B embeddings. Each save used to scan
the folder (every file's size and time) to keep within the limit; the cache now keeps a
running total and scans when that total goes over the limit or every ``RESCAN_SECONDS``.
In one process, alternating, the table shows the median save of:

* ``scan every save``: the cache with ``RESCAN_SECONDS`` below zero (every save scans: the
  old behaviour),
* ``samtune``: the cache as it is,

into an empty folder and into one holding ``--files`` other cache files, and the median
read of a saved embedding. Placeholder files stand in for the other embeddings: the scan's
cost is per file, whatever its size, and the limit is not reached.

Run: ``.venv/bin/python benchmarks/bench_cache.py [--files 2500] [--saves 40]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from napari_samtune.core import embedding_cache
from napari_samtune.core.embedding_cache import EmbeddingCache

FEATURES_SHAPE = (1, 256, 64, 64)  # one ViT-B or vit_t embedding: 4 MB of float32


def make_folder(root: Path, name: str, n_files: int) -> Path:
    folder = root / name
    folder.mkdir()
    for i in range(n_files):
        (folder / f"{i:040x}.pt").write_bytes(b"\0" * 100)
    return folder


def timed_saves(caches: dict[str, EmbeddingCache], saves: int) -> dict[str, list[float]]:
    """Seconds of each save per cache, alternating the order; ``scan`` caches scan always."""
    features = torch.randn(FEATURES_SHAPE)
    times = {name: [] for name in caches}
    default = embedding_cache.RESCAN_SECONDS
    for index in range(saves):
        order = list(caches.items())
        for name, cache in order if index % 2 else order[::-1]:
            embedding_cache.RESCAN_SECONDS = -1.0 if name.startswith("scan") else default
            start = time.perf_counter()
            cache.save(f"{index:040x}-new", features)
            times[name].append(time.perf_counter() - start)
    embedding_cache.RESCAN_SECONDS = default
    return times


def median_load_ms(cache: EmbeddingCache, saves: int) -> float:
    times = []
    for index in range(saves):
        start = time.perf_counter()
        assert cache.load(f"{index:040x}-new", FEATURES_SHAPE) is not None
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2500, help="files in the full folder")
    parser.add_argument("--saves", type=int, default=40, help="saves per cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as root:  # the disk, not a tmpfs
        caches = {
            f"{kind} {n_files}": EmbeddingCache(
                make_folder(Path(root), f"{kind}-{n_files}", n_files), max_bytes=1 << 40
            )
            for n_files in (0, args.files)
            for kind in ("scan", "samtune")
        }
        times = timed_saves(caches, args.saves)
        loads = {name: median_load_ms(cache, args.saves) for name, cache in caches.items()}
    print(f"one {FEATURES_SHAPE} float32 embedding, medians of {args.saves} alternating saves")
    print("| files in the folder | save ms, scan every save | save ms, samtune | ratio | read ms |")
    print("|---|---|---|---|---|")
    for n_files in (0, args.files):
        scan = 1000 * statistics.median(times[f"scan {n_files}"])
        ours = 1000 * statistics.median(times[f"samtune {n_files}"])
        read = loads[f"samtune {n_files}"]
        print(f"| {n_files} | {scan:.1f} | {ours:.1f} | {scan / ours:.2f}x | {read:.1f} |")


if __name__ == "__main__":
    main()
