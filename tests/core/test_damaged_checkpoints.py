"""A training checkpoint that lost a field, or one of another napari-samtune version, is
refused naming the file, the field and what to use instead: export, resume and loading it
as a model ended in a bare KeyError, or torch's state-dict dump, from deep in the restore."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import tifffile
import torch

import napari_samtune.cli as cli
from napari_samtune.core.checkpoint_models import export_model
from napari_samtune.core.models import load_model
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.train import train

DATA = make_dataset(2, shape=(64, 64), seed=0)
CONFIG = TrainConfig(
    model="random:tiny", epochs=1, n_objects_per_batch=1, min_samples_per_epoch=1,
    n_iterative_prompts=0, mixed_precision="no", early_stopping=None, val_fraction=0.5,
)  # fmt: skip
SETUPS = {
    "whole": CONFIG,  # every weight in each checkpoint
    "frozen": dataclasses.replace(  # only the trained ones: completed on the base model
        CONFIG, freeze=("image_encoder",), checkpoint_trainable_only=True
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-epoch run of each setup (last.pt and best.pt), trained once for the module."""
    folder = tmp_path_factory.mktemp("runs")
    for name, config in SETUPS.items():
        train(config, DATA, out_dir=folder / name)
    return folder


def _damaged_run(runs, tmp_path, setup: str, field: str, value=None, which="last.pt"):
    """A copy of the ``setup`` run whose ``which`` checkpoint lacks ``field`` ("top" or
    "top.nested"), or has it set to ``value``; the checkpoint's path."""
    run = shutil.copytree(runs / setup, tmp_path / "run")
    path = run / "checkpoints" / which
    checkpoint = torch.load(path, weights_only=True)
    *parents, key = field.split(".")
    entry = checkpoint
    for parent in parents:
        entry = entry[parent]
    if value is None:
        del entry[key]
    else:
        entry[key] = value
    torch.save(checkpoint, path)
    return path


def _resume(path, setup: str):
    config = dataclasses.replace(SETUPS[setup], epochs=2)
    return train(config, DATA, out_dir=path.parent.parent, resume_from=path.parent.parent)


@pytest.mark.parametrize("setup", ["whole", "frozen"])
@pytest.mark.parametrize("field", ["architecture", "model_state", "model_state_complete"])
def test_a_checkpoint_without_its_model_fields_is_refused_naming_them(runs, tmp_path, setup, field):
    path = _damaged_run(runs, tmp_path, setup, field)
    named = f"'{path}' is a damaged training checkpoint: it has no {field!r} entry"
    beside = f". {path.with_name('best.pt')} beside it loads: samtune export"
    for use in (
        lambda: export_model(path, tmp_path / "model.pth"),
        lambda: _resume(path, setup),
    ):
        with pytest.raises(ValueError) as raised:
            use()
        assert str(raised.value).startswith(named) and beside in str(raised.value)
    assert not (tmp_path / "model.pth").exists()


@pytest.mark.parametrize("field", ["model_state", "model_state_complete", "config.freeze"])
def test_a_trained_only_checkpoint_that_lost_a_field_is_refused_as_a_model(runs, tmp_path, field):
    """Without model_state, segment --model last.pt ended in a KeyError; without the flag,
    it was taken for a whole model ("does not fit architecture 'tiny': 38 missing")."""
    path = _damaged_run(runs, tmp_path, "frozen", field)
    with pytest.raises(ValueError, match=f"^'{path}' is a damaged training checkpoint: it"):
        load_model(path)


@pytest.mark.parametrize("setup", ["whole", "frozen"])
@pytest.mark.parametrize(
    ("field", "said"),
    [
        ("progress", "its 'progress' entry is missing"),
        ("progress.epoch", "its 'progress' entry has no ['epoch']"),  # resumed from epoch 0
        ("rng_state", "its 'rng_state' entry is missing"),
        ("rng_state.torch", "its 'rng_state' entry has no torch random state"),
        ("scheduler_state", "its 'scheduler_state' entry is missing"),
    ],
)
def test_a_checkpoint_without_its_resume_fields_is_refused_and_still_exports(
    runs, tmp_path, setup, field, said
):
    path = _damaged_run(runs, tmp_path, setup, field)
    with pytest.raises(ValueError) as raised:
        _resume(path, setup)
    message = str(raised.value)
    assert message.startswith(f"'{path}' is a damaged training checkpoint: {said}")
    assert f"cannot be continued from it. samtune export {path} -o model.pth" in message
    export_model(path, tmp_path / "model.pth")  # its weights are whole


@pytest.mark.parametrize(
    ("setup", "said"),
    [
        ("whole", "its weights do not fit its 'architecture' entry ('tiny': "),
        ("frozen", "its 'architecture' entry is not that of its base model 'random:tiny'"),
    ],
)
@pytest.mark.parametrize("field", ["architecture.window_size", "architecture.depth"])
def test_a_checkpoint_with_a_lost_architecture_field_is_refused_naming_it(
    runs, tmp_path, setup, said, field
):
    """Its architecture then takes a default: torch's "Error(s) in loading state_dict ...
    size mismatch" came out as it was (a RuntimeError: a traceback in the CLI)."""
    path = _damaged_run(runs, tmp_path, setup, field)
    path.with_name("best.pt").unlink()  # no other checkpoint: the run's model, a new run
    for use in (
        lambda: export_model(path, tmp_path / "model.pth"),
        lambda: _resume(path, setup),
    ):
        with pytest.raises(ValueError) as raised:
            use()
        message = str(raised.value)
        assert message.startswith(f"'{path}' is a damaged training checkpoint: {said}")
        assert message.endswith("Use the run's model.pth where it has one (exported when the "
                                "run ended), or start a new run")  # fmt: skip


@pytest.mark.parametrize("setup", ["whole", "frozen"])
def test_a_checkpoint_of_a_newer_version_s_config_is_named_with_the_fix(runs, tmp_path, setup):
    """A config field this version does not know was refused as "unknown training config
    fields ['patch_overlap']", naming neither the file nor what to do."""
    path = _damaged_run(runs, tmp_path, setup, "config.patch_overlap", 0.25)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["versions"]["napari_samtune"] = "9.0.0"
    torch.save(checkpoint, path)
    uses = [lambda: export_model(path, tmp_path / "model.pth"), lambda: _resume(path, setup)]
    if setup == "frozen":  # a whole one loads as a model in any version: its weights are plain
        uses.append(lambda: load_model(path))
    for use in uses:
        with pytest.raises(ValueError) as raised:
            use()
        assert str(raised.value).startswith(
            f"'{path}' was written by napari-samtune 9.0.0 (config fields ['patch_overlap'] "
            "unknown to napari-samtune "
        )
        assert str(raised.value).endswith("update napari-samtune, or use the run's model.pth, "
                                          "which any version loads")  # fmt: skip


def test_a_trained_only_checkpoint_with_a_wrong_digest_is_not_said_to_have_a_new_base(
    runs, tmp_path
):
    """Its base model unchanged, the message read "as it was (random:tiny-seed0), but that
    model now has different weights (random:tiny-seed0)"."""
    path = _damaged_run(runs, tmp_path, "frozen", "base_parts_digest", "0" * 64)
    with pytest.raises(ValueError) as raised:
        export_model(path, tmp_path / "model.pth")
    message = str(raised.value)
    assert message.startswith(f"'{path}' is a damaged training checkpoint: the parts it takes")
    assert "now has different weights" not in message


def _cli_resume(path, tmp_path) -> list[str]:
    """``samtune train --resume`` of the run of checkpoint ``path``, on DATA in TIFF files."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for i, (image, label) in enumerate(DATA):
        tifffile.imwrite(images / f"{i}.tif", image), tifffile.imwrite(labels / f"{i}.tif", label)
    resume = ["train", "--resume", str(path.parent.parent), "--epochs", "2", "--no-progress"]
    return resume + ["--images", str(images), "--labels", str(labels)]


def test_the_cli_says_what_is_damaged_rather_than_a_traceback(runs, tmp_path, capsys):
    path = _damaged_run(runs, tmp_path, "whole", "progress")
    assert cli.main(_cli_resume(path, tmp_path)) == 2
    assert f"error: '{path}' is a damaged training checkpoint: its 'progress'" in (
        capsys.readouterr().err
    )
    del_architecture = _damaged_run(runs, tmp_path / "other", "whole", "architecture")
    export = ["export", str(del_architecture), "-o", str(tmp_path / "model.pth")]
    assert cli.main(export) == 2
    assert "is a damaged training checkpoint: it has no 'architecture' entry" in (
        capsys.readouterr().err
    )


def test_a_checkpoint_without_its_architecture_is_said_so_as_a_model(runs, tmp_path):
    """It was called "a broken 'architecture' entry: 'architecture'" (a KeyError's text)."""
    path = _damaged_run(runs, tmp_path, "whole", "architecture")
    with pytest.raises(ValueError, match=f"^{path} has no 'architecture' entry. Expected SAM"):
        load_model(path)


def test_whole_weights_whose_config_lost_the_model_setup_export_but_do_not_resume(runs, tmp_path):
    """A resume compares the model setup with the run's (a default freeze read as "a
    different model setup"); whole weights need none of it to be a model."""
    path = _damaged_run(runs, tmp_path, "whole", "config.freeze")
    with pytest.raises(ValueError) as raised:
        _resume(path, "whole")
    assert str(raised.value).startswith(
        f"'{path}' is a damaged training checkpoint: its 'config' entry has no ['freeze'], "
        f"so its run cannot be continued from it. samtune export {path} -o model.pth"
    )
    export_model(path, tmp_path / "model.pth")
    assert load_model(path).architecture.name == "tiny"


@pytest.mark.parametrize("setup", ["whole", "frozen"])
def test_an_optimizer_state_that_does_not_fit_the_run_is_refused_naming_the_file(
    runs, tmp_path, setup
):
    """Torch's "loaded state dict contains a parameter group that doesn't match the size of
    optimizer's group" named no file and no way out."""
    path = _damaged_run(runs, tmp_path, setup, "optimizer_state.param_groups")
    checkpoint = torch.load(path, weights_only=True)
    real = torch.load(runs / setup / "checkpoints" / "last.pt", weights_only=True)
    groups = real["optimizer_state"]["param_groups"]
    checkpoint["optimizer_state"]["param_groups"] = [{**groups[0], "params": [0]}]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError) as raised:
        _resume(path, setup)
    message = str(raised.value)
    assert message.startswith(f"'{path}' is a damaged training checkpoint: its optimizer")
    assert f"samtune export {path} -o model.pth" in message
    export_model(path, tmp_path / "model.pth")  # its weights still make a model


def _with_changed_weights(path, written: bytes = b"\x7f" * 64) -> None:
    """64 bytes inside the largest record of ``path`` changed, its zip layout intact: the
    damage a disk or a copy can do, which torch.load does not see."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
        offset = largest.header_offset + 30 + len(largest.filename.encode()) + 64
    data = bytearray(path.read_bytes())
    assert data[offset : offset + 64] != written
    data[offset : offset + 64] = written  # by default large float32 values
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["last.pt", "best.pt"])
def test_weights_changed_on_disk_are_refused_naming_the_file(runs, tmp_path, which):
    """A checkpoint whose weights a disk or copy error changed exported weights of 1e28
    without a word, and its resume ended in "training diverged ... lower --lr"."""
    run = shutil.copytree(runs / "whole", tmp_path / "run")
    path = run / "checkpoints" / which
    _with_changed_weights(path)
    with pytest.raises(ValueError) as refused:
        export_model(path, tmp_path / "model.pth")
    message = str(refused.value)
    assert f"{path} is damaged: its record" in message
    assert "does not match the checksum written with it" in message
    assert "Expected a training checkpoint" not in message  # it is one, damaged
    other = "best.pt" if which == "last.pt" else "last.pt"
    assert other in message  # the whole one beside it
    assert not (tmp_path / "model.pth").exists()


def test_a_weights_file_given_by_path_with_changed_bytes_is_refused(runs, tmp_path):
    """A model given by path has no known hash: bytes a disk or copy error changed (small,
    finite weights, so no other check sees them) loaded as a model of other weights, with
    an id of its own and nothing said. Its records' checksums find them."""
    from napari_samtune.core.models import export_sam_state_dict

    path = export_sam_state_dict(load_model(runs / "whole" / "checkpoints" / "last.pt").sam,
                                 tmp_path / "model.pth")  # fmt: skip
    load_model(path)  # whole, it loads
    _with_changed_weights(path, b"\x01" * 64)  # float32 2.4e-38: finite and small
    with pytest.raises(ValueError) as refused:
        load_model(path)
    assert f"{path} is damaged: its record" in str(refused.value)


def test_with_both_checkpoints_damaged_neither_is_said_to_load(runs, tmp_path):
    """best.pt and last.pt both damaged: each error said the other "beside it loads", and
    the export it advised then sent the person back to the first."""
    run = shutil.copytree(runs / "whole", tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        _with_changed_weights(run / "checkpoints" / name)
    for name in ("best.pt", "last.pt"):
        with pytest.raises(ValueError) as refused:
            export_model(run / "checkpoints" / name, tmp_path / "model.pth")
        message = str(refused.value)
        assert "is damaged: its record" in message and "beside it loads" not in message
        assert "Use the run's model.pth where it has one" in message


@pytest.mark.parametrize("epoch", ["x", -1, 1.5])
def test_an_epoch_that_is_no_count_is_refused_naming_the_file(runs, tmp_path, capsys, epoch):
    """It said "invalid literal for int() with base 10: 'x'", naming neither the file nor a
    fix."""
    path = _damaged_run(runs, tmp_path, "whole", "epoch", epoch)
    assert cli.main(_cli_resume(path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"'{path}' is a damaged training checkpoint: its 'epoch' entry is {epoch!r}" in err
