"""A user model renamed with ``samtune models --rename`` is still found under its former
name where the project recorded it: the base model of runs trained from it, and errors that
name it; plus two false refusals of the argument checks added with it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.checkpoint_models import export_model
from napari_samtune.core.embeddings import TilingConfig
from napari_samtune.core.model_lookup import get_model_spec
from napari_samtune.core.models import export_sam_state_dict, load_model
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.registry import user_models_dir
from napari_samtune.core.synthetic import make_image
from napari_samtune.core.train import train
from napari_samtune.core.user_model_rename import rename_user_model, renamed_to
from napari_samtune.core.user_models import register_user_model


def test_former_names_lead_to_the_current_one_through_several_renames(tiny_checkpoint):
    register_user_model(tiny_checkpoint, "cells", TINY)
    rename_user_model("cells", "cells_v2")
    rename_user_model("cells_v2", "cells_v3")
    assert renamed_to("cells") == renamed_to("cells_v2") == "cells_v3"
    assert renamed_to("cells_v3") is None and renamed_to("other") is None
    with pytest.raises(ValueError, match=r"user model 'cells' was renamed 'cells_v3'"):
        load_model("cells")
    with pytest.raises(ValueError, match=r"was renamed 'cells_v3' \(samtune models --rename\)"):
        get_model_spec("cells")


def test_a_run_of_trained_weights_only_still_finds_its_renamed_base(tmp_path, tiny_checkpoint):
    """Its export and resume were refused: "'basem' is neither a model name ...", though
    the same weights were there under the new name."""
    register_user_model(tiny_checkpoint, "basem", TINY)
    image, labels = make_image((128, 128), seed=0)
    config = TrainConfig(
        model="basem",
        epochs=1,
        min_samples_per_epoch=2,
        n_objects_per_batch=2,
        freeze=("image_encoder",),
        checkpoint_trainable_only=True,
        early_stopping=None,
    )
    out = tmp_path / "run"
    train(config, [(image, labels.astype(np.uint32))], out_dir=out, model_name="child")
    rename_user_model("basem", "basem2")
    exported, _ = export_model(out / "checkpoints" / "last.pt", tmp_path / "model.pth")
    assert load_model(exported).sam.image_encoder.img_size == TINY.img_size


def test_tiling_takes_numpy_numbers():
    """np.float32(0.25) was refused as "is a float32; pass a number"."""
    assert TilingConfig(np.float32(0.25)).overlap_fraction == pytest.approx(0.25)
    assert TilingConfig(np.int64(0)).overlap_fraction == 0
    with pytest.raises(TypeError, match="is a bool"):
        TilingConfig(True)


def test_huge_but_finite_weights_still_load(tmp_path, tiny_sam):
    """A float32 sum of weights near 3e38 overflows: they were refused as not finite."""
    with torch.no_grad():
        tiny_sam.mask_decoder.iou_prediction_head.layers[0].weight[0, :4] = 3e38
    path = export_sam_state_dict(tiny_sam, tmp_path / "huge.pth")
    assert load_model(path).sam.mask_decoder.iou_prediction_head.layers[0].weight.max() > 1e38


def _run_renamed(tmp_path, name: str, new_name: str):
    """``(config, data, finished)``: a one-epoch tiny run registered as ``name``, then its
    model renamed ``new_name``."""
    image, labels = make_image((128, 128), seed=0)
    data = [(image, labels.astype(np.uint32))]
    config = TrainConfig(
        model="random:tiny", epochs=1, min_samples_per_epoch=2, n_objects_per_batch=2,
        early_stopping=None,
    )  # fmt: skip
    first = train(config, data, out_dir=tmp_path / "run", model_name=name)
    rename_user_model(name, new_name)
    return config, data, first


def test_a_renamed_model_updated_by_its_continued_run_keeps_its_former_names(tmp_path):
    """A continued run registers its model anew under the name it has now; that dropped the
    rename record, so the widgets' remembered model (the former name) fell back to the
    default and the Annotate panel said the model was removed."""
    config, data, first = _run_renamed(tmp_path, "round1", "cells")
    resumed = train(
        dataclasses.replace(config, epochs=2),
        data,
        out_dir=tmp_path / "run",
        resume_from=first.last_checkpoint_path,
    )
    assert resumed.registered_name == "cells"
    assert renamed_to("round1") == "cells"
    rename_user_model("cells", "cells_v2")  # and on through later renames
    assert renamed_to("round1") == renamed_to("cells") == "cells_v2"


def test_a_renamed_run_model_whose_old_name_was_given_again_is_updated_by_its_resume(
    tmp_path, tiny_checkpoint
):
    """The run's summary names 'round1', registered now from another file: the resume
    registered a third model, 'round1-2', and left 'cells' with the old weights."""
    config, data, first = _run_renamed(tmp_path, "round1", "cells")
    register_user_model(tiny_checkpoint, "round1", TINY)  # the name given to another model
    resumed = train(
        dataclasses.replace(config, epochs=2), data, out_dir=tmp_path / "run",
        resume_from=first.last_checkpoint_path,
    )  # fmt: skip
    assert resumed.registered_name == "cells"
    exported = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    for name, weights in load_model("cells").sam.state_dict().items():
        torch.testing.assert_close(weights, exported[name])
    assert {path.stem for path in user_models_dir().glob("*.json")} == {"cells", "round1"}


def test_other_weights_registered_over_a_renamed_model_do_not_take_its_former_names(
    tiny_checkpoint, tmp_path
):
    """Only a continued run's weights are the same model: a script's overwrite of 'cells'
    with other weights made 'round1' (a run's base, a remembered choice) lead to them."""
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(build_sam(TINY).state_dict(), other)
    register_user_model(tiny_checkpoint, "round1", TINY)
    rename_user_model("round1", "cells")
    register_user_model(other, "cells", TINY, overwrite=True)
    assert renamed_to("round1") is None
    register_user_model(tiny_checkpoint, "again", TINY)
    rename_user_model("again", "cells2")
    register_user_model(other, "cells2", TINY, overwrite=True, keep_former_names=True)
    assert renamed_to("again") == "cells2"
