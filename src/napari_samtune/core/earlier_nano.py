"""Checkpoints of runs begun on nano's weights as an earlier version of the package shipped
them (:data:`napari_samtune.core.registry.EARLIER_NANO`).

A frozen-encoder run's checkpoints hold only the weights it trained by default, and take
the rest from their base model: once the package ships other nano weights, they are
completed on the earlier ones, which the package keeps for them.
"""

from __future__ import annotations

from pathlib import Path

from segment_anything.modeling import Sam

from napari_samtune.core.architectures import SamArchitecture
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.registry import (
    WEIGHTS_ID_PREFIX,
    ModelSpec,
    earlier_packaged,
    file_model_id,
)

EARLIER_FIX = (
    "reinstall napari-samtune (the file ships with it); or use the run's model.pth, where "
    "it has one, which holds every weight (finetune it further with --model RUN/model.pth)"
)


def earlier_nano_base(
    checkpoint: dict, config: TrainConfig, path: str | Path
) -> tuple[Sam, SamArchitecture] | None:
    """(model, architecture) of the base a checkpoint of only the trained weights completes
    on, where its run began on earlier packaged nano weights; None where it did not.
    ``BaseModelUnavailable`` where those weights cannot be loaded now, and
    ``DamagedCheckpoint`` where they lack what the checkpoint records taking from them."""
    from napari_samtune.core.checkpoint_fields import damaged
    from napari_samtune.core.train_checkpoints import recorded_parts_match
    from napari_samtune.core.train_setup import build_training_model

    recorded = checkpoint.get("base_model_id") or ""
    for spec in earlier_packaged(config.model):
        by_file = recorded == file_model_id(spec.file_hash)
        if not (by_file or recorded.startswith(WEIGHTS_ID_PREFIX)):
            continue
        loaded = _load(spec, config, must=by_file)
        if loaded is None or recorded not in (file_model_id(spec.file_hash), loaded.model_id):
            continue
        sam, arch, _ = build_training_model(
            config, base=(loaded.sam, loaded.architecture, recorded)
        )
        if recorded_parts_match(checkpoint, sam, config, recorded):
            return sam, arch
        raise damaged(
            path,
            f"the parts it takes from its base model {config.model!r} as the package shipped "
            f"it when the run began ({recorded}, kept as {spec.filename}) do not match its "
            "'base_parts_digest', taken over the parts its 'config' leaves untrained: one of "
            "those entries was changed",
        )
    return None


def _load(spec: ModelSpec, config: TrainConfig, must: bool):
    """The earlier weights of ``spec``, hash-checked; where they cannot be loaded,
    ``BaseModelUnavailable`` if the run is known to have begun on them (``must``), else
    None."""
    from napari_samtune.core.checkpoint_models import BaseModelUnavailable
    from napari_samtune.core.download import ensure_model_file
    from napari_samtune.core.models import load_model

    try:
        return load_model(ensure_model_file(spec), architecture=spec.resolve_architecture())
    except (OSError, ValueError) as err:
        if not must:
            return None
        raise BaseModelUnavailable(
            f"this checkpoint holds only the weights its run trained, which complete its "
            f"base model {config.model!r} as the package shipped it when the run began, kept "
            f"as {spec.local_path()}, and that cannot be loaded now: {err}. To fix: "
            f"{EARLIER_FIX}"
        ) from None
