import pytest
import torch

from napari_samtune.core import rel_pos_attention
from napari_samtune.core.rel_pos_attention import BiasMaskAttention, bias_mask_attention


def _reference(q, k, v, rel_h, rel_w, scale):
    """SAM's stock computation: the whole score tensor, the bias added on the (H, W) grid."""
    batch, heads, n_tokens, _ = q.shape
    scores = (q * scale) @ k.transpose(-2, -1)
    grid = scores.view(batch, heads, n_tokens, rel_h.shape[-1], rel_w.shape[-1])
    grid = grid + rel_h[..., :, None] + rel_w[..., None, :]
    return grid.view(batch, heads, n_tokens, n_tokens).softmax(dim=-1) @ v


def _inputs(batch, heads, size_h, size_w, head_dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n_tokens = size_h * size_w

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    qkv = [rand(batch, heads, n_tokens, head_dim) for _ in range(3)]
    return (*qkv, rand(batch, heads, n_tokens, size_h), rand(batch, heads, n_tokens, size_w))


# piece sizes: everything at once; several groups per piece; query rows of one group per piece
PIECES = [1 << 21, 2 * 35 * 35, 35 * 8]


@pytest.mark.parametrize("chunk_elements", PIECES)
@pytest.mark.parametrize(("batch", "heads", "size_h", "size_w"), [(3, 2, 5, 7), (1, 3, 7, 5)])
def test_forward_and_gradients_match_the_stock_attention(
    monkeypatch, chunk_elements, batch, heads, size_h, size_w
):
    monkeypatch.setattr(rel_pos_attention, "BIAS_CHUNK_ELEMENTS", chunk_elements)
    inputs = _inputs(batch, heads, size_h, size_w, head_dim=8)
    grad_out = torch.randn(batch, heads, size_h * size_w, 8, dtype=torch.float64)
    out = BiasMaskAttention.apply(*inputs, 0.3)
    reference = _reference(*inputs, 0.3)
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out, inputs, grad_out)
    expected = torch.autograd.grad(reference, inputs, grad_out)
    for name, got, want in zip(("q", "k", "v", "rel_h", "rel_w"), grads, expected, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"d{name}: {m}")


def test_without_a_gradient_the_forward_alone_matches():
    inputs = [t.detach() for t in _inputs(2, 2, 6, 4, head_dim=4, seed=1)]
    with torch.no_grad():
        torch.testing.assert_close(bias_mask_attention(*inputs, 0.5), _reference(*inputs, 0.5))


def test_gradients_pass_gradcheck():
    inputs = _inputs(1, 2, 3, 4, head_dim=4, seed=2)
    assert torch.autograd.gradcheck(lambda *t: BiasMaskAttention.apply(*t, 0.7), inputs)


# low-precision piece sizes: everything at once; one query row of every window per piece;
# a few rows
LOW_PRECISION_PIECES = [1 << 20, 3 * 35, 3 * 35 * 4]


@pytest.mark.parametrize("chunk_elements", LOW_PRECISION_PIECES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_pieces_match_the_stock_attention(monkeypatch, chunk_elements, dtype):
    """bf16/fp16 run by plain products a piece at a time: the stock result within the
    rounding of the dtype, whatever the piece size, for several windows (batch) and heads."""
    monkeypatch.setattr(rel_pos_attention, "LOW_PRECISION_CHUNK_ELEMENTS", chunk_elements)
    inputs = [t.detach() for t in _inputs(3, 2, 5, 7, head_dim=8, seed=2)]
    reference = _reference(*inputs, 0.3)
    out = bias_mask_attention(*[t.to(dtype) for t in inputs], 0.3)
    assert out.dtype == dtype and out.shape == reference.shape
    torch.testing.assert_close(out.double(), reference, rtol=0.02, atol=0.02)
    wrong_scale = bias_mask_attention(*[t.to(dtype) for t in inputs], 0.6).double()
    assert (wrong_scale - reference).abs().max() > 0.1  # the tolerance tells them apart
