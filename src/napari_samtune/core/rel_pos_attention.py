"""Exact attention with SAM's decomposed relative-position bias, a cache-sized piece at a time.

SAM's ViT attends with ``softmax(scale * q @ k^T + rel_h[i, kh(j)] + rel_w[i, kw(j)]) @ v``,
key ``j`` at row ``kh(j)`` and column ``kw(j)`` of the (H, W) token grid. Stock code builds
the whole (heads, N, N) score tensor and keeps it for the backward pass (ViT-B global
attention at 1024 px: 805 MB per block). Here the bias is built for a piece of the queries
at a time (at most :data:`BIAS_CHUNK_ELEMENTS` scores), so it stays in cache:

* :func:`bias_mask_attention`: the forward pass, the bias as SDPA's additive mask;
* :class:`BiasMaskAttention`: the same with a gradient. The backward pass recomputes each
  piece's probabilities and forms the gradients of q, k, v and both bias tables from them
  (flash-attention style); nothing of size N x N is kept between the passes.

On a CPU in fp32 this is the fastest exact kernel with a gradient: folding the bias into q
and k for SDPA triples the score products' width instead (see ``fast_encoder``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

# fp32 scores per piece: 8 MB stays in cache between building the bias and reading it
BIAS_CHUNK_ELEMENTS = 1 << 21


def _pieces(groups: int, n_queries: int, n_keys: int) -> Iterator[tuple[slice, slice]]:
    """(groups, query rows) slices covering ``groups`` x ``n_queries`` queries, each piece
    with at most ``BIAS_CHUNK_ELEMENTS`` scores (at least one query row of one group)."""
    rows = max(1, BIAS_CHUNK_ELEMENTS // n_keys)
    if rows < n_queries:
        for group in range(groups):
            for start in range(0, n_queries, rows):
                yield slice(group, group + 1), slice(start, start + rows)
        return
    per_piece = max(1, rows // n_queries)
    for start in range(0, groups, per_piece):
        yield slice(start, start + per_piece), slice(None)


def _bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """(..., R, H * W) bias from (..., R, H) row and (..., R, W) column terms, keys row-major."""
    return (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)


def bias_mask_attention(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """softmax(scale * q @ k^T + rel_h[..., kh] + rel_w[..., kw]) @ v, without a gradient.

    q, k, v: (B, heads, N, D); rel_h (B, heads, N, H), rel_w (B, heads, N, W), N = H * W,
    keys in row-major (kh, kw) order. Returns (B, heads, N, D).
    """
    batch, heads, n_tokens, _ = q.shape
    if q.dtype in (torch.bfloat16, torch.float16):
        return _product_pieces(q, k, v, rel_h, rel_w, scale)
    out = q.new_empty(batch, heads, n_tokens, v.shape[-1])
    # SDPA's batch is the image batch (windows): one head at a time keeps the call simple
    rows = max(1, min(n_tokens, BIAS_CHUNK_ELEMENTS // (batch * k.shape[2])))
    for head in range(heads):
        h = slice(head, head + 1)
        for start in range(0, n_tokens, rows):
            r = slice(start, start + rows)
            bias = _bias(rel_h[:, h, r], rel_w[:, h, r])
            out[:, h, r] = F.scaled_dot_product_attention(
                q[:, h, r], k[:, h], v[:, h], attn_mask=bias, scale=scale
            )
    return out


LOW_PRECISION_CHUNK_ELEMENTS = 1 << 20  # bf16 scores per piece of _product_pieces


def _product_pieces(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """:func:`bias_mask_attention` in bf16 (or fp16) by plain products, a piece at a time:
    the scores' product, the bias added in place, the softmax, the product with v. (The
    softmax of bf16 scores computes in fp32 and rounds once: ViT-B's global attention gave
    the same bits as a softmax to fp32 and a cast, in 253 instead of 285 ms.)

    q, k and v are first copied once into head-major order (q times ``scale``, k
    transposed), so that each piece's products read contiguous operands instead of copying
    them. On a 2-core AVX-512 BF16 EPYC, SDPA's CPU kernel with a bias mask took 0.44 s for
    one ViT-B global attention (12 heads, 4096 tokens) and this 0.36 s (pieces of 1M scores;
    2M took 0.65 s).
    """
    batch, heads, n_tokens, _ = q.shape
    rows = max(1, min(n_tokens, LOW_PRECISION_CHUNK_ELEMENTS // (batch * k.shape[2])))
    queries = (q * scale).transpose(0, 1).contiguous()  # (heads, B, N, D)
    keys_t = k.permute(1, 0, 3, 2).contiguous()  # (heads, B, D, N)
    values = v.transpose(0, 1).contiguous()
    out = q.new_empty(heads, batch, n_tokens, v.shape[-1])
    for head in range(heads):
        for start in range(0, n_tokens, rows):
            r = slice(start, start + rows)
            scores = torch.matmul(queries[head, :, r], keys_t[head])
            scores += _bias(rel_h[:, head, r], rel_w[:, head, r])
            probabilities = torch.softmax(scores, dim=-1)
            torch.matmul(probabilities, values[head], out=out[head, :, r])
    return out.transpose(0, 1)


class BiasMaskAttention(torch.autograd.Function):
    """:func:`bias_mask_attention` with gradients for q, k, v, rel_h and rel_w.

    Saves q, k, v, the bias terms and the output (all O(N)); the backward pass recomputes
    the probabilities P of each piece and uses dS = P * (dO v^T - rowsum(dO * O)).
    """

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale: float):
        out = bias_mask_attention(q, k, v, rel_h, rel_w, scale)
        ctx.save_for_backward(q, k, v, rel_h, rel_w, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel_h, rel_w, out = ctx.saved_tensors
        grads = _attention_backward(q, k, v, rel_h, rel_w, out, grad_out, ctx.scale)
        return (*grads, None)


def _attention_backward(q, k, v, rel_h, rel_w, out, grad_out, scale: float):
    """Gradients (dq, dk, dv, d rel_h, d rel_w) of :func:`bias_mask_attention`."""
    batch, heads, n_queries, _ = q.shape
    size_h, size_w = rel_h.shape[-1], rel_w.shape[-1]

    def flat(t):  # (B, heads, N, X) -> (B * heads, N, X)
        return t.reshape(batch * heads, t.shape[2], t.shape[3])

    q, k, v, out, grad_out, rel_h, rel_w = map(flat, (q, k, v, out, grad_out, rel_h, rel_w))
    grad_q, grad_h, grad_w = (torch.empty_like(t) for t in (q, rel_h, rel_w))
    grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(v)
    delta = (grad_out * out).sum(-1, keepdim=True)  # rowsum(dP * P) = rowsum(dO * O)
    buffer = None  # the pieces' scores, one allocation for all (7% faster than one per piece)
    for g, r in _pieces(len(q), n_queries, k.shape[1]):
        q_part, grad_part, h_part = q[g, r], grad_out[g, r], rel_h[g, r]
        n_scores = h_part.shape[0] * h_part.shape[1] * k.shape[1]
        if buffer is None or len(buffer) < n_scores:
            buffer = q.new_empty(n_scores)
        grid = buffer[:n_scores].view(*h_part.shape, size_w)
        scores = torch.add(h_part[..., None], rel_w[g, r][..., None, :], out=grid).flatten(-2)
        probs = scores.baddbmm_(q_part, k[g].mT, alpha=scale).softmax(dim=-1)  # (g, R, N)
        grad_v[g].baddbmm_(probs.mT, grad_part)
        grad_scores = torch.bmm(grad_part, v[g].mT).sub_(delta[g, r]).mul_(probs)
        grad_q[g, r] = torch.bmm(grad_scores, k[g])
        grad_k[g].baddbmm_(grad_scores.mT, q_part)
        grid = grad_scores.view(*grad_scores.shape[:2], size_h, size_w)
        grad_h[g, r], grad_w[g, r] = grid.sum(-1), grid.sum(-2)
    grad_q.mul_(scale)
    grad_k.mul_(scale)
    grads = (grad_q, grad_k, grad_v, grad_h, grad_w)
    return tuple(t.view(batch, heads, t.shape[1], t.shape[2]) for t in grads)
