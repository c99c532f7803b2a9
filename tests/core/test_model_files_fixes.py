"""Model files between runs and versions: checkpoints of a newer format, names that look
like weights files, and checkpoints holding only the trained weights whose base model was
registered anew."""

from __future__ import annotations

import re
import shlex

import pytest
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.checkpoint_models import BaseModelUnavailable, export_model
from napari_samtune.core.synthetic import make_dataset, make_image
from napari_samtune.core.train import train
from napari_samtune.core.train_checkpoints import read_checkpoint
from napari_samtune.core.train_export import check_model_name
from napari_samtune.core.user_models import register_user_model

DATA = make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)


def test_export_and_resume_refuse_a_checkpoint_of_a_newer_format(tmp_path, short_tiny_config):
    """load_model refused it, but export wrote it out and a resumed run rewrote it as
    format 1, without the newer keys."""
    train(short_tiny_config(), *DATA, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["format_version"] = 2
    torch.save(checkpoint, last)
    with pytest.raises(ValueError, match="format_version 2.*update napari-samtune"):
        read_checkpoint(last)
    with pytest.raises(ValueError, match="format_version 2"):
        export_model(last, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
    config = short_tiny_config(epochs=2)
    with pytest.raises(ValueError, match="format_version 2"):
        train(config, *DATA, tmp_path / "run", resume_from=tmp_path / "run")
    assert torch.load(last, weights_only=True)["format_version"] == 2  # left as it was


@pytest.mark.parametrize("name", ["cells.pth", "cells.PT", "nuclei.ckpt", "x.safetensors"])
def test_a_new_model_name_ending_like_a_weights_file_is_refused(tiny_checkpoint, name):
    """``--model cells.pth`` loaded the registered model, not the newer file of that name."""
    with pytest.raises(ValueError, match="ends like a weights file"):
        register_user_model(tiny_checkpoint, name, TINY)
    with pytest.raises(ValueError, match="model_name=.* ends like a weights file"):
        check_model_name(name)
    assert check_model_name("cells.v2") == "cells.v2"  # a dot elsewhere is fine


def _save(sam, path):
    torch.save(sam.state_dict(), path)
    return path


def test_a_frozen_encoder_run_survives_its_base_registered_anew_with_the_same_encoder(
    tmp_path, short_tiny_config, tiny_sam
):
    """A continued run of the base model (its decoder trained on) made this run's checkpoints,
    which take only the frozen encoder from it, unusable: exact completion was refused."""
    register_user_model(_save(tiny_sam, tmp_path / "base.pth"), "base", TINY)
    config = short_tiny_config(
        model="base", freeze=("image_encoder",), checkpoint_trainable_only=True
    )
    run = tmp_path / "run"
    train(config, *DATA, run)
    before, _ = export_model(run, tmp_path / "before.pth")
    with torch.no_grad():  # the base's decoder trained on; its encoder as it was
        for parameter in tiny_sam.mask_decoder.parameters():
            parameter.add_(0.1)
    register_user_model(_save(tiny_sam, tmp_path / "base2.pth"), "base", TINY, overwrite=True)
    after, _ = export_model(run, tmp_path / "after.pth")
    first, second = torch.load(before, weights_only=True), torch.load(after, weights_only=True)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    torch.manual_seed(5)  # now the encoder is another one: completing it would be wrong
    register_user_model(
        _save(build_sam(TINY), tmp_path / "base3.pth"), "base", TINY, overwrite=True
    )
    with pytest.raises(BaseModelUnavailable, match="parts this checkpoint takes.*model.pth"):
        export_model(run, tmp_path / "wrong.pth")


def test_a_base_registered_anew_with_another_encoder_is_refused_for_a_frozen_encoder_run(
    tmp_path, short_tiny_config, tiny_sam
):
    """The digest was taken before the encoder was frozen, so it held the buffers only: a
    base re-registered with another encoder (same buffers) completed the run's checkpoint
    with it, and export shipped a decoder trained on other embeddings."""
    register_user_model(_save(tiny_sam, tmp_path / "base.pth"), "base", TINY)
    config = short_tiny_config(
        model="base", freeze=("image_encoder",), checkpoint_trainable_only=True
    )
    run = tmp_path / "run"
    train(config, *DATA, run)
    with torch.no_grad():
        for parameter in tiny_sam.image_encoder.parameters():
            parameter.mul_(1.5)  # another encoder; every buffer as it was
    register_user_model(_save(tiny_sam, tmp_path / "base2.pth"), "base", TINY, overwrite=True)
    with pytest.raises(BaseModelUnavailable, match="parts this checkpoint takes"):
        export_model(run, tmp_path / "wrong.pth")
    assert not (tmp_path / "wrong.pth").exists()


def test_a_checkpoint_with_the_digest_of_2026_12_05_is_held_to_its_base_model_s_id(
    tmp_path, short_tiny_config, tiny_sam
):
    """That digest left out every parameter: such checkpoints complete on the base model
    while it has the weights they were trained from, and are refused once it does not."""
    from napari_samtune.core.train_checkpoints import _digest_without

    register_user_model(_save(tiny_sam, tmp_path / "base.pth"), "base", TINY)
    config = short_tiny_config(
        model="base", freeze=("image_encoder",), checkpoint_trainable_only=True
    )
    run = tmp_path / "run"
    train(config, *DATA, run)
    last = run / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    everything = {name for name, _ in tiny_sam.named_parameters()}
    checkpoint["base_parts_digest"] = _digest_without(tiny_sam, everything)
    torch.save(checkpoint, last)
    export_model(last, tmp_path / "ok.pth")
    with torch.no_grad():
        for parameter in tiny_sam.mask_decoder.parameters():
            parameter.add_(0.1)
    register_user_model(_save(tiny_sam, tmp_path / "base2.pth"), "base", TINY, overwrite=True)
    with pytest.raises(BaseModelUnavailable, match="parts this checkpoint takes"):
        export_model(last, tmp_path / "not.pth")


def test_a_run_of_trained_weights_only_may_go_on_writing_whole_checkpoints(
    tmp_path, short_tiny_config, tiny_sam
):
    """--whole-checkpoints on resume was refused as "a different model setup", so a run could
    not be made to outlive its base model."""
    register_user_model(_save(tiny_sam, tmp_path / "base.pth"), "base", TINY)
    config = short_tiny_config(
        model="base", freeze=("image_encoder",), checkpoint_trainable_only=True
    )
    run = tmp_path / "run"
    train(config, *DATA, run)
    assert not read_checkpoint(run / "checkpoints" / "last.pt")["model_state_complete"]
    whole = short_tiny_config(
        model="base", freeze=("image_encoder",), checkpoint_trainable_only=False, epochs=2
    )
    train(whole, *DATA, tmp_path / "more", resume_from=run)
    last = tmp_path / "more" / "checkpoints" / "last.pt"
    assert read_checkpoint(last)["model_state_complete"]
    torch.manual_seed(5)  # the base gone as it was: the whole checkpoint still exports
    register_user_model(
        _save(build_sam(TINY), tmp_path / "other.pth"), "base", TINY, overwrite=True
    )
    export_model(last, tmp_path / "exported.pth")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_run_that_held_out_part_of_its_only_image_keeps_that_part_when_continued(
    tmp_path, short_tiny_config, seed
):
    """Continued with a second image, it validated on the whole of the first one (its held-out
    part had the same name), rows the first session had trained on, and kept the best epoch
    scored on the part."""
    from napari_samtune.core.data import ImageLabelPair

    a = ImageLabelPair(*make_image((128, 128), seed=0), name="A")
    b = ImageLabelPair(*make_image((128, 128), seed=1), name="B")
    run = tmp_path / "run"
    train(short_tiny_config(seed=seed, val_fraction=0.1), [a], out_dir=run)
    train(
        short_tiny_config(seed=seed, val_fraction=0.1, epochs=2),
        [a, b],
        out_dir=run,
        resume_from=run,
    )
    summary = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["data_summary"]
    assert sorted(summary["train_images"]) == ["A", "B"]  # A's top part trains, as before
    assert list(summary["val_images"]) == ["A"]  # its bottom rows alone: the same part


def _run_killed_before_its_summary(tmp_path, short_tiny_config):
    """A finished run whose summary.json is gone: a kill after its model was exported and
    registered, before the summary named it."""
    run = tmp_path / "run"
    finished = train(short_tiny_config(), *DATA, run, model_name="mine")
    assert finished.registered_name == "mine"
    (run / "summary.json").unlink()
    return run


def test_a_run_killed_after_registering_says_so_and_continues_its_own_model(
    tmp_path, short_tiny_config
):
    """Its resume said the model was neither exported nor registered, offering a command
    that failed ("model.pth exists"), and a continued run registered a second model."""
    from napari_samtune.core.train_checkpoints import unexported_note
    from napari_samtune.core.user_models import list_user_models

    run = _run_killed_before_its_summary(tmp_path, short_tiny_config)
    note = unexported_note(run / "checkpoints" / "last.pt")
    assert "registering it as 'mine'" in note and "there to use" in note
    continued = train(short_tiny_config(epochs=2), *DATA, run, resume_from=run)
    assert continued.registered_name == "mine"
    assert [spec.name for spec in list_user_models()] == ["mine"]


def test_a_run_registered_before_its_summary_failed_is_not_called_unregistered(
    tmp_path, short_tiny_config
):
    """summary.json could not be written (a full disk) after the model was registered:
    ``samtune train`` said "not registered" and advised registering a copy (run-2)."""
    from napari_samtune.cli.train_report import aborted_note

    run = _run_killed_before_its_summary(tmp_path, short_tiny_config)
    note = aborted_note(run)
    assert "exported to" in note and "registered as 'mine'" in note
    assert "--register" not in note and "not registered" not in note


def test_a_run_exported_but_not_registered_offers_a_command_that_works(tmp_path, short_tiny_config):
    from napari_samtune.cli import main
    from napari_samtune.cli.train_report import aborted_note
    from napari_samtune.core.train_checkpoints import unexported_note
    from napari_samtune.core.user_model_removal import remove_user_model
    from napari_samtune.core.user_models import list_user_models

    run = _run_killed_before_its_summary(tmp_path, short_tiny_config)
    remove_user_model("mine")  # its registration failed (a full models folder)
    assert (run / "model.pth").is_file()
    for note in (unexported_note(run / "checkpoints" / "last.pt"), aborted_note(run)):
        assert "--overwrite --register" in note
    assert "exported to" in aborted_note(run) and "not registered" in aborted_note(run)
    command = re.search(r"samtune export (.*?) registers", aborted_note(run)).group(1)
    assert main(["export", *shlex.split(command)]) == 0  # as told: it works
    assert [spec.name for spec in list_user_models()] == ["run"]


def _export_same(run, tmp_path, before) -> None:
    after, _ = export_model(run, tmp_path / f"{run.name}-after.pth")
    first, second = torch.load(before, weights_only=True), torch.load(after, weights_only=True)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


def test_frozen_runs_from_nano_complete_after_the_package_ships_other_nano_weights(
    tmp_path, monkeypatch, short_tiny_config
):
    """A frozen-encoder run's checkpoints hold only its trained weights and take the rest
    from nano. When the package replaced nano's weights, they could not be completed,
    exported or resumed, and the fix the error named could not be carried out (the file
    is the package's; 'nano' cannot be registered): the earlier weights are kept. A run
    given the packaged file's path is completed as well."""
    from dataclasses import replace

    from napari_samtune.core import registry
    from napari_samtune.core.architectures import NANO
    from napari_samtune.core.checkpoint_fields import DamagedCheckpoint
    from napari_samtune.core.download import file_digest

    nano = registry.builtin_model("nano")
    shipped = tmp_path / "weights"
    shipped.mkdir()
    (shipped / "nano.pth").write_bytes(nano.local_path().read_bytes())
    monkeypatch.setattr(registry, "packaged_weights_dir", lambda: shipped)
    runs, before = {}, {}
    for name, model in (("by-name", "nano"), ("by-path", str(shipped / "nano.pth"))):
        config = short_tiny_config(
            model=model, freeze=("image_encoder",), checkpoint_trainable_only=True
        )
        runs[name] = tmp_path / name
        train(config, *DATA, runs[name])
        before[name], _ = export_model(runs[name], tmp_path / f"{name}-before.pth")
    # the next version of the package: other nano weights, the ones the runs began on kept
    kept = shipped / "nano-earlier.pth"
    (shipped / "nano.pth").rename(kept)
    torch.manual_seed(3)
    _save(build_sam(NANO), shipped / "nano.pth")
    newer = replace(nano, file_hash=f"sha256:{file_digest(shipped / 'nano.pth', 'sha256')}")
    others = [spec for spec in registry.BUILTIN_MODELS if spec.name != "nano"]
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (*others, newer))
    monkeypatch.setattr(registry, "EARLIER_NANO", ())
    for run in runs.values():
        with pytest.raises(BaseModelUnavailable, match="now has different weights"):
            export_model(run, tmp_path / "lost.pth")
    monkeypatch.setattr(registry, "EARLIER_NANO", ((kept.name, nano.file_hash),))
    for name, run in runs.items():
        _export_same(run, tmp_path, before[name])
    resumed = short_tiny_config(
        model="nano", freeze=("image_encoder",), checkpoint_trainable_only=True, epochs=2
    )
    train(resumed, *DATA, runs["by-name"], resume_from=runs["by-name"])
    last = runs["by-name"] / "checkpoints" / "last.pt"
    assert read_checkpoint(last)["epoch"] == 2
    export_model(last, tmp_path / "resumed.pth")  # and it completes again

    checkpoint = torch.load(last, weights_only=True)
    checkpoint["base_parts_digest"] = "0" * 64  # changed: damaged, not "put nano back"
    torch.save(checkpoint, tmp_path / "changed.pt")
    with pytest.raises(DamagedCheckpoint, match="as the package shipped it when the run began"):
        export_model(tmp_path / "changed.pt", tmp_path / "changed.pth")
    kept.write_bytes(kept.read_bytes()[:-10] + b"0123456789")  # damaged file: refused
    with pytest.raises(BaseModelUnavailable, match="kept as .*nano-earlier.pth.*reinstall"):
        export_model(runs["by-name"], tmp_path / "damaged.pth")
