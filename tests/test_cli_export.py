"""``samtune export``: refusals that keep the training checkpoint and the registry intact."""

from __future__ import annotations

import os
import shlex

import pytest
import torch

import napari_samtune.cli as cli
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train_checkpoints import read_checkpoint, write_checkpoint


@pytest.fixture(autouse=True)
def _subcommands(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("export",))


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    return write_checkpoint(folder / "last.pt", build_sam(TINY), TINY, TrainConfig())


@pytest.mark.parametrize("spelling", ["same", "dotdot", "link"])
def test_exporting_onto_the_checkpoint_itself_is_refused(checkpoint, capsys, spelling):
    """The plain model would replace the resumable checkpoint: refused before writing."""
    before = checkpoint.read_bytes()
    output = {
        "same": checkpoint,
        "dotdot": checkpoint.parent / ".." / "checkpoints" / checkpoint.name,
        "link": checkpoint.parent.parent / "link.pt",
    }[spelling]
    if spelling == "link":
        os.symlink(checkpoint, output)
    assert cli.main(["export", str(checkpoint), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"-o {output} is the checkpoint being exported ({checkpoint})" in err
    assert "could no longer be resumed" in err
    assert f"e.g. -o {checkpoint.parent / 'last-model.pth'}" in err
    assert checkpoint.read_bytes() == before


def test_the_suggested_name_exports(checkpoint, capsys):
    suggested = checkpoint.parent / "last-model.pth"
    assert cli.main(["export", str(checkpoint), "-o", str(suggested)]) == 0
    build_sam(TINY).load_state_dict(torch.load(suggested, weights_only=True), strict=True)
    assert read_checkpoint(checkpoint)["format"]  # the checkpoint is untouched


def test_a_taken_register_name_is_refused_before_writing(tmp_path, checkpoint, capsys):
    output = tmp_path / "model.pth"
    assert cli.main(["export", str(checkpoint), "-o", str(output), "--register", "nano"]) == 2
    err = capsys.readouterr().err
    assert "--register nano is already a built-in or registered model" in err
    assert "model_name" not in err
    assert not output.exists()


def test_an_empty_register_name_is_refused_before_writing(tmp_path, checkpoint, capsys):
    """``--register "$NAME"`` with NAME unset exported, registered nothing, and exited 0."""
    output = tmp_path / "model.pth"
    assert cli.main(["export", str(checkpoint), "-o", str(output), "--register", ""]) == 2
    err = capsys.readouterr().err
    assert "--register '' is not allowed" in err
    assert not output.exists()


def _other_run(tmp_path, kind):
    """The checkpoint of another run, which an export must not replace."""
    folder = tmp_path / "other" / "checkpoints"
    return write_checkpoint(folder / f"{kind}.pt", build_sam(TINY), TINY, TrainConfig(), kind=kind)


@pytest.mark.parametrize("kind", ["last", "best"])
def test_exporting_onto_another_training_checkpoint_is_refused(tmp_path, checkpoint, capsys, kind):
    """-o runs/other/checkpoints/last.pt replaced that run's resumable checkpoint."""
    other = _other_run(tmp_path, kind)
    before = other.read_bytes()
    assert cli.main(["export", str(checkpoint), "-o", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"-o {other} is a napari-samtune training checkpoint; the plain model would " in err
    assert "its run could no longer be resumed or exported from it" in err
    assert f"e.g. -o {other.parent / f'{kind}-model.pth'}" in err
    assert other.read_bytes() == before


def test_exporting_into_the_user_models_folder_is_refused(tmp_path, checkpoint, capsys):
    """-o $SAMTUNE_MODELS_DIR/name.pt replaced a registered model's file (then DAMAGED)."""
    from napari_samtune.core.registry import user_models_dir

    assert (
        cli.main(["export", str(checkpoint), "-o", str(tmp_path / "m.pth"), "--register", "mine"])
        == 0
    )
    capsys.readouterr()
    registered = user_models_dir() / "mine.pt"
    before = registered.read_bytes()
    for output in (registered, user_models_dir() / "new.pth"):
        assert cli.main(["export", str(checkpoint), "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert f"-o {output} is in the user models folder ({user_models_dir().resolve()})" in err
        assert f"e.g. -o {output.name}, and add --register NAME to register it" in err
    assert registered.read_bytes() == before
    assert not (user_models_dir() / "new.pth").exists()


def test_a_run_folder_exports_its_best_checkpoint_else_its_last(tmp_path, checkpoint, capsys):
    """``export RUN`` said "checkpoint 'RUN' does not exist", though ``train --resume RUN``
    takes it; it exports what training would (best.pt) and says which file it was."""
    run = checkpoint.parent.parent
    output = tmp_path / "model.pth"
    assert cli.main(["export", str(run), "-o", str(output)]) == 0  # only last.pt: stopped early
    assert f"exported the tiny model of {checkpoint}: {output}" in capsys.readouterr().out
    sam = build_sam(TINY)
    for parameter in sam.parameters():
        parameter.data.fill_(0.5)
    best = write_checkpoint(checkpoint.with_name("best.pt"), sam, TINY, TrainConfig(), kind="best")
    assert cli.main(["export", str(run), "-o", str(output), "--overwrite"]) == 0
    assert f"exported the tiny model of {best}: {output}" in capsys.readouterr().out
    exported = torch.load(output, weights_only=True)
    assert torch.equal(exported["mask_decoder.iou_token.weight"], sam.mask_decoder.iou_token.weight)
    # the checkpoints folder itself: it was read as a run (checkpoints/checkpoints/last.pt)
    output.unlink()
    assert cli.main(["export", str(checkpoint.parent), "-o", str(output)]) == 0
    assert f"exported the tiny model of {best}: {output}" in capsys.readouterr().out
    best.unlink()
    output.unlink()
    assert cli.main(["export", str(checkpoint.parent), "-o", str(output)]) == 0
    assert f"exported the tiny model of {checkpoint}: {output}" in capsys.readouterr().out

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["export", str(empty), "-o", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert f"{str(empty)!r} is a folder without a training checkpoint" in err
    assert not (tmp_path / "x.pth").exists()


def test_an_output_under_a_file_is_refused_naming_the_option(tmp_path, checkpoint, capsys):
    """It was ``[Errno 17] File exists: 'ex/afile'``, after loading the checkpoint."""
    (tmp_path / "afile").write_text("keep me")
    output = tmp_path / "afile" / "x.pth"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(checkpoint), "-o", str(output)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument -o/--output: {str(output)!r} cannot be made: " in err
    assert f"{str(tmp_path / 'afile')!r} is a file; give a file in a folder you can write to" in err
    assert (tmp_path / "afile").read_text() == "keep me"


def test_an_unwritable_models_folder_stops_only_an_export_that_registers(
    tmp_path, checkpoint, capsys, monkeypatch
):
    """The models-folder check, meant for registration, refused every export."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(blocker / "models"))
    output = tmp_path / "model.pth"
    assert cli.main(["export", str(checkpoint), "-o", str(output), "--register", "mine"]) == 2
    assert "the user models folder" in capsys.readouterr().err and not output.exists()
    assert cli.main(["export", str(checkpoint), "-o", str(output)]) == 0
    build_sam(TINY).load_state_dict(torch.load(output, weights_only=True), strict=True)


def test_a_damaged_best_checkpoint_names_the_last_one_to_export_instead(
    tmp_path, checkpoint, capsys
):
    """``export RUN`` with a truncated best.pt named only the damage, not the whole last.pt;
    then it named the last.pt twice, in two wordings; a best.pt replaced by another
    program's PyTorch file named it not at all."""
    best = checkpoint.with_name("best.pt")
    output = tmp_path / "model.pth"
    for damage in (checkpoint.read_bytes()[:500], None):
        if damage is None:
            torch.save({"format": "another program's"}, best)
        else:
            best.write_bytes(damage)
        assert cli.main(["export", str(checkpoint.parent.parent), "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert str(best) in err  # the damaged file is named
        # with the -o given (it said -o model.pth, and how to train further)
        assert err.count(f"samtune export {checkpoint} -o {output} exports its weights") == 1
        assert err.count(str(checkpoint)) == 2  # once as the file, once in the command
        assert "finetune" not in err
        assert not output.exists()
    assert cli.main(["export", str(checkpoint), "-o", str(output)]) == 0  # as it says


@pytest.mark.parametrize("name", ["cells.tif", "prompts.csv", "notes.pth"])
def test_an_existing_file_that_is_no_model_is_not_replaced(tmp_path, checkpoint, capsys, name):
    """``-o cells.tif`` (a typo, a tab completion) replaced the image with the model, silently."""
    output = tmp_path / name
    output.write_bytes(b"II*\x00 the user's pixels")
    assert cli.main(["export", str(checkpoint), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"-o {output} exists and is not a PyTorch model file; the model would replace it" in err
    assert output.read_bytes() == b"II*\x00 the user's pixels"


def test_a_model_file_is_replaced_only_with_overwrite(tmp_path, checkpoint, capsys):
    """Another run's model.pth was replaced without a word."""
    output = tmp_path / "model.pth"
    torch.save({"old": torch.zeros(1)}, output)
    before = output.read_bytes()
    assert cli.main(["export", str(checkpoint), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"-o {output} exists already (a model file); pass --overwrite to replace it" in err
    assert output.read_bytes() == before
    assert cli.main(["export", str(checkpoint), "-o", str(output), "--overwrite"]) == 0
    build_sam(TINY).load_state_dict(torch.load(output, weights_only=True), strict=True)


def test_a_checkpoint_whose_base_model_is_gone_says_to_put_it_back(tmp_path, capsys, monkeypatch):
    """A frozen-encoder run's checkpoints hold only the trained weights: its base model
    moved away, export named it an unknown model, listed every model registered, and
    suggested exporting last.pt, which needs the base model just as much."""
    config = TrainConfig(model=str(tmp_path / "base.pth"), checkpoint_trainable_only=True)
    folder = tmp_path / "run" / "checkpoints"
    for name in ("best.pt", "last.pt"):
        write_checkpoint(folder / name, build_sam(TINY), TINY, config)
    torch.save(build_sam(TINY).state_dict(), tmp_path / "run" / "model.pth")
    assert cli.main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "e.pth")]) == 2
    err = capsys.readouterr().err
    assert "holds only the weights its run trained, which complete its base model" in err
    assert f"weights file '{tmp_path / 'base.pth'}' does not exist" in err
    assert "put the base model back as the run had it" in err
    assert f"{tmp_path / 'run' / 'model.pth'}, is whole and needs none" in err
    assert "exported instead" not in err and not (tmp_path / "e.pth").exists()
    monkeypatch.chdir(folder)  # the checkpoint named in its own folder: the same advice
    assert cli.main(["export", "last.pt", "-o", str(tmp_path / "e.pth")]) == 2
    assert f"{tmp_path / 'run' / 'model.pth'}, is whole and needs none" in capsys.readouterr().err


def test_a_register_name_taken_during_the_export_gives_the_command_to_register_it(
    tmp_path, checkpoint, capsys, monkeypatch
):
    """Another registration of the name, finishing while the model was exported, was told
    to "pass overwrite=True", an argument of the Python function."""
    from napari_samtune.core import user_models

    real = user_models.register_user_model

    def taken_meanwhile(path, name, *args, **kwargs):
        real(path, name, *args, **kwargs)  # the other registration, first
        return real(path, name, *args, **kwargs)

    monkeypatch.setattr(user_models, "register_user_model", taken_meanwhile)
    output = tmp_path / "model.pth"
    assert cli.main(["export", str(checkpoint), "-o", str(output), "--register", "dup"]) == 2
    err = capsys.readouterr().err
    assert "overwrite=True" not in err
    assert f"--register dup was taken by another model while {checkpoint} was exported" in err
    command = err.split("with samtune ")[1].strip().replace("NAME", "mine")
    monkeypatch.setattr(user_models, "register_user_model", real)
    assert cli.main(shlex.split(command)) == 0
    assert "registered as 'mine'" in capsys.readouterr().out


@pytest.mark.parametrize("exported", ["last.pt", "the run's whole best.pt"])
def test_exporting_over_the_base_model_its_lora_checkpoint_completes_is_refused(
    tmp_path, capsys, exported
):
    """``-o base.pth --overwrite``, the finetuned model in place of the model it came from,
    replaced the base that the run's checkpoints of only its trained weights complete, its
    LoRA adapters merged into the encoder: the run could no longer be exported or resumed,
    and the fix named (put the base back as it was) had no copy left. Its best.pt whole
    (``--whole-checkpoints`` at first) passed the check, its last.pt then broken."""
    from napari_samtune.core.lora import apply_lora

    base = tmp_path / "base.pth"
    torch.save(build_sam(TINY).state_dict(), base)
    lora = TrainConfig(model=str(base), checkpoint_trainable_only=True, lora_rank=2)
    sam = build_sam(TINY)
    apply_lora(sam.image_encoder, 2)
    folder = tmp_path / "run" / "checkpoints"
    last = write_checkpoint(folder / "last.pt", sam, TINY, lora)
    if exported != "last.pt":
        whole = TrainConfig(model=str(base), lora_rank=2, checkpoint_trainable_only=False)
        write_checkpoint(folder / "best.pt", sam, TINY, whole)
    given = last if exported == "last.pt" else tmp_path / "run"
    before = base.read_bytes()
    assert cli.main(["export", str(given), "-o", str(base), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"-o {base} is the file of the base model that {last} completes" in err
    assert base.read_bytes() == before
    assert cli.main(["export", str(given), "-o", str(tmp_path / "elsewhere.pth")]) == 0


def test_a_base_model_that_a_run_without_lora_exports_as_it_was_may_be_replaced(tmp_path):
    """Without LoRA the parts a checkpoint takes from its base are exported as they are:
    the run goes on from the model written over its base."""
    base = tmp_path / "base.pth"
    torch.save(build_sam(TINY).state_dict(), base)
    config = TrainConfig(model=str(base), checkpoint_trainable_only=True)
    last = write_checkpoint(
        tmp_path / "run" / "checkpoints" / "last.pt", build_sam(TINY), TINY, config
    )
    assert cli.main(["export", str(last), "-o", str(base), "--overwrite"]) == 0
    assert cli.main(["export", str(last), "-o", str(tmp_path / "again.pth")]) == 0


def test_the_folder_suggested_for_a_model_is_outside_the_user_models_folder(
    tmp_path, checkpoint, capsys, monkeypatch
):
    """Run from inside the user models folder, the suggestion was the path just refused."""
    from napari_samtune.core.registry import user_models_dir

    user_models_dir().mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(user_models_dir())
    assert cli.main(["export", str(checkpoint), "-o", "y.pth"]) == 2
    err = capsys.readouterr().err
    assert f"e.g. -o {user_models_dir().resolve().parent / 'y.pth'}, and add --register" in err


@pytest.mark.parametrize("training", [False, True])
def test_exporting_a_run_deletes_what_a_killed_run_left_half_written(
    tmp_path, checkpoint, training
):
    """A run killed while writing last.pt left a hidden temporary file as large as it;
    only a run resumed in the folder deleted it, and export (the advice after a kill) left
    it for good. Not while a run trains there, nor a young model.pth's: another export of
    the run may be writing it."""
    from napari_samtune.core.run_lock import training_lock

    run = checkpoint.parent.parent
    left, young = checkpoint.parent / ".last.pt.k1ll3d_x.tmp", run / ".model.pth.wr1t1ng_.tmp"
    out = ["export", str(run), "-o", str(tmp_path / "model.pth")]

    def leave() -> None:
        left.write_bytes(b"half a checkpoint")  # a run's: written under the run's lock
        young.write_bytes(b"a model being written")  # an export's: without it

    if training:
        with training_lock(run):  # a run trains in it now, writing last.pt
            leave()
            assert cli.main(out) == 0
    else:
        leave()
        assert cli.main(out) == 0
    assert left.exists() is training and young.exists()
    assert (tmp_path / "model.pth").is_file()


def test_a_run_folder_it_may_not_tidy_leaves_the_export_and_its_registration_whole(
    tmp_path, checkpoint, monkeypatch, capsys
):
    """A run folder on a read-only disk (an archive), with a killed run's file in it: the
    export was written, then the command failed and registered nothing."""
    from napari_samtune.core import run_lock

    def not_allowed(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(run_lock, "remove_unfinished_writes", not_allowed)
    output = tmp_path / "model.pth"
    argv = ["export", str(checkpoint.parent.parent), "-o", str(output), "--register", "kept"]
    assert cli.main(argv) == 0
    assert output.is_file() and "registered as 'kept'" in capsys.readouterr().out


def test_exporting_onto_a_pipe_is_refused_and_leaves_it(tmp_path, checkpoint, capsys):
    """-o a device or pipe (the export's rename put a 7 MB file in place of /dev/null, run
    as root) was replaced by the model, --overwrite or not: ``is_file`` is False for them,
    so no guard looked."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert cli.main(["export", str(checkpoint), "-o", str(pipe), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{pipe} is not a file but a device, pipe or socket" in err
    assert pipe.is_fifo() and not list(tmp_path.glob(".pipe.*"))
