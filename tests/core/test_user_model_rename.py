"""Renaming user models (``rename_user_model``), mending files renamed by hand, and removal
that keeps weights files the removed description does not name."""

import json
import os
import threading
import warnings

import pytest
import torch

from napari_samtune.core import user_model_rename, user_model_weights, user_models
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.download import is_verified, local_weights_problem, stamp_path
from napari_samtune.core.model_lookup import get_model_spec
from napari_samtune.core.models import load_model
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.user_model_removal import remove_user_model, weights_kept_on_removal
from napari_samtune.core.user_model_rename import rename_user_model
from napari_samtune.core.user_models import (
    broken_user_model_fix,
    list_user_models,
    register_user_model,
)


def _files() -> list[str]:
    return sorted(p.name for p in user_models_dir().iterdir() if not p.name.startswith("."))


def _hand_rename(old: str, new: str) -> None:
    for suffix in (".json", ".pt"):
        (user_models_dir() / f"{old}{suffix}").rename(user_models_dir() / f"{new}{suffix}")


def _every_weights_file_is_described() -> bool:
    named = {user_model_weights.weights_named_by(p) for p in user_models_dir().glob("*.json")}
    weights = [p for p in user_models_dir().glob("*.pt*") if not p.name.startswith(".")]
    return len(weights) == 1 and weights[0] in named


def test_renaming_moves_both_files_and_keeps_the_weights_id_hash_and_stamp(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    before = load_model("cells_v1").model_id
    weights = rename_user_model("cells_v1", "cells_v2")
    assert weights == user_models_dir() / "cells_v2.pt"
    assert _files() == ["cells_v2.json", "cells_v2.pt"]
    assert not stamp_path(user_models_dir() / "cells_v1.pt").exists()
    spec = get_model_spec("cells_v2")
    assert is_verified(weights, spec.file_hash)  # the stamp moved with it: no hashing again
    assert local_weights_problem(spec) is None
    assert load_model("cells_v2").model_id == before  # embedding caches still match
    assert [s.name for s in list_user_models()] == ["cells_v2"]
    data = json.loads((user_models_dir() / "cells_v2.json").read_text())
    assert data["name"] == "cells_v2" and data["former_names"] == ["cells_v1"]


@pytest.mark.parametrize(
    ("new_name", "refusal"),
    [
        ("vit_b", "new_name='vit_b' is a built-in model or architecture name"),
        ("tiny", "new_name='tiny' is a built-in model or architecture name"),
        ("con", "new_name='con' is not allowed: .*Windows keeps for a device"),
        ("../x", r"new_name='\.\./x' is not allowed"),
        ("taken", "new_name='taken' is taken by another user model"),
        ("cells.pth", "new_name='cells.pth' ends like a weights file"),
        ("cells_v1", "new_name='cells_v1' is already that user model's name"),
    ],
)
def test_renaming_refuses_names_it_cannot_take_and_changes_nothing(
    tiny_checkpoint, new_name, refusal
):
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    register_user_model(tiny_checkpoint, "taken", TINY)
    before = {p.name: p.read_bytes() for p in user_models_dir().iterdir()}
    with pytest.raises(ValueError, match=refusal):
        rename_user_model("cells_v1", new_name)
    assert {p.name: p.read_bytes() for p in user_models_dir().iterdir()} == before


def test_renaming_what_is_no_user_model_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="old_name='vit_b' is a built-in model"):
        rename_user_model("vit_b", "mine")
    with pytest.raises(ValueError, match="old_name='nope': there is no user model"):
        rename_user_model("nope", "mine")


def test_renaming_never_writes_over_a_file_of_the_new_name(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "a", TINY)
    register_user_model(tiny_checkpoint, "c", TINY)
    stray = user_models_dir() / "b.pt"
    stray.write_bytes(b"someone's file")
    with pytest.warns(UserWarning, match=r"b.pt is named by no user model") as said:
        assert rename_user_model("a", "b") == user_models_dir() / "b.pth"
    assert "'b' is stored in b.pth. Delete b.pt by hand" in str(said[0].message)  # as at
    assert stray.read_bytes() == b"someone's file"  # registration; a rename said nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain rename warns of nothing
        rename_user_model("c", "e")
        rename_user_model("e", "c")
    load_model("b")
    (user_models_dir() / "d.pt").write_bytes(b"1")
    (user_models_dir() / "d.pth").write_bytes(b"2")
    with pytest.raises(ValueError, match="d.pt and .*d.pth are files already"):
        rename_user_model("c", "d")
    load_model("c")


def test_a_crash_at_any_step_leaves_the_weights_described(tiny_checkpoint, monkeypatch):
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    real_rename = os.rename

    def killed_before(*args):
        raise KeyboardInterrupt

    def killed_after(*args):
        real_rename(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(user_model_rename.os, "rename", killed_before)
    with pytest.raises(KeyboardInterrupt):
        rename_user_model("cells_v1", "cells_v2")
    assert _every_weights_file_is_described()
    load_model("cells_v1")
    remove_user_model("cells_v2")  # the half-made description, as 'samtune models' says
    monkeypatch.setattr(user_model_rename.os, "rename", killed_after)
    with pytest.raises(KeyboardInterrupt):
        rename_user_model("cells_v1", "cells_v2")
    assert _every_weights_file_is_described()
    load_model("cells_v2")


def test_renaming_waits_for_a_registration_in_progress(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    renaming = threading.Thread(target=rename_user_model, args=("cells_v1", "cells_v2"))
    with user_models._registration_locked():
        renaming.start()
        renaming.join(0.5)
        assert renaming.is_alive() and _files() == ["cells_v1.json", "cells_v1.pt"]
    renaming.join(30)
    assert _files() == ["cells_v2.json", "cells_v2.pt"]


def test_files_renamed_by_hand_are_mended_not_removed(tiny_checkpoint):
    """cells_v1.json/.pt renamed to cells_best.*: the fix told was '--remove cells_best',
    which deleted cells_best.pt, the only copy of the weights."""
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    before = load_model("cells_v1").model_id
    _hand_rename("cells_v1", "cells_best")
    fix = broken_user_model_fix("cells_best")
    assert "samtune models --rename cells_best cells_best" in fix and "--remove" not in fix
    with pytest.warns(UserWarning, match="--rename cells_best cells_best"):
        assert list_user_models() == []
    assert rename_user_model("cells_best", "cells_best") == user_models_dir() / "cells_best.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [spec.name for spec in list_user_models()] == ["cells_best"]
    assert load_model("cells_best").model_id == before
    assert local_weights_problem(get_model_spec("cells_best")) is None


def test_weights_renamed_by_hand_are_taken_only_with_the_recorded_hash(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    _hand_rename("cells_v1", "cells_best")
    other = user_models_dir() / "cells_best.pt"
    torch.manual_seed(1)
    torch.save(build_sam(TINY).state_dict(), other)  # other weights, of the same size
    with pytest.raises(ValueError, match="no cells_best.pt or .pth beside it holds the weights"):
        rename_user_model("cells_best", "cells_best")
    assert _files() == ["cells_best.json", "cells_best.pt"]


def test_removal_deletes_only_the_weights_its_description_names(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    _hand_rename("cells_v1", "cells_best")  # cells_best.json names cells_v1.pt, gone
    kept = user_models_dir() / "cells_best.pt"
    assert weights_kept_on_removal("cells_best") == [
        (kept, "cells_best.json does not name it; delete it by hand if not needed")
    ]
    assert remove_user_model("cells_best") == [user_models_dir() / "cells_best.json"]
    assert _files() == ["cells_best.pt"]


def test_a_case_only_rename_on_a_case_insensitive_disk_renames_the_model(tiny_checkpoint):
    """On macOS or Windows ``Cells.json`` is ``cells.json``: the rename was refused as
    taken by another model, advising ``--remove Cells``, which deleted its only
    description. Simulated here with a hard link (one file, two names)."""
    register_user_model(tiny_checkpoint, "cells", TINY)
    before = load_model("cells").model_id
    folder = user_models_dir()
    os.link(folder / "cells.json", folder / "Cells.json")
    assert rename_user_model("cells", "Cells") == folder / "Cells.pt"
    assert not (folder / "cells.json").exists()
    assert load_model("Cells").model_id == before
    data = json.loads((folder / "Cells.json").read_text())
    assert data["name"] == "Cells" and data["filename"] == "Cells.pt"


def test_a_name_only_in_another_case_than_a_models_is_refused(tiny_checkpoint):
    # on macOS and Windows Run1B.pt and run1b.pt are one file: the second replaced the first
    from napari_samtune.core.train_export import check_model_name, unique_model_name

    register_user_model(tiny_checkpoint, "Run1B", TINY)
    with pytest.raises(user_models.ModelNameTaken, match="'Run1B' differs from 'run1b' only"):
        register_user_model(tiny_checkpoint, "run1b", TINY)
    with pytest.raises(user_models.ModelNameTaken, match="only in case"):
        register_user_model(tiny_checkpoint, "run1b", TINY, overwrite=True)
    with pytest.raises(ValueError, match="'Run1B' differs from 'RUN1B' only in case"):
        check_model_name("RUN1B")  # a run's --model-name, refused before it trains
    assert unique_model_name("run1b") == "run1b-2"  # a run folder's name
    register_user_model(tiny_checkpoint, "cells", TINY)
    with pytest.raises(ValueError, match="only in case"):
        rename_user_model("cells", "RUN1b")
    rename_user_model("Run1B", "run1b")  # the model itself in another case
    assert sorted(s.name for s in list_user_models()) == ["cells", "run1b"]


def test_a_case_twin_is_named_as_such_on_a_disk_that_ignores_case(tiny_checkpoint, monkeypatch):
    """On macOS and Windows run1b.json "exists" where Run1B.json does: the run's name check
    said 'already a built-in or registered model', naming no model listed."""
    from pathlib import Path

    from napari_samtune.core.train_export import check_model_name

    register_user_model(tiny_checkpoint, "Run1B", TINY)
    folder, exists = user_models_dir(), Path.exists

    def ignoring_case(path):
        if path.parent == folder:
            return any(p.name.lower() == path.name.lower() for p in folder.iterdir())
        return exists(path)

    monkeypatch.setattr(Path, "exists", ignoring_case)
    with pytest.raises(ValueError, match="'Run1B' differs from 'run1b' only in case"):
        check_model_name("run1b")


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("con", "con_"),
        ("cells.pth", "cells"),
        ("run.pt.pth", "run"),
        ("AUX.1", "AUX_.1"),
        (".pth", "pth"),
        ("細胞", "finetuned"),
        ("run 1", "run_1"),
        ("a" * 88 + ".pth", "a" * 88),  # the suffix went first, not the cut ('aaa….p')
    ],
)
def test_a_run_folders_name_gives_a_model_name_that_registration_takes(folder, name):
    """A run in runs/con or runs/cells.pth trained to the end, then its registration was
    refused ("not allowed", "ends like a weights file"), and so was the fix it printed."""
    from napari_samtune.core.train_export import check_model_name, unique_model_name

    assert unique_model_name(folder) == name
    assert check_model_name(name) == name
