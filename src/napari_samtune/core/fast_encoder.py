"""Fast paths for SAM's image encoders that keep the official weights and keys.

Stock SAM attention builds the full attention matrix, adds the decomposed
relative-position bias to it and applies softmax, all as separate memory-bound
passes (for ViT-B at 1024 px: 4 global blocks of 12 x 4096 x 4096 scores).
:func:`use_fast_attention` switches the encoder's attention modules to
``torch.nn.functional.scaled_dot_product_attention`` (fused, flash-style
kernels on CPU and GPU) without materialising the bias: the bias
``rel_h[i, kh(j)] + rel_w[i, kw(j)]`` equals a dot product of ``[rel_h_i, rel_w_i]``
with one-hot codes of key j's row and column, so it is folded into augmented
queries and keys. Where wide products cost more than memory passes (fp32 on a CPU), the
bias is instead built as an additive mask in cache-sized pieces, with a backward pass of
its own (:mod:`~napari_samtune.core.rel_pos_attention`, :func:`_pick_kernel`).
The result is mathematically the stock attention; the state dict is unchanged (only the
module classes are swapped), so checkpoints, LoRA and export are unaffected.

:class:`FastViTBlock` (inference only) also skips the padding tokens of windowed blocks and
fuses the blocks' residual adds and GELU into oneDNN's linear kernels.
:mod:`~napari_samtune.core.fast_tinyvit` has the fast paths of TinyViT (vit_t).
:func:`encode` feeds the encoder channels-last pixels, which keeps every tensor of
the ViT's residual stream contiguous (see there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos

from napari_samtune.core.cuda_graphs import graphed_encoder_call, graphs_wanted
from napari_samtune.core.onednn import is_gelu, linear_add, linear_gelu
from napari_samtune.core.rel_pos_attention import BiasMaskAttention, bias_mask_attention
from napari_samtune.core.windows import from_windows, to_windows


def _rel_pos_codes(size_h: int, size_w: int, dtype: torch.dtype, device: torch.device):
    """One-hot codes (size_h * size_w, size_h + size_w) of each key's row and column."""
    rows = torch.arange(size_h, device=device).repeat_interleave(size_w)
    cols = torch.arange(size_w, device=device).repeat(size_h)
    # comparisons, not ``codes[keys, rows] = 1``: that copies the 1 from the host, which a
    # CUDA graph cannot capture
    row_codes = rows[:, None] == torch.arange(size_h, device=device)
    col_codes = cols[:, None] == torch.arange(size_w, device=device)
    return torch.cat([row_codes, col_codes], dim=1).to(dtype)


SMALL_WINDOW = 256  # windows of at most this many tokens skip SDPA when no gradient is taken
# Folding the bias into q and k makes the score products 3x wider (ViT-B: 64 -> 192); on a CPU
# that pays only where torch's CPU flash-attention kernel runs bf16 fast: with AMX tiles, and
# bf16 products at least this many times faster than fp32. Measured: an AMX Xeon (6x) ran
# folded fastest; two AMD EPYCs with AVX-512 BF16 and no AMX ran the bias mask faster, at 2.6x
# (1.4x faster) and at 4.2x (4.6x faster: the SDPA kernel ran at a quarter of the bf16 peak).
FOLD_MIN_BF16_SPEEDUP = 4.0


def _cpu_products_cheap() -> bool:
    """Whether this CPU runs the folded kernels' wide bf16 attention products fast."""
    from napari_samtune.core import accelerate  # (accelerate imports this module)

    return accelerate.has_amx() and accelerate.bf16_speedup() >= FOLD_MIN_BF16_SPEEDUP


def _pick_kernel(q: torch.Tensor, n_tokens: int) -> str:
    """The fastest exact attention kernel for these queries (each measured on CPU, see below).

    * "folded_sdpa": the bias folded into q and k, SDPA. The fastest where matrix products
      are cheap (bf16 on AMX CPUs, GPUs), with or without a gradient.
    * "window_products": the folded q and k, three plain products: small windows, no gradient.
    * "bias_mask": the bias built as an additive mask a piece at a time
      (:mod:`~napari_samtune.core.rel_pos_attention`), with its own backward pass. In fp32 on
      CPU matrix products are the bottleneck and folding makes ViT-B's global attention
      products 3x wider: 1.3 -> 0.85 s per global block without a gradient, and about
      6 -> 4 s forward + backward, on a 2-core AVX2 CPU. Also in bf16 on CPUs without AMX
      (:func:`_cpu_products_cheap`): on a 2-core AMD EPYC with AVX-512 BF16 whose bf16
      products ran 2.6x faster than fp32, the ViT-B encoder took 4.6 s instead of 6.5 s
      folded, and a global block's forward + backward 2.0 s instead of 3.5 s; on one whose
      products ran 4.2x faster, a global block took 0.17 s instead of 0.78 s without a
      gradient and 0.50 s instead of 1.86 s with one (windowed blocks' 25 windows: 0.06
      instead of 0.11 s with one). Small windows without a gradient fold there too: ViT-B's
      windowed attention (25 windows of 14 x 14 tokens, 12 heads) took 19 ms folded and 31-32
      ms with the bias mask in bf16 (in fp32 35 against 31 ms).
    """
    small_window = n_tokens <= SMALL_WINDOW and not torch.is_grad_enabled()
    if q.device.type == "cpu" and (
        q.dtype == torch.float32 or not (small_window or _cpu_products_cheap())
    ):
        return "bias_mask"
    return "window_products" if small_window else "folded_sdpa"


class FastRelPosAttention(Attention):
    """SAM ViT attention computed by ``scaled_dot_product_attention``; same parameters.

    The kernel is chosen per call by :func:`_pick_kernel`; global attention never stores
    the (N x N) scores of all heads at once.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        n_tokens = height * width
        qkv = self.qkv(x).reshape(batch, n_tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            out = self._rel_pos_attention(q, k, v, height, width)
        out = out.permute(0, 2, 1, 3).reshape(batch, height, width, -1)
        return self.proj(out)

    def _rel_pos_attention(self, q, k, v, height: int, width: int) -> torch.Tensor:
        """softmax(scale * q.k + rel bias) v for (B, heads, N, head_dim) q, k, v."""
        kernel = _pick_kernel(q, height * width)
        rel_h, rel_w = self._rel_pos_terms(q, height, width)
        if kernel == "bias_mask" and torch.is_grad_enabled():
            return BiasMaskAttention.apply(q, k, v, rel_h, rel_w, self.scale)
        if kernel == "bias_mask":
            return bias_mask_attention(q, k, v, rel_h, rel_w, self.scale)
        codes = _rel_pos_codes(height, width, q.dtype, q.device).expand(*q.shape[:2], -1, -1)
        q_aug = torch.cat([q * self.scale, rel_h, rel_w], dim=-1)
        k_aug = torch.cat([k, codes], dim=-1)  # q_aug.k_aug = scale * q.k + rel bias
        if kernel == "window_products":
            return _window_attention(q_aug, k_aug, v)
        v_pad = F.pad(v, (0, height + width))  # SDPA wants one width for q, k and v
        return F.scaled_dot_product_attention(q_aug, k_aug, v_pad, scale=1.0)[..., : v.shape[-1]]

    def _rel_pos_terms(self, q, height: int, width: int):
        """The bias terms rel_h (B, heads, N, H) and rel_w (B, heads, N, W) of each query."""
        batch, heads, n_tokens, head_dim = q.shape
        rh = _rel_pos_table(height, self.rel_pos_h).to(q.dtype)  # (H, H, head_dim)
        rw = _rel_pos_table(width, self.rel_pos_w).to(q.dtype)  # (W, W, head_dim)
        grid_q = q.reshape(batch, heads, height, width, head_dim)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rh).reshape(batch, heads, n_tokens, height)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rw).reshape(batch, heads, n_tokens, width)
        return rel_h, rel_w


def _rel_pos_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """``get_rel_pos(size, size, rel_pos)``: (size, size, head_dim) embeddings of each query
    and key offset. Where the table fits ``size`` (no resizing) the offsets are made on the
    table's device: the stock function makes them on the host and copies them over in every
    block, which a CUDA graph cannot capture."""
    if rel_pos.shape[0] != 2 * size - 1:
        return get_rel_pos(size, size, rel_pos)
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + (size - 1)]


def _window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q @ k^T) @ v for (B, heads, N, D) q, k and (B, heads, N, Dv) v; unscaled."""
    batch, heads, n_tokens, width = q.shape
    scores = q.reshape(-1, n_tokens, width) @ k.reshape(-1, n_tokens, width).transpose(1, 2)
    out = scores.softmax(dim=-1).to(v.dtype) @ v.reshape(-1, n_tokens, v.shape[-1])
    return out.view(batch, heads, n_tokens, -1)


class FastViTBlock(Block):
    """SAM ViT block; same parameters and result.

    Without gradients (inference), a windowed block projects q, k, v of the image's own tokens
    only and cuts them into windows whose padding gets the value a padding token has (SAM pads
    after the norm: a zero token's q, k, v), instead of padding the normalised image and
    projecting 16% more tokens (64 x 64 in 14 x 14 windows); the output projection also runs on
    the image's tokens only. Both residual adds are fused into the projection before them, and
    the MLP's GELU into its first layer, where :func:`.onednn.fusable`. With gradients the
    stock forward runs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.training
            or torch.is_grad_enabled()
            or not isinstance(self.attn, FastRelPosAttention)
        ):
            return super().forward(x)
        attended = self._windowed(x) if self.window_size > 0 else self._global(x)
        x = linear_add(attended, self.attn.proj, x)
        mlp = self.mlp
        if not is_gelu(mlp.act):
            return x + mlp(self.norm2(x))
        return linear_add(linear_gelu(self.norm2(x), mlp.lin1), mlp.lin2, x)

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over all tokens of (B, H, W, C) ``x``, before the output projection."""
        attn = self.attn
        batch, height, width, _ = x.shape
        qkv = attn.qkv(self.norm1(x)).view(batch, height * width, 3, attn.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        out = attn._rel_pos_attention(q, k, v, height, width)
        return out.transpose(1, 2).reshape(batch, height, width, -1)

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention of (B, H, W, C) ``x``, before the output projection."""
        attn, window = self.attn, self.window_size
        qkv = attn.qkv(self.norm1(x))
        fill = attn.qkv(x.new_zeros(1, x.shape[-1]))[0]  # SAM pads after the norm: zeros
        windows = to_windows(qkv, window, fill.to(qkv.dtype), 1)  # (n, 1, N, 3C)
        n_windows, n_tokens = windows.shape[0], window * window
        qkv = windows.view(n_windows, n_tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (n, heads, N, head_dim)
        out = attn._rel_pos_attention(q, k, v, window, window)
        out = out.transpose(1, 2).reshape(n_windows, 1, n_tokens, -1)
        return from_windows(out, x.shape[1], x.shape[2], window)


def use_fast_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every SAM ViT block and attention module in ``model`` to the fast path, in place.

    Idempotent; returns ``model``. TinyViT (vit_t) encoders are left as they are.
    """
    for module in model.modules():
        if type(module) is Attention:
            module.__class__ = FastRelPosAttention
        elif type(module) is Block:
            module.__class__ = FastViTBlock
    return model


def use_stock_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`use_fast_attention` (for reference measurements and tests)."""
    for module in model.modules():
        if type(module) is FastRelPosAttention:
            module.__class__ = Attention
        elif type(module) is FastViTBlock:
            module.__class__ = Block
    return model


def channels_last(pixels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) ``pixels`` channels-last in memory, with strides that say so to every kernel.

    A batch of one made by a view (``x.permute(2, 0, 1)[None]``) has the batch stride C,
    which ``is_contiguous(memory_format=torch.channels_last)`` ignores (a size-1 dimension)
    but the convolutions' layout check reads: it took such pixels for channels-first, and
    ViT-B's residual stream became a strided view of a channels-first map. The batch
    stride of a batch of one addresses nothing, so setting it is free. (ViT-B at 1024 px in
    bf16 on a 2-core AVX-512 BF16 EPYC: 3.52 -> 3.28 s, best of 14 alternating calls; its
    layer norms and residual adds ran 2-3x slower on the strided view.)
    """
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    batch, channels, height, width = pixels.shape
    if batch != 1:
        return pixels
    strides = (channels * height * width, 1, width * channels, channels)
    return pixels.as_strided(pixels.shape, strides)


def encode(sam: Sam, pixels: torch.Tensor, cuda_graph: bool = False) -> torch.Tensor:
    """Image embeddings (B, C, E, E) of preprocessed (B, 3, S, S) ``pixels``.

    The pixels go in channels-last (:func:`channels_last`). SAM's ViT turns its patch
    convolution's (B, C, H, W) output into (B, H, W, C) with a permute: from a channels-last
    convolution that view is contiguous, else every residual add and layer norm of all
    blocks runs on strided memory (ViT-B at 1024 px: 1.66 s -> 1.25 s in bf16 on a 2-core
    CPU). TinyViT's convolutions also skip their layout conversions (vit_t about twice as
    fast on CPU). Same result as the stock call. With ``cuda_graph``, CUDA inference replays
    the encoder from a captured graph (:mod:`~napari_samtune.core.cuda_graphs`): on a fast
    GPU the kernels' launches, not the kernels, took most of the time (H200, bf16: vit_t
    12.0 -> 4.1 ms, vit_b 12.9 -> 7.8 ms). The graph keeps its activations' memory, so
    training (which measured its memory without it) does not ask for one.
    """
    pixels = channels_last(pixels)
    if cuda_graph and graphs_wanted(sam.image_encoder, pixels):
        return graphed_encoder_call(sam.image_encoder, pixels)
    return sam.image_encoder(pixels)
