import json
import warnings

import pytest
import torch

from napari_samtune.core import registry
from napari_samtune.core.architectures import ARCHITECTURES, TINY, SamArchitecture, build_sam
from napari_samtune.core.model_lookup import get_model_spec, list_models
from napari_samtune.core.registry import (
    BUILTIN_MODELS,
    ModelSpec,
    cache_dir,
    parse_hash,
    user_models_dir,
)
from napari_samtune.core.user_model_removal import remove_user_model
from napari_samtune.core.user_models import list_user_models, register_user_model

EXPECTED_BUILTINS = {
    "nano": "nano",
    "vit_t": "vit_t",
    "vit_b": "vit_b",
    "vit_l": "vit_l",
    "vit_h": "vit_h",
    "vit_t_lm": "vit_t",
    "vit_b_lm": "vit_b",
    "vit_l_lm": "vit_l",
    "vit_t_em_organelles": "vit_t",
    "vit_b_em_organelles": "vit_b",
    "vit_l_em_organelles": "vit_l",
}
# A small shape that is not TINY: weights of one do not fit the other.
OTHER_SMALL = SamArchitecture(
    name="other_small", img_size=128, embed_dim=16, depth=1, num_heads=2,
    global_attn_indexes=(0,), window_size=4, prompt_embed_dim=16,
    decoder_mlp_dim=32, iou_head_hidden_dim=16,
)  # fmt: skip


def test_builtin_registry_lists_the_published_models_and_not_the_test_shape():
    assert {s.name: s.architecture for s in BUILTIN_MODELS} == EXPECTED_BUILTINS
    assert "tiny" not in {s.name for s in list_models()}
    for spec in BUILTIN_MODELS:
        if spec.packaged:  # shipped inside the package: no URL, verified by sha256
            assert spec.url is None and parse_hash(spec.file_hash)[0] == "sha256"
            continue
        assert spec.url.startswith("https://")
        algorithm, _ = parse_hash(spec.file_hash)
        expected_algorithm = "xxh128" if spec.source == "micro-sam generalist" else "sha256"
        assert algorithm == expected_algorithm, spec.name
        assert spec.resolve_architecture() is ARCHITECTURES[spec.architecture]
    sources = {s.name: s.source for s in BUILTIN_MODELS}
    assert sources["vit_t"] == "MobileSAM" and sources["vit_h"] == "official SAM"
    assert len({s.filename for s in BUILTIN_MODELS}) == len(BUILTIN_MODELS)  # no clobbering


def test_builtin_specs_are_immutable_and_found_by_name():
    spec = get_model_spec("vit_b_lm")
    assert spec.architecture == "vit_b" and spec.filename == "vit_b_lm.pt"
    with pytest.raises(AttributeError):
        spec.url = "https://example.org/evil.pt"
    assert spec.local_path() == cache_dir() / "models" / "vit_b_lm.pt"


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vit_x'.*vit_b_lm"):
        get_model_spec("vit_x")


def test_folders_follow_environment_and_default_to_per_user_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(tmp_path / "m"))
    assert cache_dir() == tmp_path / "c"
    assert user_models_dir() == tmp_path / "m"
    monkeypatch.delenv("SAMTUNE_CACHE_DIR")
    monkeypatch.delenv("SAMTUNE_MODELS_DIR")
    assert "napari-samtune" in cache_dir().parts
    assert user_models_dir().parts[-2:] == ("napari-samtune", "models")


def test_a_tilde_in_the_folder_settings_is_the_home_folder(monkeypatch, tmp_path):
    # as a quoted shell assignment, conda's env config vars or a .env file leave it
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", "~/samtune-cache")
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", "~/samtune-models")
    assert cache_dir() == tmp_path / "samtune-cache"
    assert get_model_spec("vit_b").local_path().parent == tmp_path / "samtune-cache" / "models"
    assert user_models_dir() == tmp_path / "samtune-models"
    from napari_samtune.core.annotation_files import default_annotation_folder

    monkeypatch.setenv("SAMTUNE_ANNOTATIONS_DIR", "~/annotations")
    assert default_annotation_folder() == tmp_path / "annotations"


@pytest.mark.parametrize(
    ("file_hash", "message"),
    [
        ("md5:" + "0" * 32, "algorithm 'md5'"),
        ("sha256:abc", "64 hexadecimal"),
        ("xxh128:" + "z" * 32, "32 hexadecimal"),
    ],
)
def test_bad_hashes_are_rejected(file_hash, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec("m", "tiny", "m.pt", "https://x/m.pt", file_hash)


def test_hash_forms_parse():
    assert parse_hash("SHA256:" + "A" * 64) == ("sha256", "a" * 64)
    assert parse_hash("b" * 64) == ("sha256", "b" * 64)
    assert parse_hash("xxh128:" + "c" * 32) == ("xxh128", "c" * 32)


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "", " spaced", ".hidden", "x" * 101])
def test_bad_model_names_are_rejected(name):
    with pytest.raises(ValueError, match="model name"):
        ModelSpec(name, "tiny", "f.pt")


def test_a_name_with_letters_beyond_ascii_is_refused_saying_which_letters_go():
    """'zellé' was refused with "use letters, digits, ..." although é is a letter."""
    with pytest.raises(ValueError, match=r"use 1-100 ASCII letters \(a-z, A-Z\), digits"):
        ModelSpec("zellé", "tiny", "f.pt")


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="architecture='vit_z'"):
        ModelSpec("m", "vit_z", "m.pt")
    with pytest.raises(ValueError, match="bare file name"):
        ModelSpec("m", "tiny", "../m.pt")


def test_registered_user_model_is_listed_with_metadata(tiny_checkpoint):
    path = register_user_model(
        tiny_checkpoint, "nuclei_v1", TINY, {"description": "my nuclei", "epochs": 3}
    )
    assert path == user_models_dir() / "nuclei_v1.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert list(state) == list(build_sam(TINY).state_dict())  # a plain SAM state dict
    sidecar = json.loads((user_models_dir() / "nuclei_v1.json").read_text())
    assert sidecar["architecture"] == TINY.to_dict()
    assert sidecar["metadata"] == {"description": "my nuclei", "epochs": 3}
    spec = get_model_spec("nuclei_v1")
    assert (spec.source, spec.architecture, spec.description) == ("user", "tiny", "my nuclei")
    assert spec.local_path() == path
    assert [s.name for s in list_models()][-1] == "nuclei_v1"


def test_registering_removes_what_a_killed_registration_left(tiny_checkpoint):
    """A kill mid-write skips atomic_write's clean-up: its temporary file, as large as the
    model, stayed in the user models folder for good. Registering removes those untouched
    for an hour; a younger one may be another process's write in progress."""
    import os

    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    abandoned, in_progress = folder / ".old.pt.ab_3x9q1.tmp", folder / ".new.pth.k2m0qz7w.tmp"
    for path in (abandoned, in_progress):
        path.write_bytes(b"half a model")
    hours_ago = abandoned.stat().st_mtime - 2 * 3600
    os.utime(abandoned, (hours_ago, hours_ago))
    register_user_model(tiny_checkpoint, "nuclei_v1", TINY)
    assert not abandoned.exists() and in_progress.exists()


def test_user_model_of_a_custom_shape_keeps_its_shape(tmp_path):
    custom = SamArchitecture(**{**OTHER_SMALL.__dict__, "name": "custom"})
    weights = tmp_path / "custom.pth"
    torch.save(build_sam(custom).state_dict(), weights)
    register_user_model(weights, "odd_shape", custom)
    spec = get_model_spec("odd_shape")
    assert spec.architecture == "custom"
    assert spec.resolve_architecture() == custom


@pytest.mark.parametrize("name", ["vit_b", "vit_b_lm", "tiny", "../x", "a/b"])
def test_register_refuses_builtin_and_unsafe_names(tiny_checkpoint, name):
    with pytest.raises(ValueError, match="name"):
        register_user_model(tiny_checkpoint, name, TINY)
    assert not user_models_dir().exists() or not any(user_models_dir().iterdir())


def test_register_refuses_existing_name_unless_overwrite(tiny_checkpoint, tmp_path):
    register_user_model(tiny_checkpoint, "mine", TINY, {"version": 1})
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        register_user_model(tiny_checkpoint, "mine", TINY, {"version": 2})
    register_user_model(tiny_checkpoint, "mine", TINY, {"version": 2}, overwrite=True)
    sidecar = json.loads((user_models_dir() / "mine.json").read_text())
    assert sidecar["metadata"] == {"version": 2}


def test_replacing_a_user_model_keeps_it_whole_until_the_new_one_is_described(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """Re-registering wrote the new weights over ``<name>.pt`` first: a crash before its
    description was rewritten left a model whose file no longer matched its hash."""
    from napari_samtune.core import user_models
    from napari_samtune.core.models import load_model

    def bias(path):
        return torch.load(path, weights_only=True)["mask_decoder.iou_token.weight"]

    sam = build_sam(TINY)
    for parameter in sam.parameters():
        parameter.data.fill_(0.25)
    newer = tmp_path / "newer.pth"
    torch.save(sam.state_dict(), newer)
    first = register_user_model(tiny_checkpoint, "mine", TINY)
    write_description = user_models._write_json_atomically

    def crash(path, data):
        raise KeyboardInterrupt  # the process killed before the description is written

    monkeypatch.setattr(user_models, "_write_json_atomically", crash)
    with pytest.raises(KeyboardInterrupt):
        register_user_model(newer, "mine", TINY, overwrite=True)
    loaded = load_model("mine")  # verified against the hash its description holds
    assert torch.equal(loaded.sam.mask_decoder.iou_token.weight, bias(tiny_checkpoint))

    monkeypatch.setattr(user_models, "_write_json_atomically", write_description)
    # what the registration cut short wrote is named by no model, but holds these very
    # weights: registered again, they take its place (two copies were kept, one to delete
    # by hand, said as a file of unknown weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = register_user_model(newer, "mine", TINY, overwrite=True)
    assert torch.equal(load_model("mine").sam.mask_decoder.iou_token.weight, bias(newer))
    assert second.name == "mine.pth"
    assert sorted(p.name for p in user_models_dir().glob("mine*")) == ["mine.json", "mine.pth"]
    assert register_user_model(tiny_checkpoint, "mine", TINY, overwrite=True) == first != second
    assert sorted(p.name for p in user_models_dir().glob("mine.*")) == ["mine.json", "mine.pt"]
    assert torch.equal(load_model("mine").sam.mask_decoder.iou_token.weight, bias(tiny_checkpoint))
    register_user_model(newer, "mine", TINY, overwrite=True)
    assert [p.name for p in remove_user_model("mine")] == ["mine.json", "mine.pth"]
    assert not list(user_models_dir().glob("mine*"))


def test_register_checks_weights_fit_the_architecture(tiny_checkpoint):
    with pytest.raises(ValueError, match="does not fit architecture 'other_small'"):
        register_user_model(tiny_checkpoint, "wrong", OTHER_SMALL)
    assert not (user_models_dir() / "wrong.json").exists()
    assert not (user_models_dir() / "wrong.pt").exists()


def test_register_refuses_unserialisable_metadata(tiny_checkpoint):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        register_user_model(tiny_checkpoint, "meta", TINY, {"when": object()})


def test_infinite_numbers_in_metadata_are_written_as_null(tiny_checkpoint):
    """A run stopped in its first epoch registered "best_metric": -Infinity, which is not
    JSON: strict readers of the model's description (jq, JavaScript) refused it."""
    register_user_model(tiny_checkpoint, "early", TINY, {"best_metric": float("-inf")})
    text = (user_models_dir() / "early.json").read_text()
    assert "Infinity" not in text
    assert json.loads(text)["metadata"]["best_metric"] is None


def test_a_weights_file_no_model_names_is_not_written_over(tiny_checkpoint):
    """``<name>.pt`` named by no description (what ``models --remove`` kept, saying so, or
    a file put there by hand) was replaced by the next model registered under that name."""
    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for stray in ("mine.pt", "mine.pth"):
        (folder / stray).write_bytes(b"the only copy of older weights")
    with pytest.warns(UserWarning, match="is named by no user model") as said:
        path = register_user_model(tiny_checkpoint, "mine", TINY)
    assert path.name == "mine-2.pt" and len(said) == 2
    assert "Delete mine.pt by hand if it is not needed" in str(said[0].message)
    for stray in ("mine.pt", "mine.pth"):
        assert (folder / stray).read_bytes() == b"the only copy of older weights"
    assert get_model_spec("mine").filename == "mine-2.pt"
    assert [p.name for p in remove_user_model("mine")] == ["mine.json", "mine-2.pt"]
    assert (folder / "mine.pt").is_file()


def test_broken_sidecars_warn_and_are_skipped(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "good", TINY)
    folder = user_models_dir()
    (folder / "garbage.json").write_text("{not json")
    (folder / "foreign.json").write_text(json.dumps({"format": "something-else"}))
    bad_arch = json.loads((folder / "good.json").read_text())
    bad_arch.update(name="badarch", architecture={"name": "x", "colour": "red"})
    (folder / "badarch.json").write_text(json.dumps(bad_arch))
    orphan = json.loads((folder / "good.json").read_text())
    orphan.update(name="orphan", filename="orphan.pt")  # its weights file does not exist
    (folder / "orphan.json").write_text(json.dumps(orphan))
    with pytest.warns(UserWarning) as caught:
        names = [spec.name for spec in list_user_models()]
    assert names == ["good"]
    messages = " ".join(str(w.message) for w in caught)
    for broken in ("garbage.json", "badarch.json", "orphan.json"):
        assert broken in messages
    # JSON of another format is no description of ours (an evaluation written there, say):
    # called broken, it was deleted by the --remove the warning advised
    assert "foreign" not in messages
    assert "samtune models --remove orphan" in messages  # each warning says the fix
    with pytest.raises(ValueError, match="user model 'orphan' is broken.*--remove orphan"):
        get_model_spec("orphan")


def test_listing_with_no_user_folder_is_quiet():
    assert not user_models_dir().exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list_models() == list(BUILTIN_MODELS)


def test_builtin_models_can_be_patched_for_tests(monkeypatch):
    fake = ModelSpec("fake", "tiny", "fake.pt", "http://127.0.0.1:1/fake.pt", None, "", "test")
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (fake,))
    assert get_model_spec("fake") is fake


@pytest.mark.parametrize("file_size", [-1, 1.5, "12", True])
def test_a_recorded_size_must_be_a_byte_count(file_size):
    with pytest.raises(ValueError, match=f"file_size={file_size!r} .*must be a number of bytes"):
        ModelSpec("sized", "tiny", "sized.pt", file_size=file_size)


def test_registration_records_size_and_hash_and_stamps_the_file(tiny_checkpoint):
    from napari_samtune.core.download import is_verified, stamp_path

    weights = register_user_model(tiny_checkpoint, "sized", TINY)
    sidecar = json.loads((user_models_dir() / "sized.json").read_text())
    assert sidecar["file_size"] == weights.stat().st_size > 0
    spec = get_model_spec("sized")
    assert spec.file_size == sidecar["file_size"] and spec.file_hash == sidecar["file_hash"]
    assert stamp_path(weights).is_file() and is_verified(weights, spec.file_hash)


def test_sidecars_from_before_sizes_were_recorded_still_load(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "older", TINY)
    sidecar = user_models_dir() / "older.json"
    data = json.loads(sidecar.read_text())
    del data["file_size"]
    sidecar.write_text(json.dumps(data))
    assert get_model_spec("older").file_size is None
    assert [spec.name for spec in list_user_models()] == ["older"]


@pytest.mark.parametrize("name", ["nano", "vit_b", "tiny"])
def test_builtin_models_are_not_removed_and_the_message_fits_each(name):
    """'nano' used to be told to delete its file from the download cache, where it never is."""
    from napari_samtune.core.registry import models_cache_dir

    with pytest.raises(ValueError) as info:
        remove_user_model(name)
    message = str(info.value)
    if name == "nano":
        nano = get_model_spec("nano").local_path()
        assert "built into napari-samtune" in message and "nothing to delete" in message
        assert str(nano) in message and str(models_cache_dir()) not in message
        assert nano.is_file()
    elif name == "vit_b":
        assert "is a built-in model, not a user model" in message
        assert "it is not downloaded" in message and "nothing to delete" in message
    else:
        assert "'tiny' is an architecture name, not a model" in message
