"""Commands that messages advise work when pasted into a shell: their paths quoted, one
starting with '-' not taken for an option."""

from __future__ import annotations

import shlex

import pytest
import torch

from napari_samtune.core.checkpoint_fields import not_resumable
from napari_samtune.core.checkpoints import CHECKPOINT_FORMAT
from napari_samtune.core.shell_words import shell_path
from napari_samtune.core.train_checkpoints import resolve_checkpoint


@pytest.mark.parametrize("path", ["killed run é's/x", "-ab", "plain", "@x.tif"])
def test_a_path_pastes_as_one_word_that_is_no_option(path):
    """``@x.tif`` too: ``samtune segment`` reads ``@FILE`` as a list of images."""
    (word,) = shlex.split(shell_path(path))
    assert not word.startswith(("-", "@")) and word.endswith(path.lstrip("-"))


def test_the_export_advised_for_a_run_without_last_pt_pastes(tmp_path):
    """It printed `samtune export killed run é's/checkpoints/best.pt -o model.pth`."""
    run = tmp_path / "killed run é's"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT}, run / "checkpoints" / "best.pt")
    with pytest.raises(FileNotFoundError) as refused:
        resolve_checkpoint(run)
    command = str(refused.value).split("samtune export ")[1].split(" makes a model")[0]
    assert shlex.split(command) == [str(run / "checkpoints" / "best.pt"), "-o", "model.pth"]


def test_a_damaged_checkpoint_s_export_pastes(tmp_path):
    path = tmp_path / "dmg run's" / "checkpoints" / "last.pt"
    message = str(not_resumable(path, "a field is lost"))
    command = message.split("samtune export ")[1].split(" makes a model")[0]
    assert shlex.split(command) == [str(path), "-o", "model.pth"]
