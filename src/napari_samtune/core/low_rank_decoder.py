"""SAM's two-way transformer for prompts on a fixed image, without per-prompt image tokens.

Inference only (no gradients, float32, no mask input). Each decoder layer changes the image
tokens by a rank-``heads * T`` update (the image -> token attention's output, ``P V``) and a
layer norm. Unrolled from the first layer's input ``k0`` (embedding + no-mask embedding,
centred per token: ``c = k0 - mean(k0)``), the tokens after layer l are::

    keys_l = s_l * (c * gamma_l) + cols_l @ rows_l + b_l

with per-token scales ``s_l`` (products of the norms' 1/std), ``gamma_l`` the product of the
norms' weights, ``b_l`` the last norm's bias and (N x R) ``cols_l``, (R x C) ``rows_l`` of
R = 56 (one point) to 116 columns. Every product of the tokens with a weight ``W`` then is
``s_l * ((c * gamma_l) @ W) + cols_l @ (rows_l @ W) + b_l @ W``, whose first term is computed
once per image (:class:`LowRankImage`) and whose second has R instead of C = 256 columns.
The attention scores of the T prompt tokens come out per head from those projections
(:class:`Keys`), and the norms' statistics from per-token moments (:func:`first_keys`,
:func:`second_keys`): no prompt ever materialises an (N x C) map of image tokens. For one
point on a 64 x 64 embedding that is ~0.25 instead of ~0.8 GFLOP of image-sized products and
no 4 MB passes, about as fast on 2 cores (products with so few columns run at half the matmul
rate); a batch of 64 points no longer streams 64 maps of 4 MB per layer (0.85x the time,
900 MiB less memory in automatic segmentation).

Same result as :func:`~napari_samtune.core.fast_decoder.decode_prompts` up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_samtune.core.mask_upscaling import transposed_conv_weight
from napari_samtune.core.weight_cache import kept


def attention_heads(attention) -> tuple[int, int, float]:
    """A SAM decoder attention's heads, per-head width and score scale (1 / sqrt(width))."""
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    return heads, head_dim, head_dim**-0.5


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(M, heads * d) -> contiguous (heads, M, d)."""
    return x.view(len(x), heads, -1).transpose(0, 1).contiguous()


def _per_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, T, heads * d) -> (heads, n * T, d)."""
    n, n_tokens, _ = x.shape
    return x.view(n, n_tokens, heads, -1).permute(2, 0, 1, 3).reshape(heads, n * n_tokens, -1)


@dataclass(frozen=True)
class Projection:
    """``x @ W^T + b`` of one level's image tokens ``x``, for ``heads`` blocks of ``W``'s rows:
    ``scale * base + cols @ (rows @ W^T) + shift``."""

    weight: torch.Tensor  # (heads * d, C) W
    base: torch.Tensor  # (heads, N, d) (c * gamma_l) @ W^T
    shift: torch.Tensor  # (heads, N or 1, d) b_l @ W^T + b (+ pe @ W^T for keys and queries)
    both_t: torch.Tensor | None = None  # (heads, d, 2N) [base | shift] transposed, with pe

    @classmethod
    def of(cls, linear, heads: int, base, level_bias, pe=None) -> Projection:
        """``linear``: a module with ``weight`` and ``bias``, or the pair. With ``pe`` (keys
        and queries, for :meth:`Keys.scores`; (1, N, C)) both parts are kept side by side,
        transposed."""
        weight, bias = (linear.weight, linear.bias) if hasattr(linear, "weight") else linear
        base = _split(base @ weight.T, heads)
        if pe is None:
            return cls(weight, base, _split(F.linear(level_bias[None], weight, bias), heads))
        shift = _position_shift(linear, heads, level_bias, pe)
        both_t = torch.cat([base, shift], dim=1).mT.contiguous()
        n_tokens = base.shape[1]
        return cls(weight, both_t[..., :n_tokens].mT, both_t[..., n_tokens:].mT, both_t)


def _position_shift(linear, heads: int, level_bias, pe: torch.Tensor) -> torch.Tensor:
    """(heads, N, d) ``(pe + level_bias) @ W^T + b`` of an ``nn.Linear`` and a (1, N, C)
    positional encoding: the same for every image, so kept (:func:`.weight_cache.kept`)
    while the weights and ``pe`` (which :func:`.fast_decoder.dense_pe` keeps) stay: three
    of them took ~4.5 ms of each image's projections on 2 cores."""
    weight, bias = linear.weight, linear.bias
    return kept(
        linear,
        ("position_shift", heads),
        [pe, weight, bias, level_bias],
        lambda: _split(F.linear(pe[0] + level_bias, weight, bias), heads),
    )


@dataclass(frozen=True)
class _Moments:
    """Per-token sums of ``c`` (N,) with weights, and ``c`` projected by an image -> token
    attention's output projection ``W_o``: what the norms' statistics need of the image."""

    sum: torch.Tensor  # (N,) c . w
    square: torch.Tensor  # (N,) (c * c) . w
    out_t: torch.Tensor  # (heads, d, N) (c * w) @ W_o per head, transposed
    out_bias: torch.Tensor  # (N,) (c * w) . b_o

    @classmethod
    def of(cls, centred, weight, attention) -> _Moments:
        heads = attention.num_heads
        weighted = centred * weight
        out_proj = attention.out_proj
        return cls(
            weighted.sum(-1),
            (weighted * centred).sum(-1),
            _split(weighted @ out_proj.weight, heads).mT.contiguous(),
            weighted @ out_proj.bias,
        )


@dataclass(frozen=True)
class LowRankImage:
    """What prompts on one image need of its tokens (27 MiB for N = 64 x 64 tokens: eleven
    (N x 128) projections and one (N x 256)), computed once per image in ~55 ms on 2 cores."""

    first: _Moments  # of c, weights 1, layer 1's image -> token output projection
    second_g2: _Moments  # of c, weights g_1^2, layer 1's output projection
    second_g: _Moments  # of c, weights g_1, layer 2's output projection
    bias_dot: torch.Tensor  # (N,) c . (g_1 * (b_1 - mean b_1))
    keys: Projection  # layer 2 token -> image keys (level 1, with pe)
    values: Projection  # layer 2 token -> image values (level 1)
    queries: Projection  # layer 2 image -> token queries (level 1, with pe)
    final_keys: Projection  # final attention's keys (level 2, with pe)
    final_values: Projection  # final attention's values (level 2)
    upscaling: Projection  # the first upscaling convolution (level 2, one "head")

    @classmethod
    def of(cls, decoder, tokens: torch.Tensor, pe: torch.Tensor) -> LowRankImage:
        """For (1, N, C) ``tokens`` (embedding + no-mask embedding) and positional encoding
        ``pe``."""
        layer1, layer2 = decoder.transformer.layers
        g1, b1 = layer1.norm4.weight, layer1.norm4.bias
        g2, b2 = layer2.norm4.weight, layer2.norm4.bias
        centred = tokens[0] - tokens[0].mean(-1, keepdim=True)
        level1, level2 = centred * g1, centred * g1 * g2
        attn1_out = layer1.cross_attn_image_to_token
        final = decoder.transformer.final_attn_token_to_image
        upscaling = transposed_conv_weight(decoder.output_upscaling[0])
        to_image, to_tokens = layer2.cross_attn_token_to_image, layer2.cross_attn_image_to_token
        return cls(
            _Moments.of(centred, torch.ones_like(g1), attn1_out),
            _Moments.of(centred, g1 * g1, attn1_out),
            _Moments.of(centred, g1, to_tokens),
            centred @ (g1 * (b1 - b1.mean())),
            Projection.of(to_image.k_proj, to_image.num_heads, level1, b1, pe),
            Projection.of(to_image.v_proj, to_image.num_heads, level1, b1),
            Projection.of(to_tokens.q_proj, to_tokens.num_heads, level1, b1, pe),
            Projection.of(final.k_proj, final.num_heads, level2, b2, pe),
            Projection.of(final.v_proj, final.num_heads, level2, b2),
            Projection.of(upscaling, 1, level2, b2),
        )


@dataclass(frozen=True)
class Keys:
    """One level's image tokens for n prompts: ``scale * (c * gamma) + cols @ rows + b``.

    Per-token factors are kept transposed, tokens last, as the softmax weights come.
    """

    scale: torch.Tensor  # (n, 1, N)
    cols_t: torch.Tensor  # (n, R, N) cols, transposed
    rows: torch.Tensor  # (n, R, C)

    def __getitem__(self, prompts) -> Keys:
        """The tokens of some of the n prompts (an index along the first axis)."""
        return Keys(self.scale[prompts], self.cols_t[prompts], self.rows[prompts])

    def scores(self, projection: Projection, small: torch.Tensor) -> torch.Tensor:
        """(n, heads, T, N) products of (n, T, heads * d) ``small`` with each head's projected
        tokens."""
        n, n_tokens, _ = small.shape
        heads, _, head_dim = projection.base.shape
        n_pixels = self.scale.shape[-1]
        # both image-side parts in one product: (n, heads, T, 2N)
        image = (_per_head(small, heads) @ projection.both_t).view(heads, n, n_tokens, -1)
        image = image.transpose(0, 1)
        shift = image[..., n_pixels:].reshape(n, heads * n_tokens, n_pixels)
        rows = (self.rows @ projection.weight.T).view(n, -1, heads, head_dim)
        low = torch.einsum("nthd,nrhd->nhtr", small.view(n, n_tokens, heads, head_dim), rows)
        scores = torch.baddbmm(shift, low.reshape(n, heads * n_tokens, -1), self.cols_t)
        scores = scores.view(n, heads, n_tokens, n_pixels)
        return scores.addcmul_(image[..., :n_pixels], self.scale[:, None])

    def mix(self, projection: Projection, probs: torch.Tensor) -> torch.Tensor:
        """(n, T, heads * d): each head's projected tokens weighted by (n, heads, T, N)
        ``probs``, which sum to 1 over the tokens."""
        n, heads, n_tokens, n_pixels = probs.shape
        head_dim = projection.base.shape[-1]
        scaled = (probs * self.scale[:, None]).transpose(0, 1)  # (heads, n, T, N)
        base = scaled.reshape(heads, n * n_tokens, n_pixels) @ projection.base
        base = base.view(heads, n, n_tokens, head_dim).permute(1, 2, 0, 3)
        mixed_cols = probs.reshape(n, heads * n_tokens, n_pixels) @ self.cols_t.mT
        rows = (self.rows @ projection.weight.T).view(n, -1, heads, head_dim)
        low = torch.einsum(
            "nhtr,nrhd->nthd", mixed_cols.view(n, heads, n_tokens, -1), rows
        )  # (n, T, heads, d)
        shift = projection.shift.view(heads, head_dim)  # constant: the probs sum to one
        return (base + low + shift).reshape(n, n_tokens, heads * head_dim)

    def chunked_product(self, projection: Projection) -> Callable[[int, int], torch.Tensor]:
        """``product(start, stop)``: (n, stop - start, K), tokens ``start:stop`` times a
        one-"head" projection (the rows' projection is made once for all chunks)."""
        rows = self.rows @ projection.weight.T
        base, shift = projection.base[0], projection.shift[0]

        def product(start: int, stop: int) -> torch.Tensor:
            out = torch.addcmul(shift, self.scale[:, :, start:stop].mT, base[start:stop])
            return out.baddbmm_(self.cols_t[:, :, start:stop].mT, rows)

        return product


@dataclass(frozen=True)
class Update:
    """An image -> token attention's change of the image tokens, ``probs @ values``, with
    the values' per-head projections ``v`` (values_h,t = W_o,h v_h,t + b_o / heads)."""

    probs_t: torch.Tensor  # (n, R, N) softmax weights, R = heads * T (head-major), transposed
    v: torch.Tensor  # (n, T, heads, d)
    values: torch.Tensor  # (n, R, C)

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The values' per-row means (n, R) and the values minus them."""
        means = self.values.mean(-1)
        return means, self.values - means[..., None]

    def dots(self, moments: _Moments) -> torch.Tensor:
        """(n, R, N): ``(c * w) . values_r`` for each value row and token."""
        n, n_tokens, heads, _ = self.v.shape
        bias = (moments.out_bias / heads).expand(heads, n * n_tokens, -1)
        per_head = torch.baddbmm(bias, _per_head(self.v.flatten(2), heads), moments.out_t)
        per_head = per_head.view(heads, n, n_tokens, -1).transpose(0, 1)
        return per_head.reshape(n, heads * n_tokens, -1)

    def quadratic(self, linear_t: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        """(n, N) ``sum_r p_r (2 linear_r + (gram p)_r)`` for (n, R, N) ``linear_t`` and
        symmetric (n, R, R) ``gram``: the cross and square terms of ``|x + p @ V|^2``."""
        return (torch.baddbmm(linear_t, gram, self.probs_t, beta=2) * self.probs_t).sum(1)


@dataclass(frozen=True)
class _Normed:
    """Layer 1's update with its norm's 1/std and the values' means and centred values."""

    update: Update
    rstd: torch.Tensor  # (n, N)
    means: torch.Tensor  # (n, R)
    centred: torch.Tensor  # (n, R, C)


def first_keys(image: LowRankImage, norm1, update: Update) -> tuple[Keys, _Normed]:
    """The tokens after layer 1's norm of ``k0 + P V``. The centred tokens
    ``y = c + P (V - mean)`` have ``|y|^2 = |c|^2 + 2 P (c . V) + P (V_c V_c^T) P^T``."""
    means, centred = update.centred()
    square = image.first.square + update.quadratic(update.dots(image.first), centred @ centred.mT)
    rstd = torch.rsqrt(square / centred.shape[-1] + norm1.eps)[:, None]
    keys = Keys(rstd, rstd * update.probs_t, centred * norm1.weight)
    return keys, _Normed(update, rstd[:, 0], means, centred)


def second_keys(image: LowRankImage, norm1, norm2, first: _Normed, second: Update) -> Keys:
    """The tokens after layer 2's norm of ``keys_1 + P_2 V_2``, ``keys_1 = r_1 (y_1 g_1) + b_1``.

    With ``z = y_1 g_1 - mu`` (mu its mean) and ``b~ = b_1 - mean(b_1)``, the centred input is
    ``x = r_1 z + b~ + P_2 V_2c``, whose square sum expands into the moments of
    :class:`LowRankImage`; the output ``r_2 x g_2 + b_2`` is then, over ``c g_1 g_2``,
    ``r_1 r_2 [P_1 | -mu] [V_1c g_1 g_2; g_2] + r_2 [1 | P_2] [b~ g_2; V_2c g_2]``.
    """
    update1, r1, centred1 = first.update, first.rstd, first.centred
    g1, bias = norm1.weight, norm1.bias - norm1.bias.mean()
    channels = len(g1)
    # P_1 @ rows for: mu, the values' means, z . b~
    rows1 = torch.stack([centred1 @ g1, first.means, centred1 @ (g1 * bias)], dim=1)
    mu_rows, means_rows, bias_rows = (rows1 @ update1.probs_t).unbind(1)
    mu = (image.second_g.sum + mu_rows) / channels
    # sum g1^2 y1^2, with c . (g1^2 V_1c) = (c g1^2) . V_1 - (c . g1^2) mean(V_1)
    gram = (centred1 * (g1 * g1)) @ centred1.mT
    z_square = image.second_g2.square + update1.quadratic(update1.dots(image.second_g2), gram)
    z_square -= 2 * image.second_g2.sum * means_rows + channels * mu * mu
    z_bias = image.bias_dot + bias_rows  # z . b~
    means2, centred2 = second.centred()
    # z . V_2c = (y_1 g_1) . V_2 - mu sum(V_2), with y_1 g_1 = c g_1 + P_1 (V_1c g_1); the
    # P_2 terms: sum_r p_r (2 r_1 (z . V_2c,r) + 2 b~ . V_2,r + (P_2 V_2c V_2c^T)_r)
    z_values = second.dots(image.second_g)
    z_values.baddbmm_(second.values @ (centred1 * g1).mT, update1.probs_t)
    z_values.mul_(2 * r1[:, None]).baddbmm_(centred2 @ centred2.mT, second.probs_t)
    rows2 = torch.stack([means2, second.values @ bias], dim=1)
    means_rows2, bias_rows2 = (rows2 @ second.probs_t).unbind(1)
    square = r1 * r1 * z_square + 2 * r1 * (z_bias - channels * mu * means_rows2) + bias @ bias
    square += (z_values * second.probs_t).sum(1) + 2 * bias_rows2
    r2 = torch.rsqrt(square / channels + norm2.eps)[:, None]  # (n, 1, N)
    scale, g2 = r1[:, None] * r2, norm2.weight
    cols = [scale * update1.probs_t, -scale * mu[:, None], r2, r2 * second.probs_t]
    fixed = torch.stack([g2, bias * g2]).expand(len(r2), -1, -1)
    rows = [centred1 * (g1 * g2), fixed, centred2 * g2]
    return Keys(scale, torch.cat(cols, dim=1), torch.cat(rows, dim=1))


def low_rank_attention(attention, keys: Keys, key_proj, value_proj, q_in) -> torch.Tensor:
    """``Attention(q=q_in, k=tokens + pe, v=tokens)`` for (n, T, C) queries against one
    level's image tokens, from their projections."""
    scale = attention_heads(attention)[2]
    probs = keys.scores(key_proj, attention.q_proj(q_in) * scale).softmax(dim=-1)
    return attention.out_proj(keys.mix(value_proj, probs))
