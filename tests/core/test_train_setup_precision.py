"""Which precision a run continues with when none is asked for (``continued_precision``)."""

from __future__ import annotations

import pytest
import torch

from napari_samtune.core import train_setup


@pytest.mark.parametrize(
    ("recorded", "device", "fast_bf16", "expected"),
    [
        ("fp16", "cpu", True, "auto"),  # an older GPU's "auto", continued on a CPU
        ("fp16", "cuda", True, "fp16"),
        ("bf16", "cpu", False, "auto"),  # would be emulated here
        ("bf16", "cpu", True, "bf16"),
        ("bf16", "cuda", False, "bf16"),
        ("no", "cpu", True, "no"),
        ("auto", "cpu", False, "auto"),
    ],
)
def test_a_recorded_precision_this_device_cannot_run_well_becomes_auto(
    monkeypatch, recorded, device, fast_bf16, expected
):
    monkeypatch.setattr(train_setup, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(train_setup, "resolve_device", lambda name: torch.device(name))
    assert train_setup.continued_precision(recorded, device) == expected


def test_a_device_this_machine_lacks_keeps_the_recorded_precision(monkeypatch):
    def lacking(name):
        raise ValueError(f"{name} is not here")

    monkeypatch.setattr(train_setup, "resolve_device", lacking)
    assert train_setup.continued_precision("fp16", "cuda:3") == "fp16"
