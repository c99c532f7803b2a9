"""Fast paths for SAM's image encoders that keep the official weights and keys.

Stock SAM attention builds the full attention matrix, adds the decomposed
relative-position bias to it and applies softmax, all as separate memory-bound
passes (for ViT-B at 1024 px: 4 global blocks of 12 x 4096 x 4096 scores).
:func:`use_fast_attention` switches the encoder's attention modules to
``torch.nn.functional.scaled_dot_product_attention`` (fused, flash-style
kernels on CPU and GPU) without materialising the bias: the bias
``rel_h[i, kh(j)] + rel_w[i, kw(j)]`` equals a dot product of ``[rel_h_i, rel_w_i]``
with one-hot codes of key j's row and column, so it is folded into augmented
queries and keys. The result is mathematically the stock attention; the state
dict is unchanged (only the module classes are swapped), so checkpoints,
LoRA and export are unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


def _rel_pos_codes(size_h: int, size_w: int, dtype: torch.dtype, device: torch.device):
    """One-hot codes (size_h * size_w, size_h + size_w) of each key's row and column."""
    rows = torch.arange(size_h, device=device).repeat_interleave(size_w)
    cols = torch.arange(size_w, device=device).repeat(size_h)
    codes = torch.zeros(size_h * size_w, size_h + size_w, dtype=dtype, device=device)
    codes[torch.arange(size_h * size_w), rows] = 1
    codes[torch.arange(size_h * size_w), size_h + cols] = 1
    return codes


class FastRelPosAttention(Attention):
    """SAM ViT attention computed by ``scaled_dot_product_attention``; same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        n_tokens = height * width
        qkv = self.qkv(x).reshape(batch, n_tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if self.use_rel_pos:
            q, k, v = self._fold_rel_pos(q, k, v, height, width)
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
            out = out[..., : self.rel_pos_h.shape[1]]  # drop the zero padding of v
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.permute(0, 2, 1, 3).reshape(batch, height, width, -1)
        return self.proj(out)

    def _fold_rel_pos(self, q, k, v, height: int, width: int):
        """Augment q, k (and zero-pad v to the same width) so q'.k' = scale*q.k + rel bias."""
        batch, heads, n_tokens, head_dim = q.shape
        rh = get_rel_pos(height, height, self.rel_pos_h).to(q.dtype)  # (H, H, head_dim)
        rw = get_rel_pos(width, width, self.rel_pos_w).to(q.dtype)  # (W, W, head_dim)
        grid_q = q.reshape(batch, heads, height, width, head_dim)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rh).reshape(batch, heads, n_tokens, height)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rw).reshape(batch, heads, n_tokens, width)
        codes = _rel_pos_codes(height, width, q.dtype, q.device).expand(batch, heads, -1, -1)
        q_aug = torch.cat([q * self.scale, rel_h, rel_w], dim=-1)
        k_aug = torch.cat([k, codes], dim=-1)
        v_pad = F.pad(v, (0, height + width))
        return q_aug, k_aug, v_pad


def use_fast_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every SAM ViT attention module in ``model`` to the fused path, in place.

    Idempotent; returns ``model``. TinyViT (vit_t) encoders are left as they are.
    """
    for module in model.modules():
        if type(module) is Attention:
            module.__class__ = FastRelPosAttention
    return model


def use_stock_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`use_fast_attention` (for reference measurements and tests)."""
    for module in model.modules():
        if type(module) is FastRelPosAttention:
            module.__class__ = Attention
    return model


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("fp32", "bf16", "fp16", "auto") on ``device``.

    "auto" picks bf16 where the hardware runs it fast (CPUs with AVX-512 BF16 or AMX,
    CUDA GPUs of compute capability >= 8.0), fp16 on older CUDA GPUs, else fp32 (None).
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision={precision!r}; choose 'auto', 'fp32', 'bf16' or 'fp16'")
    if precision == "fp32":
        return None
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


class FastConvTranspose2x2(torch.nn.ConvTranspose2d):
    """A 2x2, stride-2 transposed convolution (SAM's mask upscaling) as one matrix product.

    With kernel == stride every output pixel comes from exactly one input pixel, so the
    layer is ``(pixels, C_in) @ (C_in, C_out * 4)`` followed by a pixel shuffle: the same
    result as the stock kernel, which on CPU runs far below matmul speed.
    """

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None:
            return super().forward(x, output_size)
        batch, c_in, height, width = x.shape
        c_out = self.weight.shape[1]
        weight = self.weight.reshape(c_in, c_out * 4)
        out = x.permute(0, 2, 3, 1).reshape(-1, c_in) @ weight.to(x.dtype)
        out = out.view(batch, height, width, c_out, 2, 2).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(batch, c_out, 2 * height, 2 * width)
        return out if self.bias is None else out + self.bias.to(out.dtype)[None, :, None, None]


def _is_plain_2x2_upscale(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.ConvTranspose2d
        and module.kernel_size == (2, 2)
        and module.stride == (2, 2)
        and module.padding == (0, 0)
        and module.output_padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def use_fast_upscaling(model: torch.nn.Module) -> torch.nn.Module:
    """Switch SAM's 2x2 stride-2 transposed convolutions to :class:`FastConvTranspose2x2`.

    In place and idempotent; parameters and state dict are unchanged. Returns ``model``.
    """
    for module in model.modules():
        if _is_plain_2x2_upscale(module):
            module.__class__ = FastConvTranspose2x2
    return model
