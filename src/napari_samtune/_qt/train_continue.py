"""What Continue… tells a person of the settings a continued run keeps.

A continued run takes only the epochs, learning rate and device set in the widget; its
other settings (:data:`~napari_samtune._qt.train_run.KEPT_BY_CONTINUE`) stay the run's.
The warning compares them with the config Start would build, or, when Start would refuse
that (objects per batch beyond the preset, a model file gone), with the fields as shown:
the person changed them, so they are told the run keeps its own.
"""

from __future__ import annotations

from dataclasses import replace

from napari_samtune._qt.train_run import KEPT_BY_CONTINUE, settings_kept_message
from napari_samtune._qt.train_settings import TrainSettingsWidget
from napari_samtune.core.presets import TrainConfig


def kept_settings_warning(settings: TrainSettingsWidget, run: TrainConfig) -> str:
    """The warning naming the settings set in ``settings`` that the continued run (config
    ``run``) keeps; "" when none differs."""
    try:
        here = settings.build_config()
    except (ValueError, TypeError):  # settings Start would refuse: compared as shown
        try:
            here = _as_shown(settings, run)
        except (ValueError, TypeError) as err:  # e.g. no model file chosen
            return (
                f"the run continues with its own {', '.join(KEPT_BY_CONTINUE.values())}: a "
                "continued run takes only the epochs, learning rate and device set here (the "
                f"settings here could not be compared with the run's: {err})"
            )
    # the run saved the patch size it trained with, the model's input size for None; of a
    # model not known here, the input size is not known either: taken as the run's
    arch = settings.architecture()
    patch_size = here.patch_size or (arch.img_size if arch is not None else run.patch_size)
    return settings_kept_message(run, replace(here, patch_size=patch_size))


def _as_shown(settings: TrainSettingsWidget, run: TrainConfig) -> TrainConfig:
    """``run`` with the settings Continue… keeps as the widget shows them, unchecked against
    the preset and the model; ``ValueError``/``TypeError`` when they make no config."""
    shown = {k: v for k, v in settings.overrides().items() if k in KEPT_BY_CONTINUE}
    preset = settings.preset_for(settings.architecture())[0]  # a detected one's step down
    return replace(run, model=settings.model_text(), preset=preset.key, **shown)
