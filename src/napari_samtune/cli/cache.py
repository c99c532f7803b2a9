"""``samtune cache``: where the embeddings cache is, how full, and clearing it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="show the embeddings cache (folder, size, limit); --clear empties it",
        description=(
            "Show where the image embeddings of annotation and frozen-encoder training are "
            "cached, how much they take and the size limit. --clear deletes them: they are "
            "computed again when an image is opened or a run trains on it."
        ),
    )
    parser.add_argument(
        "--clear", action="store_true", help="delete every cached embedding (nothing else)"
    )
    parser.set_defaults(func=run)


def size_text(n_bytes: int) -> str:
    """``n_bytes`` in MB below 1 GB, else in GB."""
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.1f} MB"
    return f"{n_bytes / 2**30:.2f} GB"


def _check_folder(directory: Path) -> None:
    """Refuse an embeddings folder that is, or lies under, a file: nothing can be cached
    there, which a count of 0 embeddings would hide."""
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(
            f"the embeddings cache folder {str(directory)!r} cannot be made: "
            f"{str(existing)!r} is a file, so no embedding is kept; set SAMTUNE_CACHE_DIR "
            "to a folder, or move that file away"
        )


def run(args: argparse.Namespace) -> int:
    from napari_samtune.core.embedding_cache import CACHE_LIMIT_ENV, EmbeddingCache

    cache = EmbeddingCache()
    _check_folder(cache.directory)
    if args.clear:
        n_files, n_bytes = cache.clear()
        print(
            f"deleted {n_files} cached embeddings ({size_text(n_bytes)}) from "
            f"{cache.directory}; they are computed again when needed"
        )
        return 0
    sizes = [size for _, size, _ in cache.entries()]
    print(f"embeddings cache: {cache.directory}  (set SAMTUNE_CACHE_DIR to move it)")
    limit = (
        f"of the {size_text(cache.max_bytes)} limit"
        if cache.max_bytes
        else "(limit 0: nothing new kept)"
    )
    print(
        f"{len(sizes)} embeddings, {size_text(sum(sizes))} {limit}; set {CACHE_LIMIT_ENV} to "
        "change the limit, 'samtune cache --clear' empties it"
    )
    return 0
