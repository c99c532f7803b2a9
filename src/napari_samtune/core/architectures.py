"""SAM architectures as typed data: build a model from one, infer one from weights.

Every Segment Anything variant the project handles (the official ViT-B/L/H,
MobileSAM's TinyViT ``vit_t``, and small test/offline models) is a
:class:`SamArchitecture`. The model is always assembled from the official
``segment_anything`` modules (the TinyViT encoder comes from ``mobile_sam``),
so an exported state dict loads in the official code with strict loading.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn
from torch.overrides import TorchFunctionMode

PATCH_SIZE = 16  # both encoders reduce the input 16x: a 1024 input gives a 64x64 embedding
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


MAX_WIDTH = 16384  # a channel width, far above vit_h's 1280 (and the decoder's 2048)
MAX_COUNT = 256  # blocks, heads, a window's side, the entries of a tuple field
# the largest value of each size field; an image side of 4096 is 4x SAM's 1024
_SIZE_LIMITS = {
    "img_size": 4096,
    "embed_dim": MAX_WIDTH,
    "depth": MAX_COUNT,
    "num_heads": MAX_COUNT,
    "global_attn_indexes": MAX_COUNT,
    "window_size": MAX_COUNT,
    "tinyvit_embed_dims": MAX_WIDTH,
    "tinyvit_depths": MAX_COUNT,
    "tinyvit_num_heads": MAX_COUNT,
    "tinyvit_window_sizes": MAX_COUNT,
    "prompt_embed_dim": MAX_WIDTH,
    "decoder_mlp_dim": MAX_WIDTH,
    "decoder_num_heads": MAX_COUNT,
    "iou_head_hidden_dim": MAX_WIDTH,
}


@dataclass(frozen=True)
class SamArchitecture:
    """The shape of a SAM model: enough to build it with random weights."""

    name: str  # registry name of the shape ("vit_b", "vit_t", "tiny", ...) or "custom"
    encoder: Literal["vit", "tiny_vit"] = "vit"  # plain ViT (SAM) or TinyViT (MobileSAM)
    img_size: int = 1024  # side of the square encoder input, in pixels
    embed_dim: int = 768  # ViT width (encoder "vit" only)
    depth: int = 12  # number of ViT blocks (encoder "vit" only)
    num_heads: int = 12  # ViT attention heads (encoder "vit" only)
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)  # ViT blocks with global attention
    window_size: int = 14  # windowed-attention side, in tokens (encoder "vit" only)
    tinyvit_embed_dims: tuple[int, ...] = (64, 128, 160, 320)  # TinyViT stage widths
    tinyvit_depths: tuple[int, ...] = (2, 2, 6, 2)  # TinyViT blocks per stage
    tinyvit_num_heads: tuple[int, ...] = (2, 4, 5, 10)  # TinyViT heads per stage
    tinyvit_window_sizes: tuple[int, ...] = (7, 7, 14, 7)  # TinyViT windows per stage
    prompt_embed_dim: int = 256  # width of prompt tokens and of the image embedding
    decoder_mlp_dim: int = 2048  # MLP width inside the two-way transformer
    decoder_num_heads: int = 8  # attention heads of the two-way transformer
    iou_head_hidden_dim: int = 256  # hidden width of the IoU prediction head
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # free-form notes

    def __post_init__(self) -> None:
        self._check_sizes()
        if self.encoder not in ("vit", "tiny_vit"):
            raise ValueError(f"encoder={self.encoder!r}; expected 'vit' or 'tiny_vit'")
        if self.img_size % PATCH_SIZE:
            raise ValueError(f"img_size={self.img_size!r} must be a multiple of {PATCH_SIZE}")
        if self.encoder == "vit" and self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim!r} must be divisible by num_heads={self.num_heads!r}"
            )
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError(
                f"global_attn_indexes={self.global_attn_indexes!r} must lie in 0..{self.depth - 1}"
            )

    def _check_sizes(self) -> None:
        """``ValueError`` for a size that is no whole number in its range: a description or
        checkpoint naming img_size 16000000 had the model built (a 512 TB allocation) before
        its weights were compared with it, and 256.0 passed as a size."""
        for name, largest in _SIZE_LIMITS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            low = 0 if name == "global_attn_indexes" else 1
            if isinstance(value, tuple) and len(value) > MAX_COUNT:
                raise ValueError(f"{name} has {len(value)} entries; at most {MAX_COUNT} fit")
            for item in values:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise ValueError(f"{name}={value!r}: expected whole numbers")
                if not low <= item <= largest:
                    raise ValueError(f"{name}={value!r}: each must lie in {low}..{largest}")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid, in tokens."""
        return self.img_size // PATCH_SIZE

    def to_dict(self) -> dict:
        """A JSON/torch-safe description (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in self.__dict__.items()
            if k != "extra"
        }

    @classmethod
    def from_dict(cls, data: dict) -> SamArchitecture:
        """Inverse of :meth:`to_dict`; unknown keys, or other data than a mapping (a file's
        ``[]``, which took down every command that listed the models), raise a
        ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"an architecture is a mapping of its fields, not {data!r:.60}")
        known = set(cls.__dataclass_fields__) - {"extra"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


VIT_B = SamArchitecture(name="vit_b")
VIT_L = SamArchitecture(
    name="vit_l", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
)
VIT_H = SamArchitecture(
    name="vit_h", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
)
VIT_T = SamArchitecture(name="vit_t", encoder="tiny_vit")
# A SAM-shaped model small enough for unit tests (about 0.3 M parameters); never offered as a
# real model: randomly initialised, it segments nothing useful.
TINY = SamArchitecture(
    name="tiny",
    img_size=256,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    window_size=8,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)
# A TinyViT (vit_t-shaped) model small enough for unit tests, for the code paths TINY's ViT
# does not reach; mobile_sam's TinyViT hard-codes the 64 x 64 embedding grid, so 1024 px.
TINY_TINYVIT = SamArchitecture(
    name="tiny_tinyvit",
    encoder="tiny_vit",
    tinyvit_embed_dims=(16, 32, 32, 320),  # 320: mobile_sam keeps the last stride at 1
    tinyvit_depths=(1, 1, 1, 1),
    tinyvit_num_heads=(1, 2, 2, 10),
    tinyvit_window_sizes=(4, 4, 8, 4),
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)

# The offline generalist's shape (about 2 M parameters, a few MB): small enough to train from
# scratch on a CPU and to ship inside the package; 256 px input, 64 px low-res masks.
NANO = SamArchitecture(
    name="nano",
    img_size=256,
    embed_dim=128,
    depth=4,
    num_heads=4,
    global_attn_indexes=(1, 3),
    window_size=8,
    prompt_embed_dim=128,
    decoder_mlp_dim=512,
    iou_head_hidden_dim=128,
)

ARCHITECTURES: dict[str, SamArchitecture] = {
    a.name: a for a in (VIT_T, VIT_B, VIT_L, VIT_H, TINY, NANO)
}


def as_architecture(value: SamArchitecture | str) -> SamArchitecture:
    """``value`` itself, or the architecture it names (a key of :data:`ARCHITECTURES`);
    ``ValueError`` for an unknown name, ``TypeError`` for anything else."""
    if isinstance(value, SamArchitecture):
        return value
    if not isinstance(value, str):
        raise TypeError(f"architecture={value!r} must be a SamArchitecture or its name")
    if value not in ARCHITECTURES:
        raise ValueError(
            f"architecture={value!r}; choose one of {sorted(ARCHITECTURES)!r} "
            "or pass a SamArchitecture"
        )
    return ARCHITECTURES[value]


def _build_image_encoder(arch: SamArchitecture) -> torch.nn.Module:
    if arch.encoder == "tiny_vit":
        with warnings.catch_warnings():  # mobile_sam re-registers timm models, loudly
            warnings.simplefilter("ignore")
            from mobile_sam.modeling import TinyViT  # imports timm: only when a vit_t is built

        return TinyViT(
            img_size=arch.img_size,
            in_chans=3,
            num_classes=1000,
            embed_dims=list(arch.tinyvit_embed_dims),
            depths=list(arch.tinyvit_depths),
            num_heads=list(arch.tinyvit_num_heads),
            window_sizes=list(arch.tinyvit_window_sizes),
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        )
    return ImageEncoderViT(
        depth=arch.depth,
        embed_dim=arch.embed_dim,
        img_size=arch.img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=arch.num_heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=arch.global_attn_indexes,
        window_size=arch.window_size,
        out_chans=arch.prompt_embed_dim,
    )


def build_sam(arch: SamArchitecture | str) -> Sam:
    """Build a randomly initialised SAM of the given architecture (or registry shape name)."""
    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)!r}"
            )
        arch = ARCHITECTURES[arch]
    size = arch.embedding_size
    return Sam(
        image_encoder=_build_image_encoder(arch),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(size, size),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    ).eval()


class _WeightsOnMeta(TorchFunctionMode):
    """Inside, ``torch.empty`` allocates on the meta device: the weights of linear,
    convolution, norm and embedding layers (which start as ``torch.empty``) take no memory,
    and their random initialisation costs nothing. Everything else a constructor makes
    (the buffers it computes) stays real. In-place operations on a placeholder (the
    initialisers' ``uniform_``, ``erfinv_``, ``clamp_``...) return it at once: run by
    torch's meta kernels, many of them in Python, they made building vit_t slower than
    initialising its real weights. Like every torch function mode this one is active in
    its own thread only: models built meanwhile by other threads are untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.empty:
            return func(*args, **{**kwargs, "device": "meta"})
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__")
        if in_place and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **kwargs)


def sam_to_load(arch: SamArchitecture | str) -> Sam:
    """A SAM of ``arch`` whose weights are placeholders without memory, for :func:`load_weights`.

    Building SAM ViT-H the plain way took 3.7 s of random initialisation on a 2-core EPYC,
    and loading into it held the model twice (the official builder's load: 5.5 s, and 17-24
    s where the VM supplied the second 2.5 GB slowly); this takes 0.07 s. The global random
    state is left as it was.
    """
    with torch.random.fork_rng(devices=[]), _WeightsOnMeta():
        return build_sam(arch)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` strictly into ``model`` (made by :func:`sam_to_load`, adapters added
    as needed), taking its tensors as the weights rather than copying them in.

    A tensor whose dtype differs from the model's (a half-precision file) is converted, as
    a copying load would; ``model``'s ``requires_grad`` flags stay. ``RuntimeError`` (from
    torch) when keys or shapes do not fit.
    """
    targets = model.state_dict(keep_vars=True)
    fitted = {
        key: value.to(targets[key].dtype).contiguous() if key in targets else value
        for key, value in state.items()
    }
    model.load_state_dict(fitted, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a constructor made a buffer with torch.empty: no weights file holds it
        raise RuntimeError(f"no weights were loaded for {left[:3]!r}; build with build_sam")
    return model


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _infer_vit_encoder(sd: dict[str, torch.Tensor]) -> dict:
    embed_dim = sd["image_encoder.patch_embed.proj.weight"].shape[0]
    grid = sd["image_encoder.pos_embed"].shape[1]
    depth = _count_blocks(sd, "image_encoder.blocks.")
    if depth == 0:
        raise KeyError("image_encoder.blocks.0.attn.rel_pos_h")  # a ViT without blocks
    rel_lengths = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    global_indexes = tuple(i for i, s in enumerate(rel_lengths) if s[0] == 2 * grid - 1)
    windowed = [s for i, s in enumerate(rel_lengths) if i not in global_indexes]
    window_size = (windowed[0][0] + 1) // 2 if windowed else 14
    head_dim = rel_lengths[0][1]
    return dict(
        encoder="vit",
        img_size=grid * PATCH_SIZE,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn_indexes=global_indexes,
        window_size=window_size,
    )


def infer_architecture(state_dict: dict[str, torch.Tensor]) -> SamArchitecture:
    """Read the architecture off a SAM state dict (keys as in ``Sam.state_dict()``).

    Returns the registry architecture when the shapes match one (so ``name`` is
    e.g. ``"vit_b"``), else a ``"custom"`` architecture with the inferred sizes.
    Raises ``ValueError`` when the weights are not a SAM model.
    """
    required = (
        "mask_decoder.iou_token.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    )
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(
            f"these weights are not a Segment Anything model: keys {missing!r} are missing"
        )
    try:
        inferred = _infer_sizes(state_dict)
    except KeyError as err:  # a tensor the sizes are read from: a damaged or partial file
        raise ValueError(
            f"these Segment Anything weights are incomplete: {err.args[0]!r} is missing (a "
            "damaged file, or only some parts of a model saved?)"
        ) from None
    except ValueError as err:  # sizes no architecture has: said as a setting to change
        raise ValueError(
            f"these Segment Anything weights have tensor shapes that make no SAM architecture "
            f"({err}): the file is damaged, or was changed after it was saved; export or "
            "download it again"
        ) from None
    for known in ARCHITECTURES.values():
        if replace(known, name="custom") == inferred:
            return known
    return inferred


def _infer_sizes(state_dict: dict[str, torch.Tensor]) -> SamArchitecture:
    """The ``"custom"`` architecture of :func:`infer_architecture`; ``KeyError`` for a
    missing tensor."""
    decoder = dict(
        prompt_embed_dim=state_dict["mask_decoder.iou_token.weight"].shape[1],
        decoder_mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )
    if "image_encoder.patch_embed.proj.weight" in state_dict:
        encoder = _infer_vit_encoder(state_dict)
    elif any(k.startswith("image_encoder.layers.") for k in state_dict):
        encoder = dict(encoder="tiny_vit", img_size=1024)
    elif not any(k.startswith("image_encoder.") for k in state_dict):  # only what trained
        raise KeyError("image_encoder.*")  # no encoder weights at all
    else:
        raise ValueError("these weights have a SAM decoder but an image encoder of unknown kind")
    return SamArchitecture(name="custom", **encoder, **decoder)
