"""Frozen-encoder embeddings kept on disk between training runs."""

from __future__ import annotations

import warnings

import pytest
import torch

from napari_samtune.core import trainer
from napari_samtune.core.embedding_cache import EmbeddingCache, default_cache_dir
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import EpochDone, StepDone, iter_train
from napari_samtune.core.train_embeddings import StoredEmbeddings

TRAIN = make_dataset(2, shape=(96, 112), seed=0)
VAL = make_dataset(1, shape=(96, 96), seed=50)


@pytest.fixture
def encoded(monkeypatch) -> list[int]:
    """Patches the trainer's encoder passes encode (one number per pass)."""
    passes, real = [], trainer.encode

    def counting(sam, pixels):
        passes.append(len(pixels))
        return real(sam, pixels)

    monkeypatch.setattr(trainer, "encode", counting)
    return passes


def _run(config: TrainConfig, out) -> tuple[list[float], dict]:
    losses, metrics = [], {}
    for event in iter_train(config, TRAIN, VAL, out_dir=out):
        if isinstance(event, StepDone):
            losses.append(event.loss)
        elif isinstance(event, EpochDone):
            metrics = event.val_metrics
    return losses, metrics


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_a_second_run_reads_the_embeddings_and_trains_alike(
    tmp_path, encoded, precision, frozen_tiny_config
):
    first = _run(frozen_tiny_config(mixed_precision=precision), tmp_path / "first")
    assert sum(encoded) >= 2  # the training patches and the validation tile
    assert any(default_cache_dir().glob("*.pt"))
    encoded.clear()
    second = _run(frozen_tiny_config(mixed_precision=precision), tmp_path / "second")
    assert encoded == []
    assert second == first  # the same losses step by step, the same validation metrics


def _weights_file(path, seed: int):
    from napari_samtune.core.architectures import build_sam
    from napari_samtune.core.models import export_sam_state_dict

    torch.manual_seed(seed)
    return str(export_sam_state_dict(build_sam("tiny"), path))


@pytest.mark.parametrize(
    "change", ["other weights", "other precision", "stock paths"], ids=lambda c: c
)
def test_what_could_change_an_embedding_makes_it_another(
    tmp_path, encoded, monkeypatch, change, frozen_tiny_config
):
    base = frozen_tiny_config(model=_weights_file(tmp_path / "a.pth", 0))
    changed = {
        "other weights": {"model": _weights_file(tmp_path / "b.pth", 1)},
        "other precision": {"mixed_precision": "bf16"},
        "stock paths": {"fast_attention": False},
    }[change]
    _run(base, tmp_path / "first")
    encoded.clear()
    _run(frozen_tiny_config(**{**base.__dict__, **changed}), tmp_path / "second")
    with_store = sum(encoded)
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "empty cache"))
    encoded.clear()
    _run(frozen_tiny_config(**{**base.__dict__, **changed}), tmp_path / "third")
    assert with_store == sum(encoded) > 0  # nothing of the first run was read


def test_an_unfrozen_encoder_stores_nothing(tmp_path, frozen_tiny_config):
    _run(frozen_tiny_config(freeze=()), tmp_path / "run")
    assert not default_cache_dir().exists() or not any(default_cache_dir().glob("*.pt"))


def test_a_cache_limit_of_zero_keeps_nothing(tmp_path, encoded, monkeypatch, frozen_tiny_config):
    monkeypatch.setenv("SAMTUNE_EMBEDDING_CACHE_GB", "0")
    _run(frozen_tiny_config(), tmp_path / "first")
    passes = sum(encoded)
    encoded.clear()
    _run(frozen_tiny_config(), tmp_path / "second")
    assert sum(encoded) == passes
    assert not default_cache_dir().exists() or not any(default_cache_dir().glob("*.pt"))


def test_a_damaged_stored_embedding_is_computed_again(tmp_path, encoded, frozen_tiny_config):
    first = _run(frozen_tiny_config(), tmp_path / "first")
    passes = sum(encoded)
    for path in default_cache_dir().glob("*.pt"):
        path.write_bytes(b"not an embedding")
    encoded.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _run(frozen_tiny_config(), tmp_path / "second")
    assert sum(encoded) == passes
    assert any("corrupt embedding cache file" in str(w.message) for w in caught)
    assert second == first


def test_stored_embeddings_come_back_in_the_encoders_dtype_and_order(tmp_path):
    store = StoredEmbeddings(
        "weights-x", (1, 2, 3, 3), torch.bfloat16, "bf16", EmbeddingCache(tmp_path)
    )
    pixels = torch.rand(3, 3, 8, 8)
    calls = []

    def compute(batch):
        calls.append(len(batch))
        return (batch[:, :2, :3, :3] * 10).to(torch.bfloat16)

    fresh = store.embeddings(pixels[:2], compute)
    mixed = store.embeddings(pixels[[2, 1, 0]], compute)  # one new patch, two stored
    assert calls == [2, 1]
    assert mixed.dtype == torch.bfloat16
    assert torch.equal(mixed[1:], fresh.flip(0))
    assert torch.equal(mixed[0], compute(pixels[2:3])[0])
    other = StoredEmbeddings(
        "weights-y", (1, 2, 3, 3), torch.bfloat16, "bf16", EmbeddingCache(tmp_path)
    )
    assert other.key(pixels[0]) != store.key(pixels[0])


def test_a_disk_that_refuses_the_embeddings_warns_once_and_training_goes_on(
    tmp_path, encoded, monkeypatch, frozen_tiny_config
):
    from napari_samtune.core import embedding_cache

    def full_disk(payload, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedding_cache, "atomic_torch_save", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, _ = _run(frozen_tiny_config(), tmp_path / "run")
    assert sum(encoded) >= 2 and len(losses) == 4
    refused = [w for w in caught if "could not write the embedding cache" in str(w.message)]
    assert len(refused) == 1


def test_a_resumed_run_reads_the_embeddings_its_first_session_stored(
    tmp_path, encoded, frozen_tiny_config
):
    run = tmp_path / "run"
    _run(frozen_tiny_config(epochs=1), run)
    assert sum(encoded) >= 2
    encoded.clear()
    resumed = iter_train(frozen_tiny_config(epochs=2), TRAIN, VAL, out_dir=run, resume_from=run)
    epochs = [e.epoch for e in resumed if isinstance(e, EpochDone)]
    assert epochs == [1] and encoded == []
