"""Registrations of user models at the same time (two runs finishing, two scripts): both
took a free name, and the later one's files replaced the other's model without a word."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import torch

from napari_samtune.core import checkpoint_models, models
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.train_export import export_and_register
from napari_samtune.core.user_models import (
    REGISTRATION_LOCK_NAME,
    ModelNameTaken,
    register_user_model,
)


@pytest.fixture
def two_weights(tmp_path):
    """Two different tiny SAM state dicts on disk."""
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"tiny{seed}.pth"
        torch.save(build_sam(TINY).state_dict(), path)
        paths.append(path)
    return paths


def _registered_from(name: str) -> str:
    sidecar = json.loads((user_models_dir() / f"{name}.json").read_text())
    return sidecar["registered_from"]


def _taken_while_loading(monkeypatch, name: str, weights) -> None:
    """Another registration of ``name`` finishes while the next one loads its weights (its
    slow step, before it writes)."""
    real_load, done = models.load_model, []

    def load_model(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        if not done:
            done.append(True)
            register_user_model(weights, name, TINY)
        return loaded

    monkeypatch.setattr(models, "load_model", load_model)


def test_a_name_taken_while_the_weights_load_is_refused_and_the_other_model_kept(
    two_weights, monkeypatch
):
    first, second = two_weights
    _taken_while_loading(monkeypatch, "cells", first)
    with pytest.raises(ModelNameTaken, match="a user model named 'cells' already exists"):
        register_user_model(second, "cells", TINY)
    assert _registered_from("cells") == str(first.resolve())
    assert models.load_model("cells").model_id == models.load_model(first).model_id


def test_a_finished_run_whose_name_was_just_taken_registers_as_the_next_free_name(
    two_weights, monkeypatch, tmp_path
):
    first, second = two_weights
    exported_as_second = lambda checkpoint, to, base=None: (second, TINY)  # noqa: E731
    monkeypatch.setattr(checkpoint_models, "export_model", exported_as_second)
    _taken_while_loading(monkeypatch, "cells", first)
    exported, name = export_and_register(tmp_path / "last.pt", tmp_path / "run", "cells", {})
    assert (exported, name) == (second, "cells-2")
    assert _registered_from("cells") == str(first.resolve())
    assert _registered_from("cells-2") == str(second.resolve())


HOLD_THE_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_registration_waits_for_another_process_s(two_weights):
    """The lock is what keeps processes apart: held elsewhere, a registration waits."""
    pytest.importorskip("fcntl")  # Windows has no such locks: processes are not kept apart
    user_models_dir().mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(user_models_dir() / REGISTRATION_LOCK_NAME)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        registration = threading.Thread(
            target=register_user_model, args=(two_weights[0], "cells", TINY)
        )
        registration.start()
        time.sleep(1.5)  # loading the tiny weights takes well under a second
        assert registration.is_alive()
        assert not (user_models_dir() / "cells.json").exists()
    finally:
        holder.communicate("", timeout=30)
    registration.join(30)
    assert not registration.is_alive()
    assert _registered_from("cells") == str(two_weights[0].resolve())


def test_a_model_registered_anew_while_it_is_listed_is_not_called_broken(two_weights, monkeypatch):
    """A listing read a model's description, then its re-registration (a continued run)
    wrote the new one and deleted the old weights: the model was listed as broken, with
    "unregister it with: samtune models --remove"."""
    from napari_samtune.core import user_models

    first, second = two_weights
    register_user_model(first, "hot", TINY)
    sidecar = user_models_dir() / "hot.json"
    old_text = sidecar.read_text()
    real_read_text, reads = type(sidecar).read_text, []

    def read_text(path, *args, **kwargs):
        if path == sidecar and not reads:  # read just before the registration below
            reads.append(path)
            register_user_model(second, "hot", TINY, overwrite=True)
            return old_text
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(type(sidecar), "read_text", read_text)
    specs, broken = user_models.scan_user_models()
    assert reads and broken == []
    assert [spec.name for spec in specs] == ["hot"]
    assert specs[0].local_path().is_file()


def test_a_removal_waits_for_a_registration_that_writes(two_weights):
    """Removal did not take the registration lock: beside a registration of the same name
    it said "no user model named 'hot'; the user models are ['hot']"."""
    from napari_samtune.core import user_models
    from napari_samtune.core.user_model_removal import remove_user_model

    register_user_model(two_weights[0], "hot", TINY)
    removed = []
    with user_models._registration_locked():  # another registration is writing
        remover = threading.Thread(target=lambda: removed.append(remove_user_model("hot")))
        remover.start()
        time.sleep(0.3)
        assert remover.is_alive() and not removed  # waits for it
    remover.join(10)
    assert removed and not (user_models_dir() / "hot.json").exists()


def test_a_description_naming_another_description_removes_and_moves_nothing_else(
    two_weights,
):
    """A description naming "run1.json" as its weights: --remove deleted model run1's
    description with it, and --rename moved that description to <new>.pt."""
    from napari_samtune.core.user_model_removal import remove_user_model
    from napari_samtune.core.user_models import scan_user_models

    register_user_model(two_weights[0], "run1", TINY)
    folder = user_models_dir()
    evil = json.loads((folder / "run1.json").read_text())
    evil.update(name="evil", filename="run1.json")
    (folder / "evil.json").write_text(json.dumps(evil))
    specs, broken = scan_user_models()
    assert [spec.name for spec in specs] == ["run1"]
    assert broken and broken[0][0] == "evil" and "no weights file" in broken[0][1]
    from napari_samtune.core.user_model_rename import rename_fix, rename_user_model

    evil["name"] = "other"  # as if renamed by hand: the listing offered to keep "its weights"
    (folder / "evil.json").write_text(json.dumps(evil))
    assert rename_fix("evil") is None
    with pytest.raises(ValueError, match=r"run1.json \(it is no weights file"):
        rename_user_model("evil", "evil2")
    assert remove_user_model("evil") == [folder / "evil.json"]
    assert (folder / "run1.json").is_file() and (folder / "run1.pt").is_file()
