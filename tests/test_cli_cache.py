"""``samtune cache``: the embeddings cache's folder, size and limit; clearing it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core.embedding_cache import EmbeddingCache, default_cache_dir

MEGABYTE = torch.zeros(1, 256, 32, 32)  # 1 MiB of float32 per embedding, plus the header


def hex_key(name: str) -> str:
    """A cache key (40 hex digits, as embedding_key makes them)."""
    return hashlib.sha1(name.encode()).hexdigest()


@pytest.fixture(autouse=True)
def _cache_subcommand(monkeypatch, tmp_path):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("cache",))
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMTUNE_EMBEDDING_CACHE_GB", raising=False)


def test_cache_shows_where_the_embeddings_are_and_how_much_they_take(capsys):
    cache = EmbeddingCache()
    for name in ("a", "b", "c"):
        cache.save(hex_key(name), MEGABYTE)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(default_cache_dir()) in out
    assert "3 embeddings, 3.0 MB of the 10.00 GB limit" in out


def test_cache_clear_deletes_the_embeddings_and_nothing_else(capsys):
    cache = EmbeddingCache()
    for name in ("a", "b"):
        cache.save(hex_key(name), MEGABYTE)
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
    # computed again when needed
    assert EmbeddingCache().load(hex_key("a"), tuple(MEGABYTE.shape)) is None


def test_cache_clear_leaves_files_it_did_not_write(capsys):
    """A ``*.pt`` not named as the cache names them (a model kept in the folder, or a folder
    passed as ``Segmenter(cache_dir=...)``) was counted and deleted as an embedding."""
    cache = EmbeddingCache()
    cache.save(hex_key("a"), MEGABYTE)
    model, folder = cache.directory / "my_finetuned_model.pt", cache.directory / "x.pt"
    model.write_bytes(b"weights")
    folder.mkdir()
    assert main(["cache"]) == 0
    assert "1 embeddings, 1.0 MB" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert "deleted 1 cached embeddings" in capsys.readouterr().out
    assert model.read_bytes() == b"weights" and folder.is_dir()


def test_a_cache_folder_under_a_file_is_refused_not_shown_empty(capsys, monkeypatch, tmp_path):
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(a_file))
    for command in (["cache"], ["cache", "--clear"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{str(a_file)!r} is a file" in err and "set SAMTUNE_CACHE_DIR to a folder" in err
    assert a_file.read_text() == "not a folder"


def test_a_cache_file_that_cannot_be_deleted_is_named(capsys, monkeypatch):
    cache = EmbeddingCache()
    for name in ("a", "b"):
        cache.save(hex_key(name), MEGABYTE)
    real_unlink, stuck = Path.unlink, cache.path(hex_key("b"))

    def unlink(path, missing_ok=False):
        if path == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert main(["cache", "--clear"]) == 2
    err = capsys.readouterr().err
    assert f"could not delete {str(stuck)!r}" in err and "Permission denied" in err
    assert "1 cached embeddings were deleted before it" in err
    assert stuck.exists() and not cache.path(hex_key("a")).exists()


def test_a_zero_limit_is_shown_as_keeping_none(capsys, monkeypatch):
    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", "0")
    assert main(["cache"]) == 0
    assert "0 embeddings, 0.0 MB (limit 0: nothing new kept)" in capsys.readouterr().out
