"""``samtune cache``: the embeddings cache's folder, size and limit; clearing it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core.embedding_cache import EmbeddingCache, default_cache_dir

MEGABYTE = torch.zeros(1, 256, 32, 32)  # 1 MiB of float32 per embedding, plus the header


@pytest.fixture(autouse=True)
def _cache_subcommand(monkeypatch, tmp_path):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("cache",))
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMTUNE_EMBEDDING_CACHE_GB", raising=False)


def test_cache_shows_where_the_embeddings_are_and_how_much_they_take(capsys):
    cache = EmbeddingCache()
    for key in ("a", "b", "c"):
        cache.save(key, MEGABYTE)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(default_cache_dir()) in out
    assert "3 embeddings, 3.0 MB of the 10.00 GB limit" in out


def test_cache_clear_deletes_the_embeddings_and_nothing_else(capsys):
    cache = EmbeddingCache()
    for key in ("a", "b"):
        cache.save(key, MEGABYTE)
    folder = cache.directory
    notes = folder / "notes.txt"  # not the cache's: stays
    notes.write_text("mine")
    in_progress, abandoned = folder / ".d.pt.x1.tmp", folder / ".e.pt.x2.tmp"
    for path in (in_progress, abandoned):
        path.write_bytes(b"\0" * 100)
    hours_ago = abandoned.stat().st_mtime - 2 * 3600
    os.utime(abandoned, (hours_ago, hours_ago))

    assert main(["cache", "--clear"]) == 0
    assert "deleted 2 cached embeddings (2.0 MB)" in capsys.readouterr().out
    assert list(folder.glob("*.pt")) == []
    assert notes.read_text() == "mine" and in_progress.exists() and not abandoned.exists()
    assert main(["cache"]) == 0
    assert "0 embeddings, 0.0 MB" in capsys.readouterr().out
    assert EmbeddingCache().load("a", tuple(MEGABYTE.shape)) is None  # recomputed when needed


def test_a_cache_file_that_cannot_be_deleted_is_named(capsys, monkeypatch):
    cache = EmbeddingCache()
    for key in ("a", "b"):
        cache.save(key, MEGABYTE)
    real_unlink, stuck = Path.unlink, cache.path("b")

    def unlink(path, missing_ok=False):
        if path == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert main(["cache", "--clear"]) == 2
    err = capsys.readouterr().err
    assert f"could not delete {str(stuck)!r}" in err and "Permission denied" in err
    assert "1 cached embeddings were deleted before it" in err
    assert stuck.exists() and not cache.path("a").exists()


def test_a_zero_limit_is_shown_as_keeping_none(capsys, monkeypatch):
    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", "0")
    assert main(["cache"]) == 0
    assert "0 embeddings, 0.0 MB (limit 0: none kept)" in capsys.readouterr().out
