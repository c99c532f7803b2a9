"""``samtune train``, ``samtune export`` and ``samtune presets``."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_samtune.cli as cli
from napari_samtune.cli.train_config import OVERRIDES, overrides_from
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.presets import PRESETS, TrainConfig
from napari_samtune.core.synthetic import make_dataset


@pytest.fixture(autouse=True)
def _subcommands(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("train", "export", "presets"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest single-threaded
    yield
    torch.set_num_threads(before)


@pytest.fixture
def folders(tmp_path):
    for i, (image, labels) in enumerate(make_dataset(3, shape=(80, 96), seed=3)):
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "lab").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "img" / f"s{i}.tif", image)
        tifffile.imwrite(tmp_path / "lab" / f"s{i}_mask.tif", labels)
    return str(tmp_path / "img"), str(tmp_path / "lab")


FAST = [
    "--lr", "3e-3", "--min-samples", "3", "--iterative-prompts", "1",
    "--mixed-precision", "no", "--n-objects", "2", "--no-progress",
]  # fmt: skip


def _tiny_run(folders, out, epochs: int) -> list[str]:
    """``samtune train`` of the tiny random model on ``folders`` into ``out``, quickly."""
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    return [*argv, "--labels", labels, "--epochs", str(epochs), *FAST, "--out", str(out)]


def test_a_resume_reads_and_checks_the_checkpoint_whole_once(tmp_path, folders, monkeypatch):
    """The command line's look at a resumed checkpoint's settings maps it; the trainer's read
    is the one whole read and checksum pass (a GB checkpoint was read and summed twice)."""
    import zipfile

    out = tmp_path / "run"
    assert cli.main(_tiny_run(folders, out, 1)) == 0
    last = out / "checkpoints" / "last.pt"
    whole_reads, checked = [], []
    load, testzip = torch.load, zipfile.ZipFile.testzip

    def counted_load(path, *args, **kwargs):
        if Path(path) == last and not kwargs.get("mmap"):
            whole_reads.append(path)
        return load(path, *args, **kwargs)

    def counted_testzip(archive):
        checked.append(archive.filename)
        return testzip(archive)

    monkeypatch.setattr(torch, "load", counted_load)
    monkeypatch.setattr(zipfile.ZipFile, "testzip", counted_testzip)
    images, labels = folders
    resume = ["train", "--resume", str(out), "--epochs", "2", "--images", images]
    assert cli.main([*resume, "--labels", labels, "--no-progress"]) == 0
    assert len(whole_reads) == 1 and [Path(f) for f in checked].count(last) == 1

    # damage found by the checksum still stops the resume, before an epoch is trained
    data = bytearray(last.read_bytes())
    with zipfile.ZipFile(last) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
        header = largest.header_offset  # the local header's name and extra field lengths
        start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little")
        start += int.from_bytes(data[header + 28 : header + 30], "little")
    data[start : start + 16] = (
        b"\x7f" * 16 if data[start : start + 16] != b"\x7f" * 16 else bytes(16)
    )
    last.write_bytes(bytes(data))
    resume[resume.index("2")] = "3"
    assert cli.main([*resume, "--labels", labels, "--no-progress"]) == 2
    assert json.loads((out / "summary.json").read_text())["epochs_done"] == 2


def test_presets_prints_the_table_and_the_automatic_choice(capsys, monkeypatch):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(p.key in out for p in PRESETS)
    assert "all but image_encoder" in out and "vit_h" in out
    assert "--preset auto chooses" in out and "RAM" in out
    from napari_samtune.core import presets  # a 24 GB machine: cpu-16gb, without vit_b

    machine = presets.MachineResources(None, 23.5, 2, None)
    monkeypatch.setattr(presets, "measure_machine", lambda gpu_index=None: machine)
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "--preset auto chooses 'cpu-16gb'" in out
    assert "  for vit_b: cpu-8gb's setting (cpu-16gb has none for it)" in out
    assert "for vit_t" not in out and "for vit_h" not in out


def test_train_export_and_resume_from_the_command_line(tmp_path, folders, capsys):
    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--out", str(out), "--epochs", "2", "--freeze", "image_encoder"]
    assert cli.main([*argv, "--val-images", images, "--val-labels", labels, *FAST]) == 0
    printed, err = capsys.readouterr()
    assert "preset CPU, 16 GB, 8 cores (cpu-16gb)" in printed and "effective config" in printed
    assert "warning: 3 of 3 validation pair(s) are also training pairs" in err
    assert f"exported model: {out / 'model.pth'}" in printed
    assert "time to best epoch" in printed and "registered model: run" in printed
    assert re.search(r"^before training: val_iou_box=\d\.\d{4} .*val_iou=\d", printed, re.M)
    assert re.search(r"^best val_iou \d\.\d{4} at epoch \d \(\d\.\d{4} before", printed, re.M)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["epochs"], saved["freeze"], saved["preset"]) == (2, ["image_encoder"], "cpu-16gb")
    assert (saved["n_objects_per_batch"], saved["learning_rate"]) == (2, 3e-3)
    build_sam(TINY).load_state_dict(torch.load(out / "model.pth", weights_only=True), strict=True)

    resume = ["train", "--resume", str(out / "checkpoints" / "last.pt"), "--epochs", "3"]
    resume += ["--images", images, "--labels", labels, "--out", str(tmp_path / "more")]
    assert cli.main([*resume, "--no-progress"]) == 0
    summary = json.loads((tmp_path / "more" / "summary.json").read_text())
    assert summary["epochs_done"] == 3

    # mistakes name the command-line options that fix them
    assert cli.main([*argv, *FAST]) == 2  # the same --out again
    err = capsys.readouterr().err
    again = f"samtune train --resume {out} --images {images} --labels {labels} --epochs N"
    assert f"--out {out} already holds a training run; continue it with: {again} (" in err
    exported = tmp_path / "exported"  # a model exported there: kept, the run refused
    exported.mkdir()
    (exported / "model.pth").write_bytes((out / "model.pth").read_bytes())
    assert cli.main([*argv[:-2], "--out", str(exported), "--epochs", "1", *FAST]) == 2
    assert f"--out {exported} already holds model.pth, which a new run would replace" in (
        capsys.readouterr().err
    )
    assert (exported / "model.pth").read_bytes() == (out / "model.pth").read_bytes()
    assert cli.main([*resume[:-2], "--out", str(out), "--epochs", "2", "--no-progress"]) == 2
    assert "has done 2 epoch(s) and the run's epochs are 2: nothing is left" in (
        capsys.readouterr().err
    )
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    checkpoint["config"]["device"] = "cuda:7"  # a run made on a GPU machine
    torch.save(checkpoint, tmp_path / "from_gpu.pt")
    elsewhere = ["train", "--resume", str(tmp_path / "from_gpu.pt"), "--epochs", "3"]
    elsewhere += ["--images", images, "--labels", labels, "--out", str(tmp_path / "here")]
    assert cli.main([*elsewhere, "--no-progress"]) == 2
    assert "was trained on cuda:7, which this machine does not offer; pass --device auto" in (
        capsys.readouterr().err
    )
    assert cli.main([*elsewhere, "--no-progress", "--device", "cpu"]) == 0

    exported = tmp_path / "exported.pth"
    best = str(out / "checkpoints" / "best.pt")
    assert cli.main(["export", best, "-o", str(exported), "--register", "mine"]) == 0
    assert "registered as 'mine'" in capsys.readouterr().out
    state = torch.load(exported, weights_only=True)
    build_sam(TINY).load_state_dict(state, strict=True)
    from napari_samtune.core.models import load_model

    assert torch.equal(
        load_model("mine").sam.state_dict()["mask_decoder.iou_token.weight"],
        state["mask_decoder.iou_token.weight"],
    )
    # the command --out's refusal gave works as said (it named last.pt alone: refused for
    # lacking --images, and with the options given then for its --model)
    assert cli.main([*shlex.split(again.replace(" N", " 3"))[1:], "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs_done"] == 3


def test_a_resume_may_name_the_model_its_run_registered(tmp_path, folders, capsys):
    """``--resume RUN --name run`` was refused: "--name run is already a built-in or
    registered model", though it is the run's own model, which a resume updates."""
    from napari_samtune.core.model_lookup import list_models
    from napari_samtune.core.models import load_model

    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--model", "random:tiny", "--images", images, "--labels", labels]
    argv += ["--epochs", "1", "--freeze", "image_encoder", *FAST]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert "registered model: run" in capsys.readouterr().out
    assert cli.main([*argv, "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    resume = ["train", "--resume", str(out), "--out", str(out), "--images", images]
    resume += ["--labels", labels, "--epochs", "2", "--no-progress"]
    assert cli.main([*resume, "--name", "other"]) == 2  # another run's model: still refused
    assert "--name other is already a built-in or registered model" in capsys.readouterr().err
    assert cli.main([*resume, "--name", "run"]) == 0, capsys.readouterr().err
    assert "registered model: run" in capsys.readouterr().out
    assert sorted(m.name for m in list_models() if m.source == "user") == ["other", "run"]
    exported = torch.load(out / "model.pth", weights_only=True)["mask_decoder.iou_token.weight"]
    assert torch.equal(load_model("run").sam.mask_decoder.iou_token.weight, exported)


def test_a_resume_without_out_continues_in_the_runs_own_folder(
    tmp_path, folders, capsys, monkeypatch
):
    """``--resume RUN`` without ``--out`` was refused ("the following arguments are
    required: --out"), though the run's folder is known; it now continues the run there (the
    README said --out was optional). A checkpoint outside a run's folder still needs --out."""
    images, labels = folders
    out = tmp_path / "run"
    assert cli.main(_tiny_run(folders, out, 1)) == 0
    monkeypatch.chdir(tmp_path)  # nothing may be written in the current folder instead
    before = sorted(tmp_path.iterdir())
    resume = ["train", "--images", images, "--labels", labels, "--no-progress", "--resume"]
    assert cli.main([*resume, str(out / "checkpoints"), "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"settings of {out / 'checkpoints' / 'last.pt'}" in printed
    assert f"exported model: {out / 'model.pth'}" in printed
    assert "registered model: run" in printed  # the run's own, updated
    assert json.loads((out / "summary.json").read_text())["epochs_done"] == 2
    assert cli.main([*resume, str(out / "checkpoints" / "last.pt"), "--epochs", "3"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs_done"] == 3
    assert sorted(tmp_path.iterdir()) == before
    capsys.readouterr()

    copied = tmp_path / "copied.pt"
    copied.write_bytes((out / "checkpoints" / "last.pt").read_bytes())
    assert cli.main([*resume, str(copied), "--epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert f"--resume {copied} is not in a run's checkpoints folder" in err
    assert "give --out DIR for the continued run" in err
    assert cli.main([*resume, str(tmp_path / "missing.pt"), "--epochs", "4"]) == 2
    assert "missing.pt' does not exist" in capsys.readouterr().err
    assert cli.main(_tiny_run(folders, out, 1)[:-2]) == 2  # no --out, no --resume
    assert "--out is required" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == sorted([*before, copied])


def test_a_resume_from_a_file_that_is_no_checkpoint_says_so_not_to_add_out(
    tmp_path, folders, capsys
):
    """``--resume RUN/model.pth`` (the exported model that training prints) or an image was
    answered "give --out DIR", and with --out then "not a napari-samtune checkpoint"."""
    images, labels = folders
    out = tmp_path / "run"
    assert cli.main(_tiny_run(folders, out, 1)) == 0
    capsys.readouterr()
    resume = ["train", "--images", images, "--labels", labels, "--no-progress", "--resume"]
    assert cli.main([*resume, str(out / "model.pth"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out / 'model.pth'} is the run's exported model" in err
    assert f"to continue the run give its folder: --resume {out}" in err
    assert "--out" not in err
    image = Path(images) / "s0.tif"
    assert cli.main([*resume, str(image), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "s0.tif is not a PyTorch weights file" in err and "--out" not in err


def test_an_aborted_run_says_what_is_saved_and_resumes_from_its_folder(
    tmp_path, folders, capsys, monkeypatch
):
    """Ctrl+C twice (an abort) after the first epoch: the checkpoints stay, the message
    names them and the command that continues the run, and that command (``--resume``
    with the run's folder, as the napari panel's Continue… takes it) finishes the run."""
    import signal

    from napari_samtune.core import train

    real = train.iter_train

    def ctrl_c_twice_after_the_first_epoch(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, train.EpochDone):
                signal.raise_signal(signal.SIGINT)  # stop after this step ...
                signal.raise_signal(signal.SIGINT)  # ... no: abort

    monkeypatch.setattr(train, "iter_train", ctrl_c_twice_after_the_first_epoch)
    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "3", "--early-stopping", "0", *FAST]
    assert cli.main([*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    assert last.is_file() and best.is_file() and not (out / "model.pth").exists()
    stopping, interrupted = err.strip().splitlines()  # both on stderr, in this order
    assert stopping == "stopping after this step (Ctrl+C again to abort) ..."
    assert interrupted.startswith("samtune train: interrupted; the run did not finish")
    assert f"its checkpoints are on disk: {last}, {best}" in err
    data = f"--images {images} --labels {labels}"  # as given, to continue it as it ran
    assert f"samtune train --resume {out} --out {out} --epochs 3 {data}" in err
    assert f"samtune export {best} -o model.pth" in err

    monkeypatch.setattr(train, "iter_train", real)
    resume = ["train", "--resume", str(out), "--out", str(out), "--images", images]
    assert cli.main([*resume, "--labels", labels, "--no-progress"]) == 0
    assert f"settings of {last}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_done"] == 3
    assert (out / "model.pth").is_file()


def test_a_crashed_run_says_what_is_saved(tmp_path, folders, capsys, monkeypatch):
    """An error after the first epoch (torch's out of memory, a full disk): its traceback,
    and before it, as for an abort, the checkpoints on disk and how to continue."""
    import torch

    from napari_samtune.core import train

    real = train.iter_train

    def out_of_memory_after_the_first_epoch(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, train.EpochDone):
                raise torch.OutOfMemoryError("CPU out of memory")

    monkeypatch.setattr(train, "iter_train", out_of_memory_after_the_first_epoch)
    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "3", "--early-stopping", "0", *FAST]
    with pytest.raises(torch.OutOfMemoryError):
        cli.main([*argv, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert err.startswith("samtune train: the run did not finish; its checkpoints are on disk")
    data = f"--images {images} --labels {labels}"  # as given, to continue it as it ran
    assert f"samtune train --resume {out} --out {out} --epochs 3 {data}" in err
    # its last.pt is resumed from, which keeps the preset: advice a resume can take
    assert "samtune train: out of memory: resume with fewer --n-objects" in err


def test_the_note_of_a_run_stopped_under_torchrun_continues_it_under_torchrun(
    tmp_path, monkeypatch
):
    """It offered a single-process ``samtune train --resume`` for a 2 x 4-process run."""
    from napari_samtune.cli.train_report import aborted_note

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"not read: no training state in it")
    assert "continue it with: samtune train --resume" in aborted_note(out)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    note = aborted_note(out)
    assert "continue it with: torchrun --nproc-per-node 4 ... -m napari_samtune.cli train " in note
    assert f"--resume {out} --out {out}" in note


def test_a_refused_resume_does_not_call_the_other_run_unfinished(tmp_path, folders, capsys):
    """``--resume A --out B`` with B holding a finished run B is refused; before the refusal
    it said "the run did not finish; its checkpoints are on disk: B/..." and offered to
    continue B, a run that had finished and was not the one resumed."""
    images, labels = folders
    runs = {name: tmp_path / name for name in ("a", "b")}
    for out in runs.values():
        argv = _tiny_run(folders, out, 1)
        assert cli.main(argv) == 0
    capsys.readouterr()
    resume = ["train", "--resume", str(runs["a"]), "--epochs", "2", "--images", images]
    resume += ["--labels", labels, "--out", str(runs["b"]), "--no-progress"]
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert "holds another training run" in err
    assert "did not finish" not in err and "--resume" in err


def test_resuming_from_best_pt_says_to_take_last_pt_not_another_run(tmp_path, folders, capsys):
    """``--resume RUN/checkpoints/best.pt --out RUN`` (the best checkpoint, not the resumable
    one) was refused as "--out RUN holds another training run", which is the same run; and
    with another --out, only after all the data was read."""
    images, labels = folders
    out = tmp_path / "my run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    assert cli.main([*argv, "--labels", labels, "--epochs", "1", *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    best, last = out / "checkpoints" / "best.pt", out / "checkpoints" / "last.pt"
    resume = ["train", "--resume", str(best), "--epochs", "2", "--labels", labels]
    for into in (out, tmp_path / "new"):
        assert cli.main([*resume, "--images", images, "--out", str(into), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{best}' holds weights only ('best' checkpoint); resume from {last}" in err
        assert "another training run" not in err
    # refused before the data is read: the images named need not exist
    assert cli.main([*resume, "--images", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "holds weights only" in capsys.readouterr().err


def test_a_preset_given_with_resume_is_refused_not_ignored(tmp_path, folders, capsys):
    """``--resume RUN --preset KEY`` continued with the run's settings and said nothing of
    the preset asked for (its batch size, learning rate, ... were silently not used)."""
    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    assert cli.main([*argv, "--labels", labels, "--epochs", "1", *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    resume = ["train", "--resume", str(out), "--out", str(out), "--epochs", "2"]
    resume += ["--images", images, "--labels", labels, "--no-progress"]
    assert cli.main([*resume, "--preset", "cpu-8gb"]) == 2
    assert "--resume continues with the run's settings; leave out --preset" in (
        capsys.readouterr().err
    )
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert cli.main(resume) == 0
    # the checkpoints folder itself: it was read as a run folder (checkpoints/checkpoints/...)
    resume[2], resume[6] = str(out / "checkpoints"), "3"
    assert cli.main(resume) == 0, capsys.readouterr().err
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, folders, capsys, monkeypatch):
    """Two runs at once into one --out (a second terminal, a job started twice, a --resume
    while the run still trains) both passed the checks made before the first checkpoint and
    then wrote over each other's checkpoints, metrics and registered model."""
    from napari_samtune.core import train

    out = tmp_path / "my run"
    argv = _tiny_run(folders, out, 1)
    real, second = train.iter_train, []

    def a_second_run_starts_meanwhile(*args, **kwargs):
        for event in real(*args, **kwargs):
            if isinstance(event, train.TrainingStarted) and not second:
                second.append("started")  # while the first trains, before its checkpoint
                second.extend([cli.main(argv), capsys.readouterr().err])
            yield event

    monkeypatch.setattr(train, "iter_train", a_second_run_starts_meanwhile)
    assert cli.main(argv) == 0
    assert second[1] == 2
    assert f"--out {str(out)!r} is in use by another training run (process " in second[2]
    assert "wait for it to finish, or choose another folder" in second[2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registered_name"] == "my_run" and summary["steps_done"] == 3
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # the lock is gone
    assert cli.main(argv[:-2] + ["--out", str(tmp_path / "other")]) == 0  # after it: fine


def test_a_folder_in_use_is_named_by_the_option_that_gave_it(tmp_path, folders, capsys):
    """A --resume of a run still training was told its "--out" was in use, and a new run
    into that folder to continue it with --resume, which was refused the same way."""
    from napari_samtune.core.run_lock import training_lock

    out = tmp_path / "run"
    argv = _tiny_run(folders, out, 1)
    assert cli.main(argv) == 0
    images, labels = folders
    resume = ["train", "--resume", str(out), "--images", images, "--labels", labels]
    with training_lock(out):  # as the run training there holds it
        assert cli.main([*resume, "--epochs", "2", "--no-progress"]) == 2
        said = capsys.readouterr().err
        assert f"--resume {str(out)!r} is in use by another training run (process " in said
        assert cli.main(argv) == 2
        said = capsys.readouterr().err
        assert f"--out {str(out)!r} is in use by another training run" in said
        assert "already holds a training run" not in said
    assert cli.main([*resume, "--epochs", "2", "--no-progress"]) == 0  # once it is done


def test_an_abort_after_the_last_epoch_offers_the_export_not_a_resume(
    tmp_path, folders, capsys, monkeypatch
):
    """SIGTERM while the trained model is exported (after the last epoch): the note offered
    ``samtune train --resume``, which then refused ("nothing is left to train"); the
    model is one ``samtune export --register`` away."""
    from napari_samtune.core import trainer_files

    def terminated(*args, **kwargs):
        raise cli.Terminated

    real = trainer_files.export_and_register
    monkeypatch.setattr(trainer_files, "export_and_register", terminated)
    out = tmp_path / "run"
    argv = _tiny_run(folders, out, 1)
    assert cli.main(argv) == 143
    err = capsys.readouterr().err
    assert "samtune train --resume" not in err
    best = out / "checkpoints" / "best.pt"
    command = f"samtune export {best} -o {out / 'model.pth'} --register run"
    assert f"its training is done, but its model was not exported: {command}" in err
    monkeypatch.setattr(trainer_files, "export_and_register", real)
    assert cli.main(command.split()[1:]) == 0
    assert "registered as 'run'" in capsys.readouterr().out


def _terminated_at_last_pt(monkeypatch) -> None:
    """SIGTERM arrives while a last.pt is written (after the epoch's best.pt)."""
    real_save = torch.save

    def terminated_at_last(obj, path, *args, **kwargs):
        if Path(path).name.startswith(".last.pt."):  # atomic_write's temporary file
            raise cli.Terminated
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", terminated_at_last)


def test_an_abort_before_the_first_last_checkpoint_offers_the_best_weights(
    tmp_path, folders, capsys, monkeypatch
):
    """SIGTERM while the first epoch's last.pt is written, after its best.pt: the note
    said nothing (it looked for last.pt only), so the saved weights looked lost."""
    real_save = torch.save
    _terminated_at_last_pt(monkeypatch)
    out = tmp_path / "run"
    argv = _tiny_run(folders, out, 2)
    assert cli.main(argv) == 143
    err = capsys.readouterr().err
    best = out / "checkpoints" / "best.pt"
    assert not (out / "checkpoints" / "last.pt").exists()
    assert "cannot be continued (it wrote no last.pt)" in err
    assert f"samtune export {best} -o model.pth" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert cli.main(["export", str(best), "-o", str(tmp_path / "model.pth")]) == 0
    assert (tmp_path / "model.pth").is_file()


def test_an_abort_before_a_resumed_run_s_first_last_checkpoint_offers_its_source(
    tmp_path, folders, capsys, monkeypatch
):
    """A run resumed into a new folder, aborted while that folder's first last.pt is
    written: the run is continued from the checkpoint it resumed from, not lost."""
    images, labels = folders
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(_tiny_run(folders, first, 1)) == 0
    source = first / "checkpoints" / "last.pt"
    resume = ["train", "--resume", str(source), "--epochs", "2", "--images", images]
    resume += ["--labels", labels, "--out", str(second), "--no-progress"]
    real_save = torch.save
    _terminated_at_last_pt(monkeypatch)
    capsys.readouterr()
    assert cli.main(resume) == 143
    err = capsys.readouterr().err
    assert "cannot be continued" not in err
    assert (
        f"samtune train --resume {source} --out {second} --images {images} --labels {labels}" in err
    )
    assert f"samtune export {second / 'checkpoints' / 'best.pt'} -o model.pth" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert cli.main(resume) == 0
    assert json.loads((second / "summary.json").read_text())["epochs_done"] == 2


def _signals_after(monkeypatch, event_type, *signals):
    """Training raises ``signals`` (for real) after its first event of ``event_type``."""
    import signal

    from napari_samtune.core import train

    real = train.iter_train

    def signalled(*args, **kwargs):
        sent = False
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, event_type) and not sent:
                sent = True
                for name in signals:
                    signal.raise_signal(getattr(signal, name))

    monkeypatch.setattr(train, "iter_train", signalled)


def test_sigterm_aborts_saying_what_is_saved_and_exits_143(tmp_path, folders, capsys, monkeypatch):
    """A batch job's time limit (or ``kill``) ended the run without a word."""
    import signal

    from napari_samtune.core import train

    _signals_after(monkeypatch, train.EpochDone, "SIGTERM")
    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "3", "--early-stopping", "0", *FAST]

    def unhandled(signum, frame):  # rather than the end of the test session
        raise AssertionError("samtune train left SIGTERM to the default handler")

    before = signal.signal(signal.SIGTERM, unhandled), signal.getsignal(signal.SIGINT)
    try:
        assert cli.main([*argv, "--out", str(out)]) == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, before[0])
    err = capsys.readouterr().err
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    assert err.startswith("samtune train: terminated; the run did not finish")
    assert f"its checkpoints are on disk: {last}, {best}" in err
    data = f"--images {images} --labels {labels}"  # as given, to continue it as it ran
    assert f"samtune train --resume {out} --out {out} --epochs 3 {data}" in err
    assert signal.getsignal(signal.SIGINT) is before[1]


def test_a_resumed_run_terminated_before_its_first_checkpoint_is_not_called_done(
    tmp_path, folders, capsys, monkeypatch
):
    """A run of 1 epoch resumed for 3, terminated before the resumed session wrote a
    checkpoint: last.pt (of 1 epoch of 1) made it "training done", with a command that
    registered the model (registered already) a second time, under the folder's name."""
    import signal

    from napari_samtune.core import train

    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--images", images, "--labels", labels, *FAST, "--no-progress"]
    first = [*argv, "--preset", "cpu-16gb", "--model", "random:tiny", "--epochs", "1"]
    first += ["--name", "first"]
    assert cli.main([*first, "--out", str(out)]) == 0
    capsys.readouterr()
    _signals_after(monkeypatch, train.TrainingStarted, "SIGTERM")
    before = signal.getsignal(signal.SIGTERM)
    try:
        resumed = [*argv, "--epochs", "3", "--resume", str(out), "--out", str(out)]
        assert cli.main(resumed) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert "training is done" not in err and "--register" not in err
    assert "the run did not finish" in err
    assert (
        f"samtune train --resume {out} --out {out} --epochs 3 --images {images} --labels {labels}"
        in err
    )


def test_sigterm_under_torchrun_explains_torchrun_s_own_error(
    tmp_path, folders, capsys, monkeypatch
):
    """torchrun then ends with a SignalException traceback and exit code 1 of its own, which
    a batch job saw unexplained (Ctrl+C had its note)."""
    import signal

    import napari_samtune.cli.train as cli_train
    from napari_samtune.core import train

    _signals_after(monkeypatch, train.EpochDone, "SIGTERM")
    monkeypatch.setattr(cli_train, "started_by_torchrun", lambda: True)  # as rank 0 of 2 sees it
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "3", "--early-stopping", "0", *FAST]
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert err.startswith("samtune train: terminated; the run did not finish")
    assert err.rstrip().endswith(
        "note: torchrun sent this process SIGTERM, as it does when the job is stopped (a time "
        "limit, kill, a second Ctrl+C) and when another process of the run failed (its error "
        "is above then); the run ended with the checkpoints above, if any; torchrun itself now "
        "reports the signal as an error of its own (a SignalException traceback and exit code "
        "1, not this run's 143)"
    )


def test_a_sigterm_while_a_peer_s_failure_is_reported_leaves_the_report_whole(
    tmp_path, folders, capsys, monkeypatch
):
    """Another process of a torchrun run failed after an epoch: torchrun sends this one
    SIGTERM at once, and landing while the failure was reported it left a bare "samtune
    train: terminated", without the checkpoints left or the command that continues."""
    import signal

    import napari_samtune.cli.train as cli_train
    from napari_samtune.core import train
    from napari_samtune.core.distributed import PeerLostError

    real_train, real_note = train.iter_train, cli_train.aborted_note

    def peer_lost(*args, **kwargs):
        for event in real_train(*args, **kwargs):
            yield event
            if isinstance(event, train.EpochDone):
                raise PeerLostError("another process of this run failed")

    def note_under_sigterm(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # torchrun's, as the other process exits
        return real_note(*args, **kwargs)

    monkeypatch.setattr(train, "iter_train", peer_lost)
    monkeypatch.setattr(cli_train, "aborted_note", note_under_sigterm)
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "3", *FAST, "--out", str(tmp_path / "run")]
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(argv) == 2
        assert signal.getsignal(signal.SIGTERM) is before  # not left ignored
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert "samtune train: the run did not finish; its checkpoints are on disk" in err, err
    assert "samtune train: error: another process of this run failed" in err
    assert "terminated" not in err


def test_a_stop_in_the_first_epoch_reports_no_best_epoch(tmp_path, folders, capsys, monkeypatch):
    """The summary said "time to best epoch: 0.0 s" of an epoch that never ended."""
    from napari_samtune.core import train

    _signals_after(monkeypatch, train.StepDone, "SIGINT")  # stop after this step
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "2", *FAST, "--min-samples", "6"]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 0
    printed, err = capsys.readouterr()
    assert "stopping after this step (Ctrl+C again to abort)" in err
    assert "stopped on request after 1 of 6 steps of epoch 1; checkpoint written" in printed
    assert "best " not in printed and "time to best epoch" not in printed
    assert "total training time" in printed and "exported model" in printed


def test_only_the_main_process_says_it_is_stopping(capsys):
    """torchrun hands Ctrl+C to every worker: the note came once per rank."""
    import signal
    import threading

    from napari_samtune.cli.train import stop_on_ctrl_c

    for verbose in (False, True):
        stop = threading.Event()
        previous = stop_on_ctrl_c(stop, verbose)
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            signal.signal(signal.SIGINT, previous)
        assert stop.is_set()
        said = "stopping after this step" in capsys.readouterr().err
        assert said == verbose


def test_a_gpu_preset_without_cuda_names_the_preset_and_the_fix(
    tmp_path, folders, capsys, monkeypatch
):
    """It said "--device cuda but CUDA is not available", an option not typed; with
    ``--device auto`` (the default, typed) nothing was checked, and the A100's sizes
    trained on the CPU (9.4 GB where cpu-16gb takes 3.4)."""
    from napari_samtune.core import devices

    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    images, labels = folders
    argv = ["train", "--preset", "a100", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--out", str(tmp_path / "x"), *FAST]
    for device in ([], ["--device", "auto"], ["--device", "AUTO"]):
        assert cli.main([*argv, *device]) == 2
        err = capsys.readouterr().err
        assert "--preset a100 trains on cuda, but CUDA is not available here" in err
        assert "add --device cpu to train with its settings on the CPU" in err
        assert "--device cuda" not in err
        assert not (tmp_path / "x").exists()


def test_a_detected_preset_without_a_setting_for_the_model_says_which_one_it_takes(
    tmp_path, monkeypatch
):
    """``samtune train --model vit_b_lm`` on a 24 GB machine: "preset 'cpu-16gb' cannot fit
    model 'vit_b'", a preset the person never chose, with presets to choose that do not
    fit the machine."""
    from napari_samtune.cli import build_parser
    from napari_samtune.cli.train_config import make_config
    from napari_samtune.core import presets

    machine = presets.MachineResources(None, 23.5, 2, None)
    monkeypatch.setattr(presets, "measure_machine", lambda gpu_index=None: machine)
    argv = ["train", "--model", "random:vit_b", "--images", "i", "--labels", "l"]
    argv += ["--out", str(tmp_path)]
    config, origin = make_config(build_parser().parse_args(argv))
    assert config.preset == "cpu-8gb"
    note = "cpu-16gb, detected here, has no setting measured for vit_b, so that of cpu-8gb"
    assert note in origin
    named = build_parser().parse_args([*argv, "--preset", "cpu-16gb"])
    with pytest.raises(ValueError, match="cannot fit model 'vit_b'"):  # chosen: refused
        make_config(named)


def test_resume_from_a_folder_without_a_checkpoint_names_the_expected_file(
    tmp_path, folders, capsys
):
    images, labels = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["train", "--resume", str(empty), "--images", images, "--labels", labels]
    assert cli.main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    expected = empty / "checkpoints" / "last.pt"
    assert f"--resume {empty} is a folder without a training checkpoint: {expected}" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-objects", "0"], "--n-objects 0; use a whole number >= 1"),
        (["--early-stopping", "-1"], "--early-stopping -1; use >= 1 or 0 (never stop)"),
        (["--patch-size", "3"], "--patch-size 3; use at least 32 pixels, or no --patch-size"),
        (["--device", "tpu"], "--device tpu is not a device"),
        (
            ["--freeze", "image_encoder", "--lora-rank", "4"],
            "which --freeze also lists; remove 'image_encoder' from --freeze or set --lora-rank 0",
        ),
        (["--name", "nano"], "--name nano is already a built-in or registered model"),
        (["--name", "bad/name"], "--name bad/name is not allowed: use 1-100 ASCII letters"),
        (
            ["--freeze", "none", "--freeze", "image_encoder"],
            "--freeze none trains every part, but --freeze image_encoder freezes it",
        ),
    ],
)
def test_setting_errors_name_the_options_typed(tmp_path, folders, capsys, extra, message):
    """Not the core's Python names (``n_objects_per_batch=0``, ``or None``)."""
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "1", *FAST, "--out", str(tmp_path / "x"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not re.search(r"\w=", err) and "None" not in err  # no name=value, no None
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_held_out_part_without_objects_names_the_option(tmp_path, folders, capsys):
    images, labels = folders
    one = tmp_path / "one"
    one.mkdir()
    tifffile.imwrite(one / "s0.tif", tifffile.imread(f"{images}/s0.tif"))
    cells = tifffile.imread(f"{labels}/s0_mask.tif")
    cells[:, 48:] = 0  # none in the columns held out for validation
    tifffile.imwrite(one / "s0_mask.tif", cells)
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", str(one)]
    argv += ["--labels", str(one), "--epochs", "1", *FAST, "--out", str(tmp_path / "x")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "that part has no objects; pass validation data" in err
    assert "or set --val-fraction 0" in err and "val_fraction" not in err


def test_an_empty_field_of_view_is_left_out_and_named(tmp_path, folders, capsys):
    """``segment --auto`` writes all-0 labels where it finds no cell; training goes on."""
    images, labels = folders
    blank = np.zeros((80, 96), np.uint8)
    tifffile.imwrite(f"{images}/s3.tif", blank)
    tifffile.imwrite(f"{labels}/s3_mask.tif", blank)
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "1", *FAST, "--out"]
    assert cli.main([*argv, str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "2 training / 1 validation images" in printed
    assert "left out 1 pair(s) without any object (labels all 0): s3.tif / s3_mask.tif" in printed
    for name in ("s0", "s1", "s2"):
        tifffile.imwrite(f"{labels}/{name}_mask.tif", blank)
    assert cli.main([*argv, str(tmp_path / "none")]) == 2
    assert "none of the 4 training pairs has any object" in capsys.readouterr().err


def test_multichannel_files_train_on_the_channels_chosen(tmp_path, folders, capsys, monkeypatch):
    """Five-channel files, cells in channel 3: refused with the options to pass, then
    trained with them (no default choice exists for five channels)."""
    from napari_samtune.core import data
    from napari_samtune.core.images import to_sam_rgb

    images, labels = folders
    five = tmp_path / "five"
    five.mkdir()
    seen, normalise = [], data.normalise_pair
    monkeypatch.setattr(
        data, "normalise_pair", lambda pair: seen.append(normalise(pair)) or seen[-1]
    )
    expected = []
    for i in range(3):
        cells = tifffile.imread(f"{images}/s{i}.tif")
        expected.append(to_sam_rgb(cells))
        noise = np.random.default_rng(i).integers(0, 256, (4, *cells.shape), dtype=np.uint8)
        tifffile.imwrite(five / f"s{i}.tif", np.insert(noise, 3, cells, axis=0))  # (C, H, W)
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", str(five)]
    argv += ["--labels", labels, "--epochs", "1", *FAST, "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "training data: image of 's0.tif / s0_mask.tif': image has shape (5, 80, 96)" in err
    assert "a multichannel image needs --channel-axis 0 and --channels" in err
    assert "channels (options" not in err  # each option named once
    assert not (tmp_path / "run").exists()
    assert cli.main([*argv, "--channel-axis", "0", "--channels", "3"]) == 0
    assert "2 training / 1 validation images" in capsys.readouterr().out
    assert len(seen) == 3  # what training saw: the cells, normalised as at inference
    for (rgb, _), cells in zip(seen, expected, strict=True):
        assert np.array_equal(rgb, cells)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "cpu-8gb", "--model", "random:vit_h"], "cannot fit model 'vit_h'"),
        (["--preset", "cpu-8gb", "--model", "random:vit_t", "--n-objects", "9"], "far above"),
        (["--preset", "gpu-9000", "--model", "random:tiny"], "unknown preset 'gpu-9000'"),
        (["--model", "random:tiny", "--preset", "cpu-16gb", "--epochs", "0"], "--epochs 0; use"),
        (["--preset", "cpu-16gb"], "--model is required"),
    ],
)
def test_bad_settings_are_reported_without_a_traceback(tmp_path, folders, capsys, extra, message):
    images, labels = folders
    argv = ["train", "--images", images, "--labels", labels, "--out", str(tmp_path / "x"), *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unpaired_files_are_reported_or_left_out_on_request(tmp_path, folders, capsys):
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", f"{labels}/s0_mask.tif", "--out", str(tmp_path / "x")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "images without labels ['s1.tif', 's2.tif']" in err
    assert "or pass --skip-unpaired to use the 1 pair(s) found" in err

    argv[-3] = f"{labels}/s[02]_mask.tif"  # s1 not annotated yet
    record = {"image_fingerprint": "0123456789abcdef"}  # saved in napari for other pixels
    (Path(labels) / "s2_mask.prompts.json").write_text(json.dumps(record))
    assert cli.main([*argv, "--skip-unpaired", "--epochs", "1", *FAST]) == 0
    out, err = capsys.readouterr()
    assert "warning: training data: the labels of 1 pair(s) were saved (by napari-samtune" in err
    assert "pixels than their image's: s2.tif / s2_mask.tif" in err
    assert (
        "training data: left out 1 image(s) without a label file (not annotated yet?): s1.tif"
        in out
    )
    assert "1 training / 1 validation images" in out
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert summary["epochs_done"] == 1


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_unreadable_checkpoints_are_reported_without_a_traceback(tmp_path, folders, capsys, damage):
    from napari_samtune.core.train_checkpoints import write_checkpoint

    good = write_checkpoint(tmp_path / "last.pt", build_sam(TINY), TINY, TrainConfig())
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    damaged = data[: len(data) // 2] if damage == "truncated" else b"epoch 3, loss 0.2\n"
    bad.write_bytes(damaged)
    assert cli.main(["export", str(good), "-o", str(tmp_path / "good.pth")]) == 0
    capsys.readouterr()

    assert cli.main(["export", str(bad), "-o", str(tmp_path / "m.pth")]) == 2
    err = capsys.readouterr().err
    assert f"{bad} is not a readable PyTorch weights file" in err
    assert "Expected a training checkpoint" in err and "Traceback" not in err
    assert "weights_only` set to `False`" not in err  # never advise unsafe loading
    assert not (tmp_path / "m.pth").exists()

    images, labels = folders
    argv = ["train", "--resume", str(bad), "--images", images, "--labels", labels]
    assert cli.main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "truncated, corrupt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert bad.read_bytes() == damaged and good.read_bytes() == data  # nothing was overwritten


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--model", "random:tiny", "--images", "i", "--labels", "l", "--out", "F"],
            "argument --out: 'F' is a file; give a folder (created if missing), e.g. F-out",
        ),
        (
            ["evaluate", "--images", "i", "--labels", "l", "--model", "nano", "--out", "F"],
            "argument --out: 'F' is a file",
        ),
        (["demo", "--quick", "--out", "F"], "argument --out: 'F' is a file"),
        (
            ["export", "last.pt", "-o", "D"],
            "argument -o/--output: 'D' is a folder; give a file name, e.g. D/model.pth",
        ),
        (  # a folder not made yet: Path() drops the slash, and a file "new" was written
            ["export", "last.pt", "-o", "new/"],
            "argument -o/--output: 'new/' names a folder; give a file name, e.g. new/model.pth",
        ),
        (
            ["train", "--model", "random:tiny", "--images", "i", "--labels", "l", "--out", "F/r"],
            "argument --out: 'F/r' cannot be made: 'F' is a file; give a folder (created if",
        ),
        (
            ["export", "last.pt", "-o", "F/x/m.pth"],
            "argument -o/--output: 'F/x/m.pth' cannot be made: 'F' is a file; give a file in",
        ),
    ],
    ids=[
        "train",
        "evaluate",
        "demo",
        "export",
        "export-new-folder",
        "train-under-a-file",
        "export-under-a-file",
    ],  # fmt: skip
)
def test_outputs_of_the_wrong_kind_are_refused_before_any_work(
    tmp_path, monkeypatch, capsys, argv, message
):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("train", "export", "evaluate", "demo"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "F").write_bytes(b"keep me")
    (tmp_path / "D").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "F").read_bytes() == b"keep me" and not any((tmp_path / "D").iterdir())


def test_the_planes_of_a_stack_without_objects_are_named_as_left_out(tmp_path, capsys):
    """A partly annotated stack trained on its annotated planes without a word: "2 training
    images" from a stack of 5 looked like lost annotations."""
    (image, labels), (image2, labels2) = make_dataset(2, shape=(80, 96), seed=3)
    empty = np.zeros_like(labels)
    for folder in ("img", "lab"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "img/z.tif", np.stack([image, image2, image, image2, image]))
    tifffile.imwrite(tmp_path / "lab/z_mask.tif", np.stack([labels, empty, empty, labels2, empty]))
    argv = ["train", "--model", "random:tiny", "--images", str(tmp_path / "img"), "--labels"]
    argv += [str(tmp_path / "lab"), "--epochs", "1", *FAST, "--out", str(tmp_path / "run")]
    assert cli.main([*argv, "--val-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert (
        "training data: left out the planes without objects of 1 stack(s): "
        "z.tif / z_mask.tif: 3 of 5 planes\n"
    ) in out


def test_a_bad_validation_pair_is_named_as_validation_data(tmp_path, folders, capsys):
    images, labels = folders
    ((image, cells),) = make_dataset(1, shape=(80, 96), seed=9)
    for folder in ("vi", "vl"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "vi/v.tif", image)
    tifffile.imwrite(tmp_path / "vl/v_mask.tif", cells[:40])
    argv = ["train", "--model", "random:tiny", "--images", images, "--labels", labels, *FAST]
    argv += ["--val-images", str(tmp_path / "vi"), "--val-labels", str(tmp_path / "vl")]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error: validation data: image of 'v.tif / v_mask.tif' is 80x96 pixels but" in err


def test_a_models_folder_that_cannot_be_written_is_refused_before_the_data_is_read(
    tmp_path, monkeypatch, capsys
):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SAMTUNE_MODELS_DIR", str(blocker / "models"))
    argv = ["train", "--model", "random:tiny", "--images", "missing", "--labels", "missing"]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"the user models folder {str(blocker / 'models')!r} cannot be made" in err
    assert "set SAMTUNE_MODELS_DIR to a folder you can write to" in err
    assert "missing" not in err and not (tmp_path / "run").exists()


def test_a_read_only_out_folder_is_refused_naming_the_option(tmp_path, monkeypatch, capsys):
    """The error named a temporary file, '.config.json.1xi48hiy.tmp', after reading the data."""
    import os

    read_only = tmp_path / "ro"
    read_only.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(read_only))
    argv = ["train", "--model", "random:tiny", "--images", "i", "--labels", "l"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(read_only / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: {str(read_only / 'run')!r} cannot be written: " in err
    assert f"{str(read_only)!r} is read-only or not yours to write in; give a folder" in err
    assert ".tmp" not in err


def test_every_override_reaches_the_config():
    values = {int: "3", float: "0.25", str: "cpu"}
    argv = ["train", "--images", "a", "--labels", "b", "--out", "c"]
    for _, option, kind, _ in OVERRIDES:
        argv += [option, values[kind]]
    argv += ["--freeze", "prompt_encoder", "--freeze", "mask_decoder", "--loss", "dice_focal"]
    argv += ["--mixed-precision", "bf16", "--trainable-only", "--stock-attention"]
    args = cli.build_parser().parse_args(argv)
    overrides = overrides_from(args)
    assert set(overrides) == {f for f, *_ in OVERRIDES} | {
        "freeze", "mask_loss", "mixed_precision", "checkpoint_trainable_only", "fast_attention",
    }  # fmt: skip
    assert overrides["fast_attention"] is False
    assert overrides["freeze"] == ("prompt_encoder", "mask_decoder")
    assert overrides["learning_rate"] == 0.25 and overrides["epochs"] == 3
    overrides.update(patch_size=64)
    TrainConfig(**overrides)  # every value is a valid config
    none = cli.build_parser().parse_args([*argv[:7], "--freeze", "none", "--early-stopping", "0"])
    assert overrides_from(none) == {"freeze": (), "early_stopping": None}
    whole = cli.build_parser().parse_args([*argv[:7], "--whole-checkpoints"])
    assert overrides_from(whole) == {"checkpoint_trainable_only": False}


def test_a_resume_with_another_process_count_mid_epoch_is_told(
    tmp_path, folders, capsys, monkeypatch
):
    import signal

    import torch

    from napari_samtune.core import train

    real = train.iter_train

    def ctrl_c_after_the_first_step(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, train.StepDone) and event.step == 1:
                signal.raise_signal(signal.SIGINT)  # stop after this step, mid-epoch

    monkeypatch.setattr(train, "iter_train", ctrl_c_after_the_first_step)
    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    assert cli.main([*argv, "--labels", labels, "--epochs", "2", *FAST, "--out", str(out)]) == 0
    last = out / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["step_in_epoch"] == 1
    checkpoint["data_summary"]["world_size"] = 2  # as if stopped under torchrun
    torch.save(checkpoint, last)
    monkeypatch.setattr(train, "iter_train", real)
    capsys.readouterr()
    resume = ["train", "--resume", str(out), "--out", str(out), "--images", images]
    assert cli.main([*resume, "--labels", labels, "--no-progress"]) == 0
    err_text = capsys.readouterr().err
    assert (
        "warning: the run was stopped in epoch 1 with 2 process(es) and continues with 1"
        in err_text
    )


def test_a_gpu_index_under_torchrun_is_refused_in_the_options_typed(
    tmp_path, folders, capsys, monkeypatch
):
    """`torchrun ... samtune train --device cuda:1` trained on each rank's own GPU instead,
    without a word."""
    from napari_samtune.core import devices
    from napari_samtune.core import distributed as ddp

    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(ddp, "context_from_env", lambda *_: ddp.DistributedContext(0, 2, 0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--out", str(tmp_path / "x"), *FAST, "--device", "cuda:1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--device cuda:1 names one GPU, but under torchrun each process trains on " in err
    assert "pass --device cuda (no index), and choose the GPUs with CUDA_VISIBLE_DEVICES" in err


def test_a_resume_under_torchrun_drops_the_gpu_index_the_run_saved(monkeypatch):
    """A torchrun run saved rank 0's "cuda:0"; resumed under torchrun, rank 1 would be
    refused for an index that nobody typed."""
    from napari_samtune.cli.train_resume import resumed_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert [resumed_device(d) for d in ("cuda:0", "cuda", "cpu")] == ["cuda", "cuda", "cpu"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resumed_device("cuda:1") == "cuda:1"  # a lone process keeps its GPU


def test_a_resume_of_a_killed_run_says_what_its_saved_weights_offer(tmp_path, folders, capsys):
    """``--resume`` of a run killed at its end (before the export) said only to pass more
    epochs, and of one killed before its first last.pt that the folder had no checkpoint,
    though best.pt held its weights: each now names the export that makes its model."""
    run = tmp_path / "run"
    assert cli.main(_tiny_run(folders, run, epochs=1)) == 0
    capsys.readouterr()
    best = run / "checkpoints" / "best.pt"
    (run / "summary.json").unlink()  # as a kill in the run's end leaves it
    (run / "model.pth").unlink()
    images, labels = folders
    resume = ["train", "--resume", str(run), "--images", images, "--labels", labels, *FAST]
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert "pass --epochs above 1" in err
    assert f"samtune export {best} -o {run / 'model.pth'} --register NAME" in err
    (run / "checkpoints" / "last.pt").unlink()  # killed between the first best.pt and last.pt
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert "holds a run that cannot be continued" in err
    assert f"samtune export {best} -o model.pth" in err
    assert best.is_file()


def test_settings_changed_on_resume_are_held_to_the_runs_preset(tmp_path, folders, capsys):
    """--resume with --n-objects 1000 trained 8000 objects per step on cpu-16gb unchecked."""
    images, labels = folders
    assert cli.main(_tiny_run(folders, tmp_path / "run", 1)) == 0
    resume = ["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"]
    resume += ["--images", images, "--labels", labels, "--out", str(tmp_path / "more")]
    assert cli.main([*resume, "--n-objects", "1000", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "--n-objects 1000 x --batch-size 8 = 8000 objects per step is far above" in err
    assert "preset 'cpu-16gb'" in err and not (tmp_path / "more").exists()
    # a preset with more memory is no choice on resume (it refuses --preset)
    assert "choose a preset" not in err
    assert "(the run keeps its preset cpu-16gb), or add --force" in err
    assert cli.main([*resume, "--n-objects", "1000", "--force"]) == 0

    forced = [*_tiny_run(folders, tmp_path / "forced", 1), "--n-objects", "500"]
    assert cli.main(forced) == 2  # a new run is told of --force too (it was on resume only)
    assert "or choose a preset with more memory, or add --force to train so anyway" in (
        capsys.readouterr().err
    )
    assert cli.main([*forced, "--force"]) == 0  # a run forced past its preset resumes as it was
    again = ["train", "--resume", str(tmp_path / "forced"), "--epochs", "2", "--no-progress"]
    again += ["--images", images, "--labels", labels, "--out", str(tmp_path / "forced-2")]
    assert cli.main(again) == 0


def test_a_resume_that_changes_what_trains_says_to_leave_the_option_out(tmp_path, folders, capsys):
    """--freeze image_encoder on a LoRA run's resume said "set --lora-rank 0", which resume
    then refused as a different setup."""
    images, labels = folders
    assert cli.main([*_tiny_run(folders, tmp_path / "run", 1), "--lora-rank", "2"]) == 0
    resume = ["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"]
    resume += ["--images", images, "--labels", labels, "--out", str(tmp_path / "more")]
    assert cli.main([*resume, "--freeze", "image_encoder"]) == 2
    err = capsys.readouterr().err
    assert "--resume continues the run's model setup (--freeze none); leave out --freeze" in err
    assert "--lora-rank 0" not in err
    assert cli.main([*resume, "--lora-rank", "4"]) == 2
    assert "(--lora-rank 2); leave out --lora-rank" in capsys.readouterr().err
    assert cli.main([*resume, "--lora-rank", "2"]) == 0  # the same: fine


def _as_an_older_version_recorded(out, precision: str) -> None:
    """Write ``precision`` into a run's config.json and last.pt, as versions before
    2026-12-06 did after resolving "auto" (fp16 on an older GPU)."""
    config = out / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "mixed_precision": precision}))
    last = out / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["config"]["mixed_precision"] = precision
    torch.save(checkpoint, last)


def test_an_older_run_that_recorded_fp16_continues_on_a_cpu(tmp_path, folders, capsys):
    """It could not be continued here: "--mixed-precision fp16 needs a CUDA GPU", naming a
    flag never given."""
    images, labels = folders
    out = tmp_path / "run"
    assert cli.main(_tiny_run(folders, out, 1)) == 0
    _as_an_older_version_recorded(out, "fp16")
    resume = ["train", "--images", images, "--labels", labels, "--no-progress", "--resume"]
    assert cli.main([*resume, str(out), "--epochs", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs_done"] == 2
    assert json.loads((out / "config.json").read_text())["mixed_precision"] == "auto"
    capsys.readouterr()
    _as_an_older_version_recorded(out, "fp16")  # asked for by name: refused, as before
    assert cli.main([*resume, str(out), "--epochs", "3", "--mixed-precision", "fp16"]) == 2
    assert "--mixed-precision fp16 needs a CUDA GPU" in capsys.readouterr().err


def test_a_name_taken_while_the_run_trained_is_said_with_its_new_name(
    tmp_path, folders, capsys, monkeypatch, tiny_checkpoint
):
    """Another run registered '--name shared' first: this one printed only 'registered
    model: shared-2', the reason left out."""
    from napari_samtune.core import train_export, trainer
    from napari_samtune.core.user_models import register_user_model

    free_then = lambda name, resumed=None: name  # noqa: E731
    monkeypatch.setattr(train_export, "check_registration", free_then)
    monkeypatch.setattr(trainer, "check_registration", free_then)
    register_user_model(tiny_checkpoint, "shared", TINY)  # taken meanwhile
    assert cli.main([*_tiny_run(folders, tmp_path / "run", 1), "--name", "shared"]) == 0
    assert (
        "registered model: shared-2 (the name 'shared' was taken by another model meanwhile)"
        in capsys.readouterr().out
    )


def test_a_run_into_the_current_folder_is_named_after_it(tmp_path, folders, capsys, monkeypatch):
    """--out . registered the model as 'finetuned' (Path('.').name is '')."""
    (tmp_path / "cells-round2").mkdir()
    monkeypatch.chdir(tmp_path / "cells-round2")
    assert cli.main(_tiny_run(folders, ".", 1)) == 0
    assert "registered model: cells-round2\n" in capsys.readouterr().out


def test_a_preset_for_more_ram_than_the_machine_has_is_warned_about(
    tmp_path, folders, capsys, monkeypatch
):
    """--preset cpu-64gb on a 23.5 GB machine trained without a word."""
    from napari_samtune.core import presets

    machine = presets.MachineResources(None, 23.5, 2, None)
    monkeypatch.setattr(presets, "measure_machine", lambda gpu_index=None: machine)
    images, labels = folders
    argv = ["train", "--preset", "cpu-64gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "1", "--out", str(tmp_path / "x"), *FAST]
    assert cli.main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: preset cpu-64gb is for 64 GB and this machine has 23.5 GB RAM" in err


def test_the_preset_memory_warning_measures_the_gpu_trained_on(monkeypatch):
    """--device cuda:1 was held to GPU 0's memory: no warning for a 16 GB GPU 1 under an
    80 GB GPU 0, and a false one the other way round."""
    from types import SimpleNamespace

    from napari_samtune.core import presets
    from napari_samtune.core.preset_memory import preset_memory_short

    gpus = {None: 80.0, 0: 80.0, 1: 16.0}
    monkeypatch.setattr(
        presets, "measure_machine",
        lambda gpu_index=None: presets.MachineResources(gpus[gpu_index], 64.0, 8, "a GPU"),
    )  # fmt: skip
    run = SimpleNamespace(preset="a100", device="cuda", model="random:vit_t")
    assert preset_memory_short(run) == ""
    short = preset_memory_short(SimpleNamespace(**{**vars(run), "device": "cuda:1"}))
    assert "this machine has 16.0 GB GPU memory" in short


def test_the_resume_advised_for_a_taken_out_repeats_the_data_options_given(
    tmp_path, folders, capsys
):
    """It gave --images and --labels only: run as advised, the resume held out validation
    images of its own instead of the --val-images given, and chose its best epoch anew."""
    images, labels = folders
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--val-images", images, "--val-labels", labels, "--skip-unpaired"]
    argv += ["--epochs", "1", "--out", str(out), *FAST, "--no-progress"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 2  # the same --out again
    err = capsys.readouterr().err
    again = (
        f"samtune train --resume {out} --images {images} --labels {labels} --val-images "
        f"{images} --val-labels {labels} --skip-unpaired --epochs N"
    )
    assert f"continue it with: {again} (" in err


@pytest.mark.parametrize("resumed", [False, True])
def test_the_memory_advice_names_what_the_run_can_change(resumed):
    """It advised a smaller --patch-size (patches are resized up to the model's input: the
    same memory) and, to a resumed run, --preset and --freeze, which --resume refuses."""
    from napari_samtune.cli.train_report import memory_advice

    advice = memory_advice(RuntimeError("CUDA out of memory"), resumed=resumed)
    assert "--patch-size" not in advice and "--batch-size" in advice
    if resumed:  # only what a resume takes, or a new run elsewhere
        resume, anew = advice.split("start a new run in another --out with ")
        assert "--freeze" not in resume and "resume with fewer --n-objects" in resume
        assert anew.startswith("a --preset") and "--freeze image_encoder" in anew
    else:
        assert "choose a --preset" in advice and "--freeze image_encoder" in advice


def test_a_new_run_out_of_memory_after_its_first_checkpoint_is_advised_as_a_resume(
    tmp_path, folders, capsys, monkeypatch
):
    """Told to continue with --resume and to choose another --preset or --freeze, each of
    which the resume (or the same --out) refused."""
    from napari_samtune.core import train

    real = train.iter_train

    def out_of_memory_after_the_first_epoch(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, train.EpochDone):
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(train, "iter_train", out_of_memory_after_the_first_epoch)
    images, labels = folders
    argv = ["train", "--preset", "cpu-16gb", "--model", "random:tiny", "--images", images]
    argv += ["--labels", labels, "--epochs", "3", "--out", str(tmp_path / "run"), *FAST]
    with pytest.raises(RuntimeError):
        cli.main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    assert "continue it with: samtune train --resume" in err
    assert "out of memory: resume with fewer --n-objects, or start a new run" in err
    assert "--batch-size" not in err  # it is 1 already
    assert "choose a --preset" not in err


def test_a_run_registered_under_a_variant_of_its_folder_s_name_says_why(tmp_path, folders, capsys):
    """No --name, and the folder's name names another model: the run registered my_run-2
    and said only "registered model: my_run-2", while --model my_run loaded the other."""
    images, labels = folders
    argv = ["train", "--model", "random:tiny", "--images", images, "--labels", labels]
    argv += ["--epochs", "1", "--freeze", "image_encoder", *FAST]
    assert cli.main([*argv, "--out", str(tmp_path / "first" / "my_run")]) == 0
    assert "registered model: my_run\n" in capsys.readouterr().out
    assert cli.main([*argv, "--out", str(tmp_path / "second" / "my_run")]) == 0
    assert (
        "registered model: my_run-2 (the run folder's name 'my_run' names another model); "
        "--name gives it a name of your own\n"
    ) in capsys.readouterr().out
    for folder in ("first", "second"):  # a name of the folder's letters outside a name's
        assert cli.main([*argv, "--out", str(tmp_path / folder / "run_細胞")]) == 0
    assert "registered model: run___-2 (the run folder's name 'run___' names" in (
        capsys.readouterr().out
    )


def test_lora_on_a_preset_that_freezes_the_encoder_is_advised_without_a_circle(
    tmp_path, folders, capsys
):
    """Each refusal's advice led to the next refusal: 'give --freeze none and skip the
    preset's memory checks' (no --force named), then 'add image_encoder to --freeze',
    then 'remove image_encoder from --freeze'; and --lora-alpha 0 was told to pass None."""
    images, labels = folders
    argv = ["train", "--model", "random:vit_b", "--preset", "cpu-8gb", "--images", images]
    argv += ["--labels", labels, "--out", str(tmp_path / "run"), "--lora-rank", "4", *FAST]
    assert cli.main(argv) == 2
    said = capsys.readouterr().err
    assert said.rstrip().endswith("or give --freeze none and add --force")
    assert cli.main([*argv, "--freeze", "none"]) == 2
    said = capsys.readouterr().err
    assert "set --lora-rank 0 and add 'image_encoder' to --freeze or choose" in said
    alpha = ["train", "--model", "nano", "--images", images, "--labels", labels, "--out"]
    alpha += [str(tmp_path / "run"), "--lora-rank", "4", "--lora-alpha", "0", *FAST]
    assert cli.main(alpha) == 2
    said = capsys.readouterr().err
    assert "or leave --lora-alpha out (it then equals --lora-rank)" in said and "None" not in said


def test_the_memory_advice_names_only_what_the_run_can_still_lower():
    """On cpu-8gb's setting the advice named a smaller preset, fewer --n-objects, a smaller
    --batch-size and --freeze image_encoder: none of them possible. Windows' CPU allocator
    says "not enough memory", which got no advice at all."""
    from dataclasses import replace

    from napari_samtune.cli.train_report import memory_advice
    from napari_samtune.core.presets import TrainConfig

    windows = RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes.")
    smallest = replace(TrainConfig(), model="vit_t", preset="cpu-8gb", n_objects_per_batch=1,
                       batch_size=1, freeze=("image_encoder",))  # fmt: skip
    told = memory_advice(windows, config=smallest)
    assert told.startswith("out of memory: its settings are already the smallest")
    assert told.endswith("free memory (close other programs) or train on a GPU")  # it is vit_t
    assert "smallest" in memory_advice(windows, resumed=True, config=smallest)
    more = replace(smallest, preset="cpu-16gb", n_objects_per_batch=4, freeze=())
    assert memory_advice(windows, config=more) == (
        "out of memory: choose a --preset for less memory (samtune presets), fewer "
        "--n-objects or --freeze image_encoder"
    )
    assert memory_advice(RuntimeError("shape mismatch"), config=more) == ""


def test_the_memory_advice_names_no_preset_without_a_setting_for_the_model():
    """vit_h on the a100 was told to choose a smaller preset (none is measured for vit_h);
    a LoRA run was told to freeze the encoder, which its adapters are refused in; a run to
    continue whose only way was freezing was told to choose a smaller preset."""
    from dataclasses import replace

    from napari_samtune.cli.train_report import memory_advice
    from napari_samtune.core.presets import TrainConfig

    oom = MemoryError()
    vit_h = replace(TrainConfig(), model="vit_h", preset="a100", n_objects_per_batch=1,
                    batch_size=1, freeze=("image_encoder",))  # fmt: skip
    told = memory_advice(oom, config=vit_h)
    assert "--preset" not in told and "train a smaller model (vit_t)" in told
    assert "on a GPU" not in told  # it is on one
    lora = replace(vit_h, model="vit_t", preset="gtx1080", freeze=(), lora_rank=4)
    assert memory_advice(oom, config=lora) == (
        "out of memory: choose --lora-rank 0 --freeze image_encoder"
    )
    assert memory_advice(oom, resumed=True, config=lora) == (
        "out of memory: start a new run in another --out with --lora-rank 0 --freeze image_encoder"
    )
