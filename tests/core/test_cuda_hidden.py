"""CUDA not available because CUDA_VISIBLE_DEVICES hides every GPU: said so, where the
advice was to install a CUDA build of torch."""

from __future__ import annotations

import pytest

from napari_samtune.core import devices


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_a_device_hidden_by_cuda_visible_devices_is_named(monkeypatch, hidden):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    with pytest.raises(ValueError, match=f"CUDA_VISIBLE_DEVICES is '{hidden}': unset it"):
        devices.resolve_device("cuda")


def test_without_it_the_usual_reasons_are_given(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ValueError) as refused:
        devices.resolve_device("cuda")
    assert "(no NVIDIA GPU, no driver, or a CPU-only torch build)" in str(refused.value)
    assert "CUDA_VISIBLE_DEVICES" not in str(refused.value)
