import hashlib
import os
import pickle
from collections import OrderedDict

import pytest
import torch

from napari_samtune.core import devices, registry
from napari_samtune.core.architectures import TINY, VIT_T, SamArchitecture, build_sam
from napari_samtune.core.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION
from napari_samtune.core.devices import resolve_device
from napari_samtune.core.models import (
    LoadedModel,
    export_sam_state_dict,
    load_model,
    read_sam_state_dict,
    state_dict_digest,
)
from napari_samtune.core.registry import ModelSpec, models_cache_dir
from napari_samtune.core.user_models import register_user_model

OTHER_SMALL = SamArchitecture(
    name="other_small", img_size=128, embed_dim=16, depth=1, num_heads=2,
    global_attn_indexes=(0,), window_size=4, prompt_embed_dim=16,
    decoder_mlp_dim=32, iou_head_hidden_dim=16,
)  # fmt: skip


def _wrap(state, layout):
    """The tiny model's weights in each layout found in the wild."""
    if layout == "plain":
        return state
    if layout == "project":
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "architecture": TINY.to_dict(),
            "model_state": state,
            "epoch": 3,
        }
    if layout == "micro_sam_export":
        decoder = {"decoder.weight": torch.ones(2)}
        return {"model_state": state, "decoder_state": decoder}
    if layout == "torch_em_trainer":
        return {"model_state": OrderedDict((f"sam.{k}", v) for k, v in state.items())}
    if layout == "model_key":
        return {"model": state}
    if layout == "ddp":
        return OrderedDict((f"module.{k}", v) for k, v in state.items())
    raise AssertionError(layout)


LAYOUTS = ["plain", "project", "micro_sam_export", "torch_em_trainer", "model_key", "ddp"]


def _embed(sam):
    torch.manual_seed(1)
    with torch.no_grad():
        return sam.image_encoder(torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_supported_layout_loads_the_same_weights(tmp_path, tiny_sam, layout):
    original = tiny_sam.state_dict()
    path = tmp_path / f"{layout}.pth"
    torch.save(_wrap(original, layout), path)
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.architecture == TINY and loaded.name == layout and loaded.path == path
    state = loaded.sam.state_dict()
    assert list(state) == list(original)
    assert all(torch.equal(state[k], original[k]) for k in original)
    assert loaded.model_id == "weights-sha256-" + state_dict_digest(original)
    assert not loaded.sam.training


def test_mobile_sam_layout_is_recognised(tmp_path):
    torch.manual_seed(0)
    mobile = build_sam(VIT_T)
    path = tmp_path / "mobile_sam.pt"
    torch.save(mobile.state_dict(), path)
    loaded = load_model(path)
    assert loaded.architecture == VIT_T
    key = "image_encoder.layers.0.blocks.0.conv1.c.weight"
    assert torch.equal(loaded.sam.state_dict()[key], mobile.state_dict()[key])


def test_model_id_is_stable_and_follows_the_weights(tmp_path, tiny_sam, tiny_checkpoint):
    first, second = load_model(tiny_checkpoint), load_model(tiny_checkpoint)
    assert first.model_id == second.model_id
    assert first.model_id.startswith("weights-sha256-") and len(first.model_id) == 15 + 64
    state = tiny_sam.state_dict()
    state["mask_decoder.iou_token.weight"][0, 0] += 1.0
    changed = tmp_path / "changed.pth"
    torch.save(state, changed)
    assert load_model(changed).model_id != first.model_id


def test_digest_covers_keys_dtypes_and_values():
    base = {"a": torch.zeros(4), "b": torch.arange(3)}
    digest = state_dict_digest(base)
    assert digest == state_dict_digest({"b": torch.arange(3), "a": torch.zeros(4)})  # order-free
    assert digest != state_dict_digest({"a": torch.zeros(4), "c": torch.arange(3)})
    assert digest != state_dict_digest(
        {"a": torch.zeros(4, dtype=torch.float64), "b": torch.arange(3)}
    )
    assert digest != state_dict_digest({"a": torch.zeros(2, 2), "b": torch.arange(3)})
    assert digest != state_dict_digest({"a": torch.ones(4), "b": torch.arange(3)})
    assert len(digest) == 64


def test_explicit_architecture_override(tiny_checkpoint):
    assert load_model(tiny_checkpoint, architecture="tiny").architecture == TINY
    assert load_model(tiny_checkpoint, architecture=TINY).architecture == TINY
    with pytest.raises(ValueError, match="does not fit architecture 'other_small'") as info:
        load_model(tiny_checkpoint, architecture=OTHER_SMALL)
    assert str(tiny_checkpoint) in str(info.value) and "wrong-shape" in str(info.value)
    with pytest.raises(ValueError, match="architecture='vit_z'"):
        load_model(tiny_checkpoint, architecture="vit_z")
    with pytest.raises(TypeError, match="must be a SamArchitecture"):
        load_model(tiny_checkpoint, architecture=TINY.to_dict())


def test_missing_and_extra_keys_are_named(tmp_path, tiny_sam):
    state = tiny_sam.state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="1 missing .*iou_token.*1 unexpected .*extra.weight"):
        load_model(path, architecture=TINY)


def test_stored_architecture_of_a_project_checkpoint_is_used(tmp_path):
    custom = SamArchitecture(**{**OTHER_SMALL.__dict__, "name": "my_shape"})
    path = tmp_path / "ckpt.pt"
    torch.save(
        _wrap(build_sam(custom).state_dict(), "project") | {"architecture": custom.to_dict()}, path
    )
    assert load_model(path).architecture == custom  # name kept: inference would say "custom"


def _evil_pickle(path, marker):
    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"model_state": Evil()}, path)


def test_pickles_needing_code_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    _evil_pickle(path, marker)
    with pytest.raises(ValueError, match="safe loading") as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_a_micro_sam_training_checkpoint_is_refused_with_the_way_to_its_weights(
    tmp_path, monkeypatch, tiny_sam
):
    """torch_em's trainer pickles its datasets beside the weights: "re-save only its
    weights with torch.save(state_dict)" did not say where they are in such a file."""
    import sys
    import types

    module = types.ModuleType("torch_em.data")

    class SegmentationDataset:  # as torch_em's, found by its module's name when pickled
        pass

    SegmentationDataset.__module__ = module.__name__
    SegmentationDataset.__qualname__ = "SegmentationDataset"
    module.SegmentationDataset = SegmentationDataset
    monkeypatch.setitem(sys.modules, "torch_em", types.ModuleType("torch_em"))
    monkeypatch.setitem(sys.modules, "torch_em.data", module)
    path = tmp_path / "best.pt"
    state = {f"sam.{k}": v for k, v in tiny_sam.state_dict().items()}
    torch.save({"model_state": state, "init": {"train_dataset": SegmentationDataset()}}, path)
    with pytest.raises(ValueError, match=r"torch_em\.data\.SegmentationDataset") as info:
        load_model(path)
    assert "a micro-sam training checkpoint: export its model with micro-sam" in str(info.value)
    assert "['model_state']" in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, I am a text file\n", "not a readable PyTorch weights file"),
        (os.urandom(4096), "not a (readable )?PyTorch weights file"),
        (b"", "not a readable PyTorch weights file"),
        (pickle.dumps({"a": 1}, protocol=4), "not a (readable )?PyTorch weights file"),
    ],
    ids=["text", "random", "empty", "plain_pickle"],
)
def test_garbage_files_give_a_clear_error(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value) and "Expected SAM weights" in str(info.value)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt") as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"fc.weight": torch.zeros(2, 2)}, "not a Segment Anything model"),
        ([torch.zeros(2)], "holds a list"),
        ({"w": torch.zeros(1), "step": 3}, "not tensors"),
        ({}, "holds no model weights"),
    ],
    ids=["foreign_state_dict", "list", "mixed", "empty_dict"],
)
def test_foreign_weights_are_refused_by_name(tmp_path, obj, message):
    path = tmp_path / "foreign.pth"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_unknown_name_or_missing_file(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="neither a model name .*vit_b_lm.* nor an existing file"):
        load_model("vit_q")
    with pytest.raises(ValueError, match="none of yours is registered"):
        load_model("vit_q")
    register_user_model(tiny_checkpoint, "mine", TINY)  # listed, as train and evaluate do
    with pytest.raises(ValueError, match=r"; yours: \['mine'\]\) nor an existing file"):
        load_model("vit_q")
    # a path names no model: no list of them (which grows with every run)
    with pytest.raises(ValueError, match=r"^weights file '.*absent.pth' does not exist$"):
        load_model(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="is a folder"):
        load_model(tmp_path)
    for i in range(13):
        register_user_model(tiny_checkpoint, f"mine-{i:02d}", TINY)
    with pytest.raises(ValueError, match=r"'mine-11'\] and 2 more \('samtune models' lists"):
        load_model("vit_q")


def test_registered_builtin_file_uses_the_published_hash_as_id(monkeypatch, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    file_hash = "sha256:" + hashlib.sha256(data).hexdigest()
    spec = ModelSpec(
        "tiny_pub", "tiny", "tiny_pub.pt", "http://127.0.0.1:9/x.pt", file_hash, "", "test"
    )
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (spec,))
    models_cache_dir().mkdir(parents=True)
    (models_cache_dir() / "tiny_pub.pt").write_bytes(data)  # as if downloaded before
    loaded = load_model("tiny_pub", download=False)
    assert loaded.model_id == "file-sha256-" + file_hash.split(":")[1]
    assert loaded.name == "tiny_pub" and loaded.path == models_cache_dir() / "tiny_pub.pt"
    assert loaded.architecture == TINY


def test_registered_builtin_that_is_not_downloaded_is_a_clear_error(monkeypatch):
    spec = ModelSpec("tiny_pub", "tiny", "tiny_pub.pt", "http://127.0.0.1:9/x.pt", None, "", "test")
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (spec,))
    with pytest.raises(OSError, match="downloading is off.*save it as"):
        load_model("tiny_pub", download=False)


def test_user_model_loads_by_name_with_identical_outputs(tmp_path, tiny_sam):
    path = tmp_path / "trained.pt"
    torch.save(_wrap(tiny_sam.state_dict(), "project"), path)
    register_user_model(path, "trained", TINY, {"note": "from a project checkpoint"})
    by_name = load_model("trained")
    assert by_name.name == "trained" and by_name.architecture == TINY
    assert by_name.path == registry.user_models_dir() / "trained.pt"
    assert torch.equal(_embed(by_name.sam), _embed(tiny_sam))
    assert by_name.model_id == load_model(path).model_id  # same weights, same id


def test_export_writes_a_plain_state_dict_the_official_loader_reads(tmp_path, tiny_sam):
    path = export_sam_state_dict(tiny_sam, tmp_path / "out" / "exported.pth")
    assert sorted(p.name for p in path.parent.iterdir()) == ["exported.pth"]  # no temp file
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert list(state) == list(tiny_sam.state_dict())
    fresh = build_sam(TINY)
    fresh.load_state_dict(state, strict=True)  # what segment_anything's builder does
    assert torch.equal(_embed(fresh), _embed(tiny_sam))
    assert read_sam_state_dict(path)[1] is None
    with pytest.raises(TypeError, match="segment_anything Sam"):
        export_sam_state_dict(torch.nn.Linear(2, 2), tmp_path / "x.pth")


def test_load_model_puts_the_model_on_the_requested_device(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint, device="cpu")
    assert next(loaded.sam.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="device="):
        load_model(tiny_checkpoint, device="tpu")


def test_resolve_device_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_resolve_device_rejects_absent_devices_with_the_fix(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available.*device='cpu'"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_device("gpu")
    with pytest.raises(TypeError, match="must be a string"):
        resolve_device(0)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_resolve_device_checks_the_cuda_index(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device("cuda:3")


def _damage_keeping_the_size(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    later = path.stat().st_mtime_ns + 10**9  # as any later write: a coarse clock may not tick
    os.utime(path, ns=(later, later))


def test_damaged_user_model_fails_with_user_model_advice(tiny_checkpoint):
    """The error used to say 'reinstall napari-samtune', which cannot repair a user model."""
    weights = register_user_model(tiny_checkpoint, "run_uint64", TINY)
    recorded = hashlib.sha256(weights.read_bytes()).hexdigest()
    _damage_keeping_the_size(weights)
    with pytest.raises(ValueError) as info:
        load_model("run_uint64")
    message = str(info.value)
    assert "weights of user model 'run_uint64'" in message
    assert "do not match their recorded sha256 hash" in message
    found = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"(expected {recorded}, found {found})" in message
    assert "samtune models --remove run_uint64" in message and "reinstall" not in message
    assert "--register run_uint64" in message

    weights.write_bytes(b"junk\n")  # another size: told from the size alone
    with pytest.raises(ValueError, match=r"are 5 bytes, not the \d+ bytes recorded") as info:
        load_model("run_uint64")
    assert "samtune models --remove run_uint64" in str(info.value)


def test_a_user_model_is_hashed_once_until_its_file_changes(monkeypatch, tiny_checkpoint):
    from napari_samtune.core import download

    weights = register_user_model(tiny_checkpoint, "stamped", TINY)  # hashed and stamped here
    hashed = []
    real_digest = download.file_digest
    monkeypatch.setattr(
        download, "file_digest", lambda path, alg: hashed.append(path) or real_digest(path, alg)
    )
    load_model("stamped")
    load_model("stamped")
    assert hashed == []
    later = weights.stat().st_mtime_ns + 10**9  # touched (e.g. copied back from a backup)
    os.utime(weights, ns=(later, later))
    load_model("stamped")
    load_model("stamped")
    assert hashed == [weights]  # checked again once, then stamped anew


def _count_digests(monkeypatch) -> list:
    from napari_samtune.core import models

    digests, real = [], models.state_dict_digest
    monkeypatch.setattr(models, "state_dict_digest", lambda s: digests.append(1) or real(s))
    return digests


def test_a_user_model_is_not_digested_again_at_load(monkeypatch, tiny_checkpoint):
    weights = register_user_model(tiny_checkpoint, "recorded", TINY)
    by_path = load_model(tiny_checkpoint, architecture=TINY).model_id
    digests = _count_digests(monkeypatch)
    loaded = load_model("recorded")
    assert digests == []  # the id recorded at registration; the file matched its hash
    assert loaded.model_id == by_path == load_model(weights, architecture=TINY).model_id
    assert digests == [1]  # the same file by path is digested


@pytest.mark.parametrize("recorded", [None, "file-sha256-" + "0" * 64, "weights-sha256-xyz"])
def test_a_user_model_without_a_recorded_digest_is_digested_at_load(
    monkeypatch, tiny_checkpoint, recorded
):
    import json

    weights = register_user_model(tiny_checkpoint, "older", TINY)
    sidecar = weights.with_suffix(".json")
    data = json.loads(sidecar.read_text())
    if recorded is None:  # sidecars from before ids were recorded
        del data["model_id"]
    else:
        data["model_id"] = recorded
    sidecar.write_text(json.dumps(data))
    digests = _count_digests(monkeypatch)
    loaded = load_model("older")
    assert digests == [1]
    assert loaded.model_id == load_model(tiny_checkpoint, architecture=TINY).model_id


def test_weights_with_extra_decoder_keys_are_said_to_be_no_sam_layout_read_here(tmp_path, tiny_sam):
    """A SAM-HQ-like file (extra decoder weights), its architecture inferred: the error
    advised passing architecture=..., which no command has and which would not help."""
    state = tiny_sam.state_dict()
    state["mask_decoder.hf_token.weight"] = torch.zeros(1, 32)
    path = tmp_path / "hq_like.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_model(path)
    message = str(info.value)
    assert "does not fit architecture 'tiny', the one its weights or its record name" in message
    assert "mask_decoder.hf_token.weight" in message and "SAM-HQ" in message
    assert "architecture=" not in message
