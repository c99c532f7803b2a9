"""Shared fixtures: tiny random SAM models and synthetic images; no GPU, no downloads."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.synthetic import make_dataset

# The tests run tiny models, for which thread start-up costs more than it gains; one thread
# also keeps timings stable when the machine is shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Every test gets its own cache, user-models and annotations folders: nothing leaks
    between tests, nor in from the settings of the user who runs them."""
    root = tmp_path_factory.mktemp("samtune_home")
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(root / "models"))
    monkeypatch.delenv("SAMTUNE_ANNOTATIONS_DIR", raising=False)  # next to models, then
    monkeypatch.delenv("SAMTUNE_EMBEDDING_CACHE_GB", raising=False)
    yield


@pytest.fixture
def tiny_sam():
    """A randomly initialised SAM of the TINY architecture (seeded, eval mode)."""
    torch.manual_seed(0)
    return build_sam(TINY)


@pytest.fixture
def sensitive_sam(tiny_sam):
    """The tiny model with a deterministically perturbed decoder: its masks are non-trivial
    and move with the prompts, so a coordinate or tile mistake changes them."""
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        tiny_sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(8)
        for parameter in tiny_sam.mask_decoder.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return tiny_sam


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_sam):
    """A plain SAM state dict of the tiny model saved to disk, as the official code saves them."""
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam.state_dict(), path)
    return path


@pytest.fixture
def nuclei_image():
    """A (256, 256) uint8 synthetic image and its uint32 instance labels."""
    from napari_samtune.core.synthetic import make_image

    image, labels = make_image((256, 256), seed=0)
    return image, labels


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def disk_full_at_last_pt(monkeypatch):
    """``disk_full_at_last_pt()``: from then on the disk is full whenever a training run
    writes a last.pt (best.pt and other files are written); returns the real ``torch.save``."""

    def fill() -> object:
        real_save = torch.save

        def full_at_last(obj, path, *args, **kwargs):
            if Path(path).name.startswith(".last.pt."):  # atomic_write's temporary file
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(torch, "save", full_at_last)
        return real_save

    return fill


@pytest.fixture
def annotated_folder(tmp_path):
    """Two small generated images and their labels as TIFF files."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i, (image, label) in enumerate(make_dataset(2, (96, 96), seed=3)):
        tifffile.imwrite(images / f"img{i}.tif", image)
        tifffile.imwrite(labels / f"img{i}_labels.tif", label)
    return images, labels
