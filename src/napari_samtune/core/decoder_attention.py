"""SAM's mask decoder attentions between prompt tokens and image tokens, small side folded in.

For :mod:`~napari_samtune.core.fast_decoder` (its comment below the imports says why): n
prompts of T tokens attend to N = E*E image tokens of C channels, or the image to them. The
scores of the T tokens against the image are ``(q_t W_k) . image`` and the values are mixed
before they are projected, so the image side costs (N x C x 8T) products instead of
(N x C x C/2) ones. Each function gives the stock ``Attention`` module's output (or its
softmax weights) up to rounding; an image of batch 1 is shared by all n prompts.
"""

from __future__ import annotations

import torch

from napari_samtune.core.low_rank_decoder import attention_heads
from napari_samtune.core.onednn import batched_matmul


def tokens_to_image(attention, q_in, keys_pe, keys):
    """``Attention(q=q_in, k=keys_pe, v=keys)`` for (n, T, C) queries and (1 or n, N, C) keys.

    Scores: ``q_h . (W_k,h x + b_k,h) = (q_h W_k,h) . x + q_h . b_k,h`` (the second term is
    constant along the softmax but kept: it is part of the stock graph). Values: the softmax
    weights sum to one, so ``sum_j p_j (W_v,h x_j + b_v,h) = W_v,h (sum_j p_j x_j) + b_v,h``.
    """
    n, n_tokens, channels = q_in.shape
    heads, head_dim, scale = attention_heads(attention)
    q = attention.q_proj(q_in).view(n, n_tokens, heads, head_dim)
    w_k = attention.k_proj.weight.view(heads, head_dim, channels)
    q_k = torch.einsum("nthd,hdc->nhtc", q, w_k).reshape(n, heads * n_tokens, channels)
    q_b = torch.einsum("nthd,hd->nht", q, attention.k_proj.bias.view(heads, head_dim))
    scores = _scores(keys_pe, q_k * scale) + (q_b * scale).reshape(n, -1, 1).to(q_k.dtype)
    probs = scores.softmax(dim=-1)  # (n, heads*T, N)
    mixed = _batched_mm(probs, keys).view(n, heads, n_tokens, channels)
    w_v = attention.v_proj.weight.view(heads, head_dim, channels)
    out = torch.einsum("nhtc,hdc->nthd", mixed, w_v)
    out = out + attention.v_proj.bias.view(heads, head_dim).to(out.dtype)
    return attention.out_proj(out.reshape(n, n_tokens, heads * head_dim))


def image_to_tokens(attention, keys_pe, k_in):
    """The (n, N, heads*T) softmax weights of ``Attention(q=keys_pe, k=k_in, v=v_in)`` for
    (1 or n, N, C) image queries and (n, T, C) tokens: the output is ``probs @ values`` with
    the values of :func:`value_heads`.

    Scores: ``(W_q,h x + b_q,h) . k_h = x . (W_q,h^T k_h) + b_q,h . k_h``; output: the
    projection ``W_o`` folded into the values, ``sum_h,t p_h,t (W_o,h v_h,t)``.
    """
    n, n_tokens, channels = k_in.shape
    heads, head_dim, scale = attention_heads(attention)
    k = attention.k_proj(k_in).view(n, n_tokens, heads, head_dim)
    w_q = attention.q_proj.weight.view(heads, head_dim, channels)
    q_k = torch.einsum("nthd,hdc->nhtc", k, w_q).reshape(n, heads * n_tokens, channels)
    q_b = torch.einsum("nthd,hd->nht", k, attention.q_proj.bias.view(heads, head_dim))
    scores = _scores(keys_pe, q_k * scale) + (q_b * scale).reshape(n, -1, 1).to(q_k.dtype)
    # softmax over the T tokens: a middle axis here, which is far faster than a last axis of ~8
    probs = scores.view(n, heads, n_tokens, -1).softmax(dim=2).view(n, heads * n_tokens, -1)
    return probs.transpose(1, 2)


def value_heads(attention, v_in):
    """The (n, T, heads, d) value projections ``v`` of (n, T, C) value tokens ``v_in``, and
    the (n, heads*T, C) values ``W_o,h v_h,t + b_o / heads`` (head-major): ``probs @ values``
    is the attention's output for (n, N, heads*T) softmax weights. The output projection is
    folded into the T values instead of applied to the N outputs, and so is its bias (each
    head's weights sum to one: ``b_o / heads`` on every value adds ``b_o``)."""
    n, n_tokens, channels = v_in.shape
    heads, head_dim, _ = attention_heads(attention)
    v = attention.v_proj(v_in).view(n, n_tokens, heads, head_dim)
    w_o = attention.out_proj.weight.view(channels, heads, head_dim)
    values = torch.einsum("nthd,chd->nhtc", v, w_o) + attention.out_proj.bias / heads
    return v, values.reshape(n, heads * n_tokens, channels)


def add_mixed(residual, probs, values):
    """``residual + probs @ values``, the add fused into the product (except under autocast,
    which would round the float32 ``residual`` to the compute dtype)."""
    if torch.is_autocast_enabled(residual.device.type):
        return residual + batched_matmul(probs, values)
    return torch.baddbmm(residual, probs, values)


def tokens_to_projected_image(attention, q_in, keys_t, values):
    """``Attention(q=q_in, k=., v=.)`` for (n, T, C) queries against an image's projected
    (heads, d, N) keys and (heads, N, d) values: the stock computation, per head."""
    n, n_tokens, _ = q_in.shape
    heads, head_dim, scale = attention_heads(attention)
    q = attention.q_proj(q_in).view(n, n_tokens, heads, head_dim).permute(2, 0, 1, 3)
    q = q.reshape(heads, n * n_tokens, head_dim).to(keys_t.dtype)
    probs = ((q @ keys_t) * scale).softmax(dim=-1)  # (heads, n*T, N)
    out = (probs @ values).view(heads, n, n_tokens, head_dim).permute(1, 2, 0, 3)
    return attention.out_proj(out.reshape(n, n_tokens, heads * head_dim))


def projected_image_to_tokens(attention, queries_t, k_in):
    """The softmax weights of :func:`image_to_tokens` for an image's projected
    (heads, d, N) queries and (n, T, C) tokens."""
    n, n_tokens, _ = k_in.shape
    heads, head_dim, scale = attention_heads(attention)
    k = attention.k_proj(k_in).view(n, n_tokens, heads, head_dim).permute(2, 0, 1, 3)
    k = k.reshape(heads, n * n_tokens, head_dim).to(queries_t.dtype)
    scores = (k @ queries_t) * scale  # (heads, n*T, N)
    # softmax over the T tokens (a middle axis); then (n, N, heads*T), a view for n = 1
    probs = scores.view(heads, n, n_tokens, -1).softmax(dim=2).transpose(0, 1)
    return probs.reshape(n, heads * n_tokens, -1).transpose(1, 2)


def _scores(image: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``small (n, R, C) @ image (1 or n, N, C)^T`` as a contiguous (n, R, N) tensor.

    Computed as ``image @ small^T`` so that the gradient of the large image side comes out
    contiguous; a shared (batch 1) image is multiplied once for all n.
    """
    n, rows, channels = small.shape
    if len(image) == 1:
        # a reshape, not image[0]: indexing's backward would zero-fill and copy an (N, C) grad
        product = image.reshape(-1, channels) @ small.reshape(n * rows, channels).T  # (N, n*R)
        return product.view(-1, n, rows).permute(1, 2, 0).contiguous()
    return (image @ small.transpose(1, 2)).transpose(1, 2).contiguous()


def _batched_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (n, X, K) @ b (n or 1, K, Y)``; a shared ``b`` is used once for all n, not copied."""
    if len(b) == 1 and len(a) > 1:
        return (a.reshape(1, -1, a.shape[-1]) @ b).view(len(a), -1, b.shape[-1])
    return batched_matmul(a, b)
