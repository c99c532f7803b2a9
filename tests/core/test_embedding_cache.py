"""The embeddings cache on disk: atomic files, least-recently-used eviction, few scans."""

from __future__ import annotations

import hashlib
import os
import warnings

import pytest
import torch

from napari_samtune.core import embedding_cache
from napari_samtune.core.embedding_cache import EmbeddingCache

FEATURES = torch.zeros(1, 8, 16, 16)  # 8 KiB of floats per file, plus the header
SHAPE = tuple(FEATURES.shape)
NAMES: dict[str, str] = {}  # hex_key's keys -> the names the tests gave them


def hex_key(name: str) -> str:
    """A cache key (40 hex digits, as embedding_key makes them) for a name a test reads."""
    key = hashlib.sha1(name.encode()).hexdigest()
    NAMES[key] = name
    return key


@pytest.fixture
def file_size(tmp_path) -> int:
    """Bytes of one saved ``FEATURES`` file."""
    probe = EmbeddingCache(tmp_path / "probe", max_bytes=10**9)
    probe.save(hex_key("x"), FEATURES)
    return probe.path(hex_key("x")).stat().st_size


def count_scans(cache: EmbeddingCache, monkeypatch) -> list[int]:
    """Count the folder scans (``evict`` calls) of ``cache``; returns the growing list."""
    scans, real = [], cache.evict

    def counting():
        scans.append(1)
        return real()

    monkeypatch.setattr(cache, "evict", counting)
    return scans


def saved_keys(cache: EmbeddingCache) -> list[str]:
    """The names (see hex_key) of the embeddings in the cache's folder, sorted."""
    return sorted(NAMES[p.stem] for p in cache.directory.glob("*.pt"))


def folder_bytes(cache: EmbeddingCache) -> int:
    return sum(p.stat().st_size for p in cache.directory.glob("*.pt"))


def test_saves_within_the_limit_scan_the_folder_once(tmp_path, monkeypatch):
    """Every save used to read every file's size and time: 22 ms per save in a full cache
    (2,500 files), more than the write itself."""
    monkeypatch.setattr(embedding_cache, "RESCAN_SECONDS", 1e9)
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    scans = count_scans(cache, monkeypatch)
    for i in range(20):
        assert cache.save(hex_key(f"k{i:02d}"), FEATURES)
    assert len(scans) == 1  # the first save's: the running total starts from the folder
    assert len(saved_keys(cache)) == 20


def test_a_full_cache_stays_within_its_limit_and_evicts_in_batches(
    tmp_path, monkeypatch, file_size
):
    monkeypatch.setattr(embedding_cache, "RESCAN_SECONDS", 1e9)
    cache = EmbeddingCache(tmp_path, max_bytes=40 * file_size + file_size // 2)
    kept = int(cache.max_bytes * embedding_cache.EVICT_TO) // file_size  # 38 files
    scans = count_scans(cache, monkeypatch)
    keys = [f"k{i:03d}" for i in range(120)]
    for i, key in enumerate(keys):
        cache.save(hex_key(key), FEATURES)
        os.utime(cache.path(hex_key(key)), ns=(10**18 + i, 10**18 + i))  # each saved after the last
        assert folder_bytes(cache) <= cache.max_bytes
    # Full, the cache scans every third save (41 files: evict to 38), not at every save.
    assert 25 <= len(scans) <= 30
    remaining = saved_keys(cache)
    assert kept <= len(remaining) <= 40 and remaining == keys[-len(remaining) :]


def test_another_process_saves_are_seen_at_the_next_rescan(tmp_path, monkeypatch, file_size):
    mine = EmbeddingCache(tmp_path, max_bytes=int(4.5 * file_size))
    mine.save(hex_key("a"), FEATURES)
    other = EmbeddingCache(tmp_path, max_bytes=10**9)  # another viewer or training run
    for key in "bcdef":
        other.save(hex_key(key), FEATURES)
    monkeypatch.setattr(embedding_cache, "RESCAN_SECONDS", 1e9)
    mine.save(hex_key("g"), FEATURES)  # two files by its own count: no scan
    assert len(saved_keys(mine)) == 7
    for i, key in enumerate("abcdefg"):  # used in this order
        os.utime(mine.path(hex_key(key)), ns=(10**18 + i, 10**18 + i))
    monkeypatch.setattr(embedding_cache, "RESCAN_SECONDS", 0.0)
    mine.save(hex_key("h"), FEATURES)  # its count is stale: it scans and evicts the oldest
    assert saved_keys(mine) == ["e", "f", "g", "h"]


def test_saves_killed_half_way_do_not_pile_up_in_the_cache(tmp_path):
    """A process killed while saving left ``.<key>.pt.*.tmp``, which eviction, counting only
    ``*.pt``, never removed: the cache grew past its limit with each such kill."""
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    abandoned, in_progress = tmp_path / ".old.pt.x1.tmp", tmp_path / ".new.pt.x2.tmp"
    for path in (abandoned, in_progress):
        path.write_bytes(b"\0" * 1000)
    hours_ago = abandoned.stat().st_mtime - 2 * 3600
    os.utime(abandoned, (hours_ago, hours_ago))
    cache.save(hex_key("a"), torch.zeros(1, 8, 16, 16))
    assert not abandoned.exists()
    assert in_progress.exists()  # maybe another viewer's save, still being written
    assert cache.path(hex_key("a")).is_file()


def test_the_cache_keeps_the_most_recently_used_files_within_its_limit(tmp_path, monkeypatch):
    features = torch.zeros(1, 8, 16, 16)  # 8 KiB of floats per file, plus the header
    probe = EmbeddingCache(tmp_path / "probe", max_bytes=10**9)
    probe.save(hex_key("x"), features)
    size = probe.path(hex_key("x")).stat().st_size
    cache = EmbeddingCache(tmp_path / "c", max_bytes=int(2.5 * size))
    for i, key in enumerate(["a", "b"]):
        cache.save(hex_key(key), features)
        os.utime(cache.path(hex_key(key)), ns=(10**18 + i, 10**18 + i))  # b used after a
    assert cache.load(hex_key("a"), (1, 8, 16, 16)) is not None  # a is now the most recent
    cache.save(hex_key("c"), features)  # over the limit: b, the least recently used, goes
    assert saved_keys(cache) == ["a", "c"]
    assert cache.load(hex_key("b"), (1, 8, 16, 16)) is None

    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", "0.5")
    assert EmbeddingCache(tmp_path).max_bytes == 2**29
    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", "0")
    nothing = EmbeddingCache(tmp_path / "none")
    assert not nothing.save(hex_key("a"), features)
    assert nothing.load(hex_key("a"), (1, 8, 16, 16)) is None
    kept = saved_keys(cache)
    assert not EmbeddingCache(tmp_path).save(hex_key("d"), features)  # the others' stay
    assert saved_keys(cache) == kept == ["a", "c"]
    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", "lots")
    with pytest.warns(RuntimeWarning, match="'lots' is not a size in GB.*using 10"):
        assert EmbeddingCache(tmp_path).max_bytes == 10 * 2**30
    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", " ")  # set but empty: the default, unsaid
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert EmbeddingCache(tmp_path).max_bytes == 10 * 2**30


def test_eviction_deletes_only_the_cache_s_own_files(tmp_path, file_size):
    """``Segmenter(cache_dir=folder)`` with a model file in that folder: going over the limit
    deleted the model, since every ``*.pt`` counted as an embedding."""
    model = tmp_path / "my_finetuned_model.pt"
    model.write_bytes(b"\0" * 10 * file_size)  # alone over the limit
    cache = EmbeddingCache(tmp_path, max_bytes=int(3.5 * file_size))
    for name in "abcde":
        cache.save(hex_key(name), FEATURES)
    assert model.stat().st_size == 10 * file_size
    embeddings = [p for p in tmp_path.glob("*.pt") if p != model]
    assert len(embeddings) == 3 and cache.path(hex_key("e")) in embeddings


def test_an_embedding_deleted_while_it_is_read_is_a_quiet_miss(tmp_path, monkeypatch):
    """Cleared by another process between the check and the read, it was reported as a
    corrupt file."""
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    cache.save(hex_key("a"), FEATURES)
    real_load = torch.load

    def load_after_a_clear(path, *args, **kwargs):
        os.unlink(path)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load_after_a_clear)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(hex_key("a"), SHAPE) is None


def test_a_file_evicted_by_another_process_right_after_its_save_is_no_failed_write(
    tmp_path, monkeypatch
):
    """Two processes on one small cache: the other evicted the file just written, and this
    one warned "could not write the embedding cache", though the write had worked."""
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    real = embedding_cache.atomic_torch_save

    def saved_then_evicted(payload, path):
        real(payload, path)
        os.remove(path)  # the other process's eviction

    monkeypatch.setattr(embedding_cache, "atomic_torch_save", saved_then_evicted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.save(hex_key("gone"), FEATURES)


def test_an_embedding_whose_numbers_are_damaged_is_a_miss_with_a_warning(tmp_path):
    """Bytes of the features zeroed on disk (a crash, a bad disk) were read back as an
    embedding: empty masks, and training on them blamed its learning rate."""
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    features = torch.arange(float(FEATURES.numel())).reshape(SHAPE) / 7
    cache.save(hex_key("a"), features)
    path = cache.path(hex_key("a"))
    assert torch.equal(cache.load(hex_key("a"), SHAPE), features)
    data = bytearray(path.read_bytes())
    start = data.find(features.numpy().tobytes()[:64])
    assert start > 0
    data[start + 400 : start + 800] = bytes(400)
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="its numbers are damaged: their checksum differs"):
        assert cache.load(hex_key("a"), SHAPE) is None


def test_an_unreadable_entry_is_said_in_one_line_without_torch_s_advice(tmp_path):
    """The warning quoted torch's whole error: "Re-running torch.load with weights_only set
    to False will likely succeed, but it can result in arbitrary code execution ..."."""
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    cache.path(hex_key("a")).write_bytes(b"garbage\n")
    with pytest.warns(RuntimeWarning) as said:
        assert cache.load(hex_key("a"), SHAPE) is None
    text = str(said[0].message)
    assert text.startswith("ignoring corrupt embedding cache file") and "\n" not in text
    assert "weights_only" not in text


def test_an_entry_written_before_the_checksum_is_recomputed_without_a_warning(tmp_path):
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    old = {"format": embedding_cache.CACHE_FORMAT, "format_version": 1, "key": hex_key("a")}
    torch.save({**old, "features": FEATURES}, cache.path(hex_key("a")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(hex_key("a"), SHAPE) is None
    assert cache.save(hex_key("a"), FEATURES)  # written anew, with its checksum
    assert torch.equal(cache.load(hex_key("a"), SHAPE), FEATURES)


@pytest.mark.parametrize("kept", [0, 10, 0.5])
def test_an_empty_or_cut_entry_is_said_to_be_so(tmp_path, kept):
    """An entry cut short (a full disk, a killed process on a file system without atomic
    renames) was said to be ignored because of "EOFError: " or of "PytorchStreamReader
    failed reading zip archive: failed finding central directory. This is an internal miniz
    error", which tells a user nothing."""
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    cache.save(hex_key("a"), FEATURES)
    path = cache.path(hex_key("a"))
    whole = path.read_bytes()
    path.write_bytes(whole[: int(kept * len(whole)) if kept < 1 else kept])
    with pytest.warns(RuntimeWarning) as said:
        assert cache.load(hex_key("a"), SHAPE) is None
    text = str(said[0].message)
    expected = "the file is empty" if kept == 0 else "the file is cut short or not the cache's"
    assert expected in text and "Error" not in text and "miniz" not in text
    assert cache.save(hex_key("a"), FEATURES)  # written whole again
    assert torch.equal(cache.load(hex_key("a"), SHAPE), FEATURES)
