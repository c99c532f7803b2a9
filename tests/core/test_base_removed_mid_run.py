"""A run that trains only some weights exports its model at its end with its own frozen
weights: its base model removed (``samtune models --remove``) or replaced while it trained
cost it the model (the export read the base from disk), and the export command it then
advised failed the same way."""

from __future__ import annotations

import pytest
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.checkpoint_models import BaseModelUnavailable, export_model
from napari_samtune.core.models import load_model
from napari_samtune.core.train import EpochDone, iter_train
from napari_samtune.core.user_model_removal import remove_user_model
from napari_samtune.core.user_models import register_user_model


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_base_model_gone_during_a_frozen_encoder_run_does_not_cost_its_model(
    tmp_path, tiny_checkpoint, data, frozen_tiny_config, change
):
    register_user_model(tiny_checkpoint, "base", TINY)
    base = load_model("base").sam.state_dict()
    config = frozen_tiny_config(model="base", epochs=2, checkpoint_trainable_only=True)
    events = []
    for event in iter_train(config, *data, out_dir=tmp_path / "run", model_name="tuned"):
        events.append(event)
        if isinstance(event, EpochDone) and event.epoch == 0:
            remove_user_model("base")
            if change == "replaced":  # other weights under its name
                torch.manual_seed(7)
                other = tmp_path / "other.pth"
                torch.save(build_sam(TINY).state_dict(), other)
                register_user_model(other, "base", TINY)
    finished = events[-1]
    assert finished.registered_name == "tuned" and finished.exported_model_path.is_file()
    exported = torch.load(finished.exported_model_path, weights_only=True)
    best = torch.load(finished.best_checkpoint_path, weights_only=True)["model_state"]
    encoder = [k for k in exported if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(exported[k], base[k]) for k in encoder)  # the base's
    assert best and all(torch.equal(exported[k], v) for k, v in best.items())  # trained
    assert set(load_model("tuned").sam.state_dict()) == set(exported)
    if change == "removed":  # exported later, a checkpoint still needs its base
        with pytest.raises(BaseModelUnavailable):
            export_model(finished.best_checkpoint_path, tmp_path / "again.pth")


def test_a_run_of_whole_checkpoints_is_not_resumed_into_ones_that_need_its_base(
    tmp_path, tiny_checkpoint, data, frozen_tiny_config
):
    """Whole checkpoints need no base model, which may then be removed; resumed with
    trained-weights-only checkpoints, the run wrote ones that needed it, and could neither
    resume nor export again."""
    import dataclasses

    from napari_samtune.core.train import train

    register_user_model(tiny_checkpoint, "base", TINY)
    config = frozen_tiny_config(model="base", epochs=1, checkpoint_trainable_only=False)
    first = train(config, *data, out_dir=tmp_path / "run")
    remove_user_model("base")
    before = first.last_checkpoint_path.read_bytes()
    switched = dataclasses.replace(config, epochs=2, checkpoint_trainable_only=True)
    with pytest.raises(ValueError, match=r"holds every weight of its run, which needs no base"):
        train(switched, *data, out_dir=tmp_path / "run", resume_from=tmp_path / "run")
    assert first.last_checkpoint_path.read_bytes() == before
    resumed = train(dataclasses.replace(switched, checkpoint_trainable_only=False), *data,
                    out_dir=tmp_path / "run", resume_from=tmp_path / "run")  # fmt: skip
    assert resumed.epochs_done == 2
    export_model(resumed.last_checkpoint_path, tmp_path / "again.pth")  # whole: no base needed
