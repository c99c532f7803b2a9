import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from napari_samtune.core.checkpoints import (
    atomic_torch_save,
    atomic_write,
    check_output_folder,
    first_free,
    first_line,
    is_project_checkpoint,
    safe_torch_load,
)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "model.pth"
    atomic_torch_save({"w": torch.ones(2)}, target)

    def broken(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert torch.load(target, weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]  # no temp file left


def test_atomic_write_gives_ordinary_file_permissions(tmp_path, monkeypatch):
    from napari_samtune.core import checkpoints

    monkeypatch.setattr(checkpoints, "_UMASK", [])  # read anew, under this test's umask
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def _fail_like_a_full_disk(obj, tmp):
    """What torch.save does when the disk fills up: part of the file, then a RuntimeError."""
    Path(tmp).write_bytes(b"PK partial")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


@pytest.mark.parametrize("free", [0, 2**40])
def test_a_failed_checkpoint_write_names_the_file_and_a_full_disk(tmp_path, monkeypatch, free):
    """torch reports a full disk as a RuntimeError about its zip writer: it is an OSError
    naming the checkpoint (not the temporary file), with the fix when the disk is full."""
    target = tmp_path / "last.pt"
    atomic_torch_save({"w": torch.ones(2)}, target)
    monkeypatch.setattr(torch, "save", _fail_like_a_full_disk)
    usage = shutil.disk_usage(tmp_path)._replace(free=free)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage)
    with pytest.raises(OSError) as raised:
        atomic_torch_save({"w": torch.zeros(2)}, target)
    message = str(raised.value)
    assert message.startswith(f"could not write {target}: ")
    if free:
        assert "torch.save failed ([enforce fail at inline_container.cc:672]" in message
    else:
        assert message.endswith(
            f"no space left on the device holding {tmp_path}; free space or choose another folder"
        )
    assert ".tmp" not in message
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_other_torch_save_errors_are_not_called_write_failures(tmp_path, monkeypatch):
    def unpicklable(obj, tmp):
        raise RuntimeError("Cannot serialize this object")

    monkeypatch.setattr(torch, "save", unpicklable)
    with pytest.raises(RuntimeError, match="Cannot serialize"):
        atomic_torch_save({"w": 1}, tmp_path / "a.pt")
    assert not any(tmp_path.iterdir())


def test_a_write_error_names_the_destination_not_the_temporary_file(tmp_path):
    target = tmp_path / "config.json"

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError) as raised:
        atomic_write(target, full)
    assert str(raised.value) == (
        f"could not write {target}: no space left on the device holding {tmp_path}; "
        "free space or choose another folder"
    )
    assert raised.value.errno == errno.ENOSPC
    assert not any(tmp_path.iterdir())


def test_a_read_only_folder_is_named_with_the_destination(tmp_path, monkeypatch):
    """mkstemp's error named the temporary file, e.g. '.config.json.1xi48hiy.tmp'."""
    target = tmp_path / "config.json"

    def read_only(prefix, suffix, dir):
        raise OSError(errno.EROFS, "Read-only file system", f"{dir}/{prefix}1xi48hiy{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as raised:
        atomic_write(target, lambda tmp: tmp.write_text("{}"))
    assert str(raised.value) == (
        f"could not write {target}: folder {tmp_path} cannot be written to (Read-only file "
        "system); choose a folder you can write to"
    )


@pytest.mark.parametrize("depth", ["x.json", "sub/x.json"])
def test_a_file_where_a_folder_should_be_is_named(tmp_path, depth):
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(OSError) as raised:
        atomic_write(tmp_path / "afile" / depth, lambda tmp: tmp.write_text("{}"))
    assert f"{tmp_path / 'afile'} is a file, not a folder; choose another folder" in str(
        raised.value
    )
    assert "Errno" not in str(raised.value)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_output_folders_that_cannot_be_made_or_written_are_refused(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ValueError) as raised:
        check_output_folder(tmp_path / "afile" / "sub", "out_dir")
    assert str(raised.value) == (
        f"out_dir {str(tmp_path / 'afile' / 'sub')!r} cannot be made: "
        f"{str(tmp_path / 'afile')!r} is a file; give a folder (created if missing)"
    )
    assert check_output_folder(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    with pytest.raises(ValueError) as raised:  # the folder suggested is beside the file
        check_output_folder(tmp_path / "afile", "out_dir")
    assert str(raised.value).endswith(f"e.g. {tmp_path / 'afile-out'}")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ValueError, match=f"{str(tmp_path)!r} is read-only or not yours to write"):
        check_output_folder(tmp_path / "new" / "run", "out_dir")


def test_a_folder_that_access_calls_writable_but_refuses_files_is_refused(tmp_path, monkeypatch):
    """As root on an NFS share with root_squash (or on sysfs), access() says yes, and training
    failed after its first epoch, writing config.json; a file is now made to find out."""

    refusing = tmp_path / "share"
    refusing.mkdir()
    real_temporary_file = tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):
        if Path(dir) == refusing:
            raise PermissionError(errno.EACCES, "Permission denied", str(refusing))
        return real_temporary_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "access", lambda path, mode: True)
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    with pytest.raises(ValueError) as raised:
        check_output_folder(refusing / "run", "out_dir")
    assert str(raised.value) == (
        f"out_dir {str(refusing / 'run')!r} cannot be written: a file could not be made in "
        f"{str(refusing)!r} (Permission denied); give a folder (created if missing)"
    )
    assert check_output_folder(tmp_path / "run") == tmp_path / "run"
    assert list(refusing.iterdir()) == [] and sorted(tmp_path.iterdir()) == [refusing]


def test_project_checkpoints_are_recognised_without_loading_their_tensors(tmp_path):
    from napari_samtune.core.architectures import TINY, build_sam
    from napari_samtune.core.presets import TrainConfig
    from napari_samtune.core.train_checkpoints import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "last.pt", build_sam(TINY), TINY, TrainConfig())
    plain = atomic_torch_save(build_sam(TINY).state_dict(), tmp_path / "model.pth")
    (tmp_path / "notes.txt").write_text("napari-samtune-checkpoint")
    assert is_project_checkpoint(checkpoint)
    assert not is_project_checkpoint(plain)
    assert not is_project_checkpoint(tmp_path / "notes.txt")
    assert not is_project_checkpoint(tmp_path / "missing.pt")


def test_first_free_numbers_from_2_past_what_is_taken():
    taken = {"run", "run-2", "run-4"}
    assert first_free("run", taken.__contains__) == "run-3"  # the first gap
    assert first_free("other", taken.__contains__) == "other"
    assert first_free("", {""}.__contains__) == "-2"  # a tag for names built around it


@pytest.mark.parametrize(
    "text, quoted",
    [
        ("short error\ntraceback", "short error"),
        ("First sentence. " + "x" * 200, "First sentence."),
        ("word " * 60, ("word " * 29).strip() + "…"),
    ],
)
def test_a_quoted_error_ends_at_a_sentence_or_a_word_never_mid_word(text, quoted):
    assert first_line(text) == quoted
    assert len(first_line(text)) <= 150


def test_a_truncated_weights_file_is_named_without_torch_s_text_cut_mid_word(tmp_path):
    """It read "... If you are seeing this error, there); it may be truncated"."""
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(1000)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(ValueError) as err:
        safe_torch_load(cut, "SAM weights")
    message = str(err.value)
    assert "cut.pt is not a readable PyTorch weights file" in message
    quoted = re.search(r"\((\w+: .*)\); it may be truncated", message).group(1)
    assert quoted.endswith((".", "…")) or len(quoted) < 150, quoted  # torch's was cut at 150


def test_a_folder_that_cannot_be_made_names_the_one_it_was_to_go_in(tmp_path):
    """The folder not made was named as the one that 'cannot be written to' (models/ under a
    read-only cache folder), though it does not exist: the cache folder refused it."""
    from napari_samtune.core.checkpoints import write_error

    target = tmp_path / "models" / "sub" / "w.pt"
    refused = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "models"))
    message = str(write_error(target, refused))
    assert message == (
        f"could not write {target}: folder {tmp_path} cannot be written to (Permission "
        "denied); choose a folder you can write to"
    )


def test_the_umask_is_read_once_not_at_every_save(tmp_path, monkeypatch):
    """Reading the umask sets it to 0 for a moment: saves on two threads at once (autosave,
    training, the embedding cache) could leave it 0 for good, and every later file
    writable by all. It is read once."""
    from napari_samtune.core import checkpoints

    monkeypatch.setattr(checkpoints, "_UMASK", [])
    calls, real = [], os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    for name in ("a", "b", "c"):
        atomic_write(tmp_path / name, lambda tmp: tmp.write_text("x"))
    assert len(calls) == 2  # set to 0 and put back, once


def test_a_write_under_a_folder_that_cannot_be_entered_is_worded(tmp_path, monkeypatch):
    """Path.exists raises PermissionError where a folder above cannot be entered (another
    user's): the device check before the write, and the error's search for the folder
    that refused, raised it bare instead of 'folder ... cannot be written to'."""
    locked = tmp_path / "locked"
    real_stat, real_mkdir = os.stat, os.mkdir

    def refused(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(locked)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "stat", refused(real_stat))
    monkeypatch.setattr(os, "mkdir", refused(real_mkdir))
    with pytest.raises(PermissionError) as raised:
        atomic_write(locked / "run" / "model.pth", lambda tmp: tmp.write_text("x"))
    assert str(raised.value) == (
        f"could not write {locked / 'run' / 'model.pth'}: folder {tmp_path} cannot be written "
        "to (Permission denied); choose a folder you can write to"
    )
