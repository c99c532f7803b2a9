"""The configuration of a finetuning run (:class:`TrainConfig`): saved with every checkpoint,
checked field by field (:mod:`napari_samtune.core.config_checks`). A preset's config:
:func:`napari_samtune.core.presets.config_from_preset`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from napari_samtune.core.config_checks import check_train_config


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a finetuning run; saved with every checkpoint (``asdict``).

    ``__post_init__`` checks every field (see :mod:`napari_samtune.core.config_checks`).
    """

    model: str = "vit_b"  # model to finetune: registry name, weights file, or "random:<arch>"
    epochs: int = 100  # at most this many epochs
    learning_rate: float = 1e-5  # Adam learning rate at the start
    n_objects_per_batch: int = 5  # objects sampled per patch (fewer if the patch has fewer)
    batch_size: int = 1  # patches per forward pass
    patch_size: int | None = None  # patch side in pixels; None: the model's input size
    freeze: tuple[str, ...] = ()  # parts not trained: image_encoder, prompt_encoder, mask_decoder
    lora_rank: int = 0  # > 0: train rank-r LoRA adapters on the encoder's qkv instead of it
    lora_alpha: float | None = None  # LoRA scale numerator; None: equal to lora_rank (scale 1)
    early_stopping: int | None = 10  # stop after this many epochs without improvement; None: never
    min_samples_per_epoch: int = 50  # patches per epoch, oversampling small data sets
    n_iterative_prompts: int = 2  # corrective-point iterations after the first prediction
    mask_loss: str = "dice_bce"  # "dice_bce" or "dice_focal"
    seed: int = 0  # seeds sampling, augmentation, prompts and random initialisation
    mixed_precision: str = "auto"  # "auto", "bf16", "fp16" (with a GradScaler) or "no"
    fast_attention: bool = True  # ViT attention via fused SDPA: same result, far less memory
    grad_accumulation: int = 1  # optimizer step every this many batches
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    val_fraction: float = 0.1  # held out for validation when no validation data is given
    embedding_cache_size: int = 128  # frozen encoder: embeddings kept (LRU); 4 MB each at 1024 px
    checkpoint_trainable_only: bool = False  # checkpoints hold only the trained weights
    min_object_area: int = 16  # smaller objects in a patch (pixels): not trained on, unless all are
    box_jitter: float = 0.1  # box corners move by up to this fraction of the box side
    scheduler_patience: int = 3  # ReduceLROnPlateau: epochs without improvement before a cut
    scheduler_factor: float = 0.5  # ReduceLROnPlateau: learning rate multiplier per cut
    preset: str | None = None  # key of the preset this config came from (recorded only)

    def __post_init__(self) -> None:
        check_train_config(self)

    @property
    def encoder_frozen(self) -> bool:
        """The image encoder's output never changes: embeddings can be cached across epochs."""
        return "image_encoder" in self.freeze

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of ``dataclasses.asdict``; unknown keys raise ``ValueError``.

        A lora_alpha saved with lora_rank 0 (accepted, and ignored, before such a config was
        refused) is dropped, so that run's checkpoints and config.json still load.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config fields {unknown!r}")
        if data.get("lora_rank", 0) == 0 and data.get("lora_alpha") is not None:
            data = {**data, "lora_alpha": None}
        return cls(**data)
