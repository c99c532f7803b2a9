import hashlib
import json
import os
import re
import warnings

import pytest

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core import registry
from napari_samtune.core.architectures import TINY
from napari_samtune.core.download import is_verified
from napari_samtune.core.model_lookup import get_model_spec
from napari_samtune.core.registry import ModelSpec, models_cache_dir, user_models_dir
from napari_samtune.core.user_models import register_user_model


@pytest.fixture(autouse=True)
def _models_subcommand(monkeypatch):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("models",))


def _table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines()[1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_models_lists_the_registry_with_download_state(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "architecture", "source", "downloaded", "path"]
    rows = _table_rows(out)
    assert list(rows) == [spec.name for spec in registry.BUILTIN_MODELS]
    assert rows["vit_b_lm"][1:5] == ["vit_b", "micro-sam", "generalist", "no"]
    assert rows["vit_h"][-1] == str(models_cache_dir() / "sam_vit_h_4b8939.pth")
    assert "no user models registered yet" in out
    assert str(models_cache_dir()) in out


def test_downloaded_and_user_models_are_marked(capsys, monkeypatch, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    file_hash = "sha256:" + hashlib.sha256(data).hexdigest()
    url = "https://example.org/weights.pt"
    fetched = ModelSpec("fetched", "tiny", "fetched.pt", url, file_hash, source="test")
    waiting = ModelSpec("waiting", "tiny", "waiting.pt", url, file_hash, source="test")
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (fetched, waiting))
    models_cache_dir().mkdir(parents=True)
    (models_cache_dir() / "fetched.pt").write_bytes(data)
    assert is_verified(fetched.local_path(), file_hash)  # what a finished download leaves
    register_user_model(tiny_checkpoint, "my_nuclei", TINY)

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert rows["fetched"][3:] == ["yes", str(models_cache_dir() / "fetched.pt")]
    assert rows["waiting"][3] == "no"
    mine = ["tiny", "user", "yes", str(user_models_dir() / "my_nuclei.pt")]
    assert rows["my_nuclei"][1:5] == mine  # not "unverified": checked at every load
    assert "no user models registered yet" not in out
    assert "unverified:" not in out

    # a file put there by hand, 10 bytes of it: not called downloaded ("yes") unhashed
    (models_cache_dir() / "waiting.pt").write_bytes(bytes(10))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert _table_rows(out)["waiting"][3] == "unverified"
    assert "unverified: a file put there by hand" in out and "downloaded again" in out


def test_a_models_folder_that_cannot_be_made_is_named_not_called_empty(
    capsys, monkeypatch, tmp_path
):
    """It said "no user models registered yet", and training failed on it later."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(blocker / "models"))
    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    assert "no user models registered yet" not in out
    assert (
        f"warning: the user models folder {str(blocker / 'models')!r} cannot be made: "
        f"{str(blocker)!r} is a file; set SAMTUNE_MODELS_DIR to a folder you can write to"
    ) in err


def test_user_models_can_be_removed(capsys, tiny_checkpoint):
    from napari_samtune.core.models import load_model

    register_user_model(tiny_checkpoint, "keep", TINY)
    weights = register_user_model(tiny_checkpoint, "drop", TINY)
    load_model("drop")  # checks the hash and leaves a stamp next to the weights
    assert {p.name for p in user_models_dir().iterdir()} >= {"drop.json", "drop.pt"}
    assert main(["models", "--remove", "drop"]) == 0
    assert "removed user model 'drop' (drop.json, drop.pt" in capsys.readouterr().out
    assert not weights.exists()
    assert sorted(p.name for p in user_models_dir().iterdir() if "drop" in p.name) == []
    assert main(["models"]) == 0
    assert "drop" not in _table_rows(capsys.readouterr().out)
    load_model("keep")

    assert main(["models", "--remove", "drop"]) == 2
    assert "no user model named 'drop'; the user models are ['keep']" in capsys.readouterr().err
    assert main(["models", "--remove", "vit_b"]) == 2
    assert "'vit_b' is a built-in model, not a user model" in capsys.readouterr().err


def test_a_file_that_cannot_be_deleted_is_named_with_the_fix(capsys, tiny_checkpoint, monkeypatch):
    """On a read-only models folder --remove printed only "[Errno 30] Read-only file system"."""
    import errno
    from pathlib import Path

    register_user_model(tiny_checkpoint, "drop", TINY)
    unlink = Path.unlink

    def read_only(path, *args, **kwargs):
        if path.suffix in refused:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", read_only)
    refused = {".json", ".pt"}
    assert main(["models", "--remove", "drop"]) == 2
    err = capsys.readouterr().err
    folder = user_models_dir()
    assert (
        f"could not delete {folder / 'drop.json'} (Read-only file system) while removing user "
        f"model 'drop'; deleted before it: nothing. The user models folder {folder} must be "
        "writable" in err
    )
    assert (folder / "drop.json").is_file() and (folder / "drop.pt").is_file()
    refused = {".pt"}  # the description went, its weights could not
    assert main(["models", "--remove", "drop"]) == 2
    assert (
        "drop.pt (Read-only file system) while removing user model 'drop'; deleted before "
        "it: drop.json." in capsys.readouterr().err
    )


def test_a_name_that_cannot_be_removed_stops_the_list_before_any_removal(capsys, tiny_checkpoint):
    register_user_model(tiny_checkpoint, "first", TINY)
    assert main(["models", "--remove", "first", "typo"]) == 2
    err = capsys.readouterr().err
    assert "no user model named 'typo'; the user models are ['first']; nothing was removed" in err
    assert (user_models_dir() / "first.pt").is_file()  # it was deleted before the error
    assert main(["models", "--remove", "first", "nano"]) == 2
    assert "'nano' is a built-in model" in capsys.readouterr().err
    assert main(["models", "--remove", "first", "first"]) == 0
    assert not (user_models_dir() / "first.pt").exists()
    # it printed "the user models are []", and a bad name did not say nothing was removed
    assert main(["models", "--remove", "first"]) == 2
    assert "no user model named 'first'; there are no user models; nothing" in (
        capsys.readouterr().err
    )
    assert main(["models", "--remove", "../x"]) == 2
    assert "is not allowed: use 1-100 ASCII letters" in (err := capsys.readouterr().err)
    assert err.rstrip().endswith("nothing was removed")


def test_removing_a_copied_description_keeps_the_weights_of_the_model_it_names(
    capsys, tiny_checkpoint
):
    """``a.json``/``a.pt`` copied by hand as ``b.json``/``b.pt``: b is listed as broken (its
    description names model 'a' and a.pt). ``--remove b`` used to delete a.pt, model a's
    weights; it deletes only b.json now and says that b.pt, which b.json does not name,
    stays. The fix offered is the rename that makes b a model of its own with b.pt."""
    from napari_samtune.core.models import load_model

    folder = user_models_dir()
    register_user_model(tiny_checkpoint, "a", TINY)
    for suffix in (".json", ".pt"):
        (folder / f"b{suffix}").write_bytes((folder / f"a{suffix}").read_bytes())
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "b: keep its weights (b.pt) under the file's name with: samtune models " in out
    assert "--rename b b" in out and "--remove b" not in out
    assert main(["models", "--remove", "b"]) == 0
    out = capsys.readouterr().out
    assert "removed user model 'b' (b.json)\n" in out
    by_hand = "delete it by hand if not needed"
    assert f"kept {folder / 'b.pt'} (b.json does not name it; {by_hand})" in out
    assert f"kept {folder / 'a.pt'} (another model uses it too: kept for that model)" in out
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "a.json",
        "a.pt",
        "b.pt",
    ]
    load_model("a")


def test_broken_user_models_are_listed_with_the_fix(capsys, tiny_checkpoint):
    """A deleted weights file used to show as 'no user models registered yet'."""
    register_user_model(tiny_checkpoint, "keep", TINY)
    register_user_model(tiny_checkpoint, "lost", TINY).unlink()
    (user_models_dir() / "garbled.json").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said in the listing, not as a Python warning
        assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "keep" in _table_rows(out) and "lost" not in _table_rows(out)
    assert "broken user models, offered nowhere (2):" in out
    assert re.search(r"  lost: .*lost.json: its weights file .*lost.pt is missing", out)
    assert "  garbled: " in out and "no user models registered yet" not in out
    assert "unregister them with: samtune models --remove garbled lost" in out
    assert main(["models", "--remove", "garbled", "lost"]) == 0
    capsys.readouterr()
    assert main(["models"]) == 0 and "broken" not in capsys.readouterr().out


def test_other_json_files_in_the_models_folder_are_no_models_and_are_kept(capsys, tiny_checkpoint):
    """``samtune evaluate --out`` into the folder wrote evaluation.json, and a person's
    notes.json: both were "broken user models", and --remove, as advised, deleted them."""
    register_user_model(tiny_checkpoint, "keep", TINY)
    notes = user_models_dir() / "notes.json"
    notes.write_text('{"stained": "Monday"}')
    (user_models_dir() / "evaluation.json").write_text('{"format": "samtune-evaluation"}')
    assert main(["models"]) == 0
    assert "broken" not in capsys.readouterr().out
    assert main(["models", "--remove", "notes"]) == 2
    assert "holds other data than a user model's description" in capsys.readouterr().err
    assert notes.read_text() == '{"stained": "Monday"}'
    assert main(["models", "--rename", "keep", "notes"]) == 2
    assert "is a file of other data than a user model's description" in capsys.readouterr().err
    for overwrite in (False, True):  # a model registered under its name wrote over it
        with pytest.raises(ValueError, match="holds other data than a user model's desc"):
            register_user_model(tiny_checkpoint, "notes", TINY, overwrite=overwrite)
    assert notes.read_text() == '{"stained": "Monday"}'
    with pytest.raises(ValueError, match="unknown model 'notes'"):  # not "broken: --remove"
        get_model_spec("notes")


def test_damaged_user_models_are_named_with_the_fix(capsys, tiny_checkpoint):
    """A user model whose file was overwritten used to be listed as fine ("yes")."""
    register_user_model(tiny_checkpoint, "keep", TINY)
    register_user_model(tiny_checkpoint, "junk", TINY).write_bytes(b"junk\n")  # another size
    flipped = register_user_model(tiny_checkpoint, "flipped", TINY)  # same size, other bytes
    recorded = hashlib.sha256(flipped.read_bytes()).hexdigest()
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    later = flipped.stat().st_mtime_ns + 10**9  # as any later write: a coarse clock may not tick
    os.utime(flipped, ns=(later, later))
    register_user_model(tiny_checkpoint, "older", TINY).write_bytes(b"junk\n")
    sidecar = user_models_dir() / "older.json"  # registered before sizes were recorded
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "file_size": None}))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert {name: rows[name][3] for name in ("keep", "junk", "flipped", "older")} == {
        "keep": "yes",
        "junk": "DAMAGED",
        "flipped": "DAMAGED",
        "older": "DAMAGED",
    }
    assert "checked against the size and sha256 hash recorded when they were registered" in out
    assert "damaged user models, which fail to load (3):" in out
    assert re.search(r"  junk: its weights at .*junk.pt are 5 bytes, not the \d+ bytes", out)
    found = hashlib.sha256(bytes(data)).hexdigest()
    assert f"  flipped: its weights at {flipped} do not match their recorded sha256 hash " in out
    assert f"(expected {recorded}, found {found})" in out
    assert re.search(r"  older: its weights at .*older.pt do not match their recorded sha256", out)
    assert "unregister them with: samtune models --remove flipped junk older" in out
    assert "--register NAME" in out
    assert main(["models", "--remove", "flipped", "junk", "older"]) == 0
    capsys.readouterr()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "damaged" not in out and list(_table_rows(out))[-1] == "keep"


def test_listing_user_models_hashes_only_files_changed_since_their_check(
    capsys, monkeypatch, tiny_checkpoint
):
    from napari_samtune.core import download

    weights = register_user_model(tiny_checkpoint, "big", TINY)
    hashed = []
    real_digest = download.file_digest
    monkeypatch.setattr(
        download, "file_digest", lambda path, alg: hashed.append(path) or real_digest(path, alg)
    )
    assert main(["models"]) == 0 and main(["models"]) == 0
    assert hashed == []  # registration stamped it
    later = weights.stat().st_mtime_ns + 10**9
    os.utime(weights, ns=(later, later))
    assert main(["models"]) == 0 and main(["models"]) == 0
    assert hashed == [weights]
    assert _table_rows(capsys.readouterr().out)["big"][3] == "yes"


def test_removing_a_builtin_model_says_why_it_cannot_be(capsys):
    """For nano it used to say to delete its file from the download cache, where it never is."""
    nano = get_model_spec("nano").local_path()
    assert main(["models", "--remove", "nano"]) == 2
    err = capsys.readouterr().err
    assert "'nano' is a built-in model, not a user model, and cannot be removed" in err
    assert f"built into napari-samtune ({nano} ships inside the package)" in err
    assert "nothing to delete" in err and str(models_cache_dir()) not in err
    assert nano.is_file()

    vit_b = get_model_spec("vit_b").local_path()
    assert main(["models", "--remove", "vit_b"]) == 2
    assert f"it is not downloaded ({vit_b} does not exist)" in capsys.readouterr().err
    vit_b.parent.mkdir(parents=True)
    vit_b.write_bytes(b"downloaded before")
    assert main(["models", "--remove", "vit_b"]) == 2
    assert f"delete its downloaded file {vit_b}" in capsys.readouterr().err
    assert vit_b.read_bytes() == b"downloaded before"


def test_models_help_mentions_the_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "models" in capsys.readouterr().out


def test_a_user_model_with_nothing_recorded_is_not_called_checked(capsys, tiny_checkpoint):
    register_user_model(tiny_checkpoint, "bare", TINY)
    sidecar = user_models_dir() / "bare.json"  # a description written by hand: no size, no hash
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "file_hash": None, "file_size": None}))
    assert main(["models"]) == 0
    assert _table_rows(capsys.readouterr().out)["bare"][3:5] == ["yes", "(unchecked)"]


def test_a_user_model_whose_name_a_built_in_model_takes_later_is_kept_by_renaming_it(
    capsys, monkeypatch, tiny_checkpoint
):
    """A later version's new built-in model of a user model's name made it unloadable; the
    fix told was to register its weights anew by hand, then remove it: --rename does both."""
    from napari_samtune.core.models import load_model

    register_user_model(tiny_checkpoint, "histo", TINY)
    later = ModelSpec("histo", "vit_b", "histo.pt", "https://example.invalid/histo.pt")
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (*registry.BUILTIN_MODELS, later))
    assert main(["models"]) == 0
    told = capsys.readouterr().out
    assert "keep its weights under another name with: samtune models --rename histo NEW" in told
    assert "--remove histo" not in told
    assert main(["models", "--rename", "histo", "my_histo"]) == 0  # as told
    assert "renamed user model 'histo' to 'my_histo'" in capsys.readouterr().out
    assert load_model("my_histo").architecture == TINY
    assert not (user_models_dir() / "histo.json").exists()
    assert registry.builtin_model("histo") is later  # the built-in one stays
    assert main(["models"]) == 0 and "broken" not in capsys.readouterr().out


def test_files_renamed_by_hand_are_offered_a_rename_that_keeps_the_weights(capsys, tiny_checkpoint):
    """cells_v1.json/.pt renamed by hand to cells_best.*: the fix told was 'samtune models
    --remove cells_best', which deleted cells_best.pt, the only copy of the weights."""
    from napari_samtune.core.models import load_model

    folder = user_models_dir()
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    for suffix in (".json", ".pt"):
        (folder / f"cells_v1{suffix}").rename(folder / f"cells_best{suffix}")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "it describes model 'cells_v1' but is named 'cells_best.json'" in out
    assert "samtune models --rename cells_best cells_best" in out and "--remove" not in out
    assert main(["models", "--rename", "cells_best", "cells_best"]) == 0  # as told
    assert "mended user model 'cells_best'" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert _table_rows(out)["cells_best"][3] == "yes" and "broken" not in out
    load_model("cells_best")


def test_removing_a_description_renamed_by_hand_keeps_the_weights(capsys, tiny_checkpoint):
    folder = user_models_dir()
    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    for suffix in (".json", ".pt"):
        (folder / f"cells_v1{suffix}").rename(folder / f"cells_best{suffix}")
    weights = (folder / "cells_best.pt").read_bytes()
    assert main(["models", "--remove", "cells_best"]) == 0
    out = capsys.readouterr().out
    assert "removed user model 'cells_best' (cells_best.json)\n" in out
    by_hand = "delete it by hand if not needed"
    assert f"kept {folder / 'cells_best.pt'} (cells_best.json does not name it; {by_hand})" in out
    assert (folder / "cells_best.pt").read_bytes() == weights


def test_user_models_are_renamed_and_a_taken_name_is_refused(capsys, tiny_checkpoint):
    from napari_samtune.core.models import load_model

    register_user_model(tiny_checkpoint, "cells_v1", TINY)
    register_user_model(tiny_checkpoint, "other", TINY)
    assert main(["models", "--rename", "cells_v1", "cells_v2"]) == 0
    assert "renamed user model 'cells_v1' to 'cells_v2' (cells_v2.json, cells_v2.pt)" in (
        capsys.readouterr().out
    )
    load_model("cells_v2")
    assert main(["models", "--rename", "cells_v2", "other"]) == 2
    assert "--rename NEW other is taken by another user model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "--rename", "cells_v2", "x", "--remove", "other"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert (user_models_dir() / "cells_v2.json").is_file()
    assert (user_models_dir() / "other.json").is_file()


def test_rename_refusals_name_the_command_line_arguments(capsys, tiny_checkpoint):
    """They named the Python parameter: "new_name='réseau' is not allowed"."""
    register_user_model(tiny_checkpoint, "keep", TINY)
    assert main(["models", "--rename", "keep", "réseau"]) == 2
    err = capsys.readouterr().err
    assert "--rename NEW 'réseau' is not allowed" in err and "new_name" not in err


def test_removing_a_model_does_not_offer_another_model_s_file_for_deletion(tiny_checkpoint, capsys):
    """Model "mine" stored in mine-2.pt (mine.pt(h) were stray files), then model "mine-2"
    removed: "kept mine-2.pt (another model's description names it); delete it by hand if it
    is not needed", which would have broken "mine"."""
    from napari_samtune.core.registry import user_models_dir
    from napari_samtune.core.user_models import register_user_model

    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for stray in ("mine.pt", "mine.pth"):
        (folder / stray).write_bytes(b"stray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert register_user_model(tiny_checkpoint, "mine", TINY).name == "mine-2.pt"
    assert register_user_model(tiny_checkpoint, "mine-2", TINY).name == "mine-2.pth"
    capsys.readouterr()
    assert main(["models", "--remove", "mine-2"]) == 0
    out = capsys.readouterr().out
    assert "mine-2.pt " not in out and "delete" not in out
    assert (folder / "mine-2.pt").is_file()
