"""Fast paths for MobileSAM's TinyViT encoder (vit_t) that keep its weights and keys.

:func:`use_fast_tinyvit` swaps the classes of TinyViT's modules in place (state dict
unchanged, results the stock ones up to rounding):

* window attention adds its learned bias without materialising it for every window,
* convolution + batch norm folds the norm into the convolution in eval mode,
* in fp32 inference on a CPU, each convolution or linear layer that a GELU follows runs
  with the GELU fused into oneDNN's kernel, so the activation never makes its own pass over
  TinyViT's large early feature maps (a 256-channel 256 x 256 map is 64 MB),
* in inference, transformer blocks cut windows from q, k, v of the image's own tokens
  (no padded tokens projected), fuse residual adds into the projections before them, and
  run the local convolution on a channels-last view of the tokens; in training they do the
  same without the fused kernels.

mobile_sam imports timm, which is slow, so the classes are defined on first use.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

from napari_samtune.core import onednn
from napari_samtune.core.conv_strips import mbconv_strips
from napari_samtune.core.onednn import (
    bf16_fusable,
    bf16_linear,
    fusable,
    fusable_in_any_precision,
    is_gelu,
    linear_add,
    linear_gelu,
)
from napari_samtune.core.weight_cache import kept
from napari_samtune.core.windows import (
    from_windows_grad,
    part_queries,
    part_windows,
    parts,
    put_part,
    to_windows_grad,
)


@functools.cache
def _fast_conv_bn_class() -> type:
    """:class:`FastConv2dBN`: TinyViT's convolution + batch norm with the norm folded in."""
    from mobile_sam.modeling.tiny_vit_sam import Conv2d_BN

    class FastConv2dBN(Conv2d_BN):
        """In eval mode the batch norm is folded into the convolution's weights on the fly
        (one pass over the activations instead of two); :meth:`forward_gelu` also fuses a
        following GELU."""

        def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
            """The convolution's weight and bias with the (eval-mode) norm folded in (kept
            between calls without gradients: :func:`.weight_cache.kept`)."""
            return kept(self, "folded", self._folded_from(), self._fold)

        def _folded_from(self) -> tuple[torch.Tensor, ...]:
            conv, norm = self.c, self.bn
            return conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var

        def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
            conv, norm = self.c, self.bn
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            weight = conv.weight * scale[:, None, None, None]
            return weight, norm.bias - norm.running_mean * scale

        def _kernel_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            """:meth:`folded` in ``dtype``, the weight channels-last, as oneDNN takes them."""

            def prepare() -> tuple[torch.Tensor, torch.Tensor]:
                weight, bias = self._fold()
                weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
                return weight, bias.to(dtype)

            return kept(self, ("kernel", dtype), self._folded_from(), prepare)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training or self.bn.training:
                return super().forward(x)
            if bf16_fusable(x, self, self.bn):  # as autocast would, without its casts
                x, (weight, bias) = x.to(torch.bfloat16), self._kernel_weights(torch.bfloat16)
            else:
                weight, bias = self.folded()
            conv = self.c
            return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

        def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
            """gelu(self(x)), fused into one oneDNN kernel where :func:`.onednn.fusable`,
            in bf16 where :func:`.onednn.bf16_fusable` (bf16 autocast: the convolution
            would run in bf16 anyway)."""
            in_bf16 = bf16_fusable(x, self, self.bn)
            if not (in_bf16 or fusable(x, self, self.bn)) or self.c.padding_mode != "zeros":
                return F.gelu(self(x))
            dtype = torch.bfloat16 if in_bf16 else torch.float32
            x, (weight, bias) = x.to(dtype), self._kernel_weights(dtype)
            conv = self.c
            return torch.ops.mkldnn._convolution_pointwise(
                x,
                weight,
                bias,
                list(conv.padding),
                list(conv.stride),
                list(conv.dilation),
                conv.groups,
                "gelu",
                [],
                "none",
            )

    return FastConv2dBN


@functools.cache
def _fast_block_classes() -> dict[str, type]:
    """Fast subclasses of TinyViT's MBConv, PatchMerging, PatchEmbed and Mlp, by stock name.

    Each runs the fused forward where :func:`.onednn.fusable_in_any_precision` (fp32, or
    bf16 autocast; no gradient, eval mode, the exact GELU) and the stock one otherwise. On a
    2-core AVX-512 BF16 EPYC the bf16 fusions took vit_t's encoder from 0.52 to 0.48 s
    (medians of 5 alternating calls).
    """
    from mobile_sam.modeling import tiny_vit_sam as tv

    class FastMBConv(tv.MBConv):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            acts = (self.act1, self.act2, self.act3)
            if not all(map(is_gelu, acts)) or not fusable_in_any_precision(x, self, *acts):
                return super().forward(x)
            dtype = torch.bfloat16 if bf16_fusable(x, self) else torch.float32
            by_strips = mbconv_strips(self, x, dtype)  # a large map: in the CPU's cache
            if by_strips is not None:
                return by_strips
            hidden = self.conv2.forward_gelu(self.conv1.forward_gelu(x))
            # (oneDNN fuses a residual add or a GELU after a convolution, not both)
            return F.gelu(self.conv3(hidden).add_(x))  # drop path: identity in eval

    class FastPatchMerging(tv.PatchMerging):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not is_gelu(self.act) or not fusable_in_any_precision(x, self, self.act):
                return super().forward(x)
            if x.ndim == 3:
                height, width = self.input_resolution
                x = x.view(len(x), height, width, -1).permute(0, 3, 1, 2)
            x = self.conv2.forward_gelu(self.conv1.forward_gelu(x))
            return self.conv3(x).flatten(2).transpose(1, 2)

    class FastPatchEmbed(tv.PatchEmbed):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, act, second = self.seq
            if not is_gelu(act) or not fusable_in_any_precision(x, self, act):
                return super().forward(x)
            return second(first.forward_gelu(x))

    class FastMlp(tv.Mlp):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not is_gelu(self.act) or not fusable_in_any_precision(x, self, self.act):
                return super().forward(x)
            # dropout: identity in eval
            return self.fc2(linear_gelu(self.norm(x), self.fc1, keep=True))

        def forward_residual(self, x: torch.Tensor) -> torch.Tensor:
            """``x + self(x)``, the add fused into the second linear layer where fusable."""
            if not is_gelu(self.act) or not fusable_in_any_precision(x, self, self.act):
                return x + self(x)
            hidden = linear_gelu(self.norm(x), self.fc1, keep=True)
            return linear_add(hidden, self.fc2, x, keep=True)

    return {
        cls.__mro__[1].__name__: cls
        for cls in (FastMBConv, FastPatchMerging, FastPatchEmbed, FastMlp)
    }


@functools.cache
def _fast_attention_class() -> type:
    """:class:`FastTinyViTAttention` (see there)."""
    from mobile_sam.modeling.tiny_vit_sam import Attention as TinyViTAttention

    class FastTinyViTAttention(TinyViTAttention):
        """TinyViT (vit_t) window attention; same parameters and result.

        In bf16 ``scale * q @ k^T + bias`` is one ``baddbmm`` instead of a product and two
        more passes over the scores. In fp32 the per-head bias is added in place to the
        scores of all windows by broadcasting, without the copy for every window that
        ``baddbmm`` needs (25% faster on a 2-core AVX-512 CPU, while in bf16 there ``baddbmm``
        was 10-20% faster). SDPA with the bias as ``attn_mask`` was slower than both for these
        49- and 196-token windows on CPU, with and without gradients.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, n_tokens, _ = x.shape
            qkv = self.qkv(self.norm(x)).view(batch, n_tokens, self.num_heads, -1).transpose(1, 2)
            q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
            bias = self.attention_biases[:, self.attention_bias_idxs] if self.training else self.ab
            if q.dtype == torch.float32:
                scores = torch.matmul(q, k.transpose(-1, -2)).mul_(self.scale).add_(bias)
                out = scores.softmax(dim=-1) @ v
            else:
                bias = bias.to(q.dtype).expand(batch, -1, -1, -1).reshape(-1, n_tokens, n_tokens)
                q, k = (t.reshape(-1, n_tokens, self.key_dim) for t in (q, k))
                scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.scale)
                out = scores.softmax(dim=-1) @ v.reshape(-1, n_tokens, self.d)
                out = out.view(batch, self.num_heads, n_tokens, self.d)
            return self.proj(out.transpose(1, 2).reshape(batch, n_tokens, self.dh))

    return FastTinyViTAttention


def window_softmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.softmax(dim=-1)``, through float32 for bf16 rows shorter than 64 without
    gradients.

    Torch's CPU softmax takes a bf16 row of 49 scores (TinyViT's 7 x 7 windows) as one full
    and one partial vector: 3.7 ms for 361 x 4 windows on a 2-core AVX-512 BF16 EPYC, where
    the float32 softmax, both casts included, took 2.7 ms. Rows of 196 (14 x 14 windows)
    were faster in bf16 (2.2 against 2.8 ms). The probabilities come back in bf16 for the
    product with the values, rounded once from float32.
    """
    if scores.dtype != torch.bfloat16 or scores.shape[-1] >= 64 or torch.is_grad_enabled():
        return scores.softmax(dim=-1)
    return scores.softmax(dim=-1, dtype=torch.float32).to(torch.bfloat16)


def _scaled_qkv(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``attn.qkv(x)`` with the queries times ``attn.scale``: the product of the queries with
    the keys is then the scaled scores, one pass over every window's scores fewer (4-20 MB
    per block). A plain linear layer takes the scale into its weights (kept between calls
    without gradients); another (a LoRA adapter) has its output scaled."""
    qkv = attn.qkv
    if type(qkv) is not torch.nn.Linear:
        return qkv(x) * _query_scale(attn, x)
    in_bf16 = onednn.bf16_kernels(x, qkv)

    def prepare() -> tuple[torch.Tensor, torch.Tensor | None]:
        scale = _query_scale(attn, x)
        weight = qkv.weight * scale[:, None]
        bias = None if qkv.bias is None else qkv.bias * scale
        dtype = torch.bfloat16 if in_bf16 else weight.dtype  # cast once, as bf16_linear would
        return weight.to(dtype), None if bias is None else bias.to(dtype)

    key = ("scaled qkv", x.dtype, in_bf16)
    weight, bias = kept(attn, key, (qkv.weight, qkv.bias), prepare)
    return bf16_linear(x, qkv, weight, bias)


def _query_scale(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(n_heads * (2 * key_dim + d),) factors in ``x``'s dtype: ``attn.scale`` for the
    queries, 1 for the keys and values (per head the projection is [q, k, v])."""
    scale = x.new_ones(attn.num_heads, 2 * attn.key_dim + attn.d)
    scale[:, : attn.key_dim] = attn.scale
    return scale.view(-1)


def _padding_token(attn: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(n_heads * (2 * key_dim + d),) the scaled q, k, v of a zero token, which TinyViT pads
    its windows with (kept between calls without gradients where ``attn.qkv`` is a plain
    linear layer; an adapter's weights are not followed)."""

    def prepare() -> torch.Tensor:
        return _scaled_qkv(attn, attn.norm(image.new_zeros(1, image.shape[-1])))[0]

    qkv, norm = attn.qkv, attn.norm
    if type(qkv) is not torch.nn.Linear:
        return prepare()
    key = ("padding token", image.dtype, torch.is_autocast_enabled("cpu"))
    return kept(attn, key, (norm.weight, norm.bias, qkv.weight, qkv.bias), prepare)


def _attention_by_parts(
    attn: torch.nn.Module, qkv: torch.Tensor, window: int, fill: torch.Tensor
) -> torch.Tensor:
    """Window attention without gradients, before the output projection: (B, H, W, C)
    scaled projections ``qkv`` and the padding token's ``fill`` -> (B, H, W, n_heads * d).

    Each :func:`.windows.parts` part of the windows (full windows, the partial last row
    and column, the corner) is attended on its own: its keys and values are whole padded
    windows, but only the map's own tokens ask queries, where padded windows computed
    scores, softmax and outputs for the padding's queries too (20% more rows at 64 x 64 in
    14 x 14 or 7 x 7 windows). Each of q, k and v is cut contiguous, so the products copy
    none of them.
    """
    batch, height, width, _ = qkv.shape
    n_heads, key_dim = attn.num_heads, attn.key_dim
    per_head = qkv.view(batch, height, width, n_heads, -1)
    fill = fill.view(n_heads, -1)
    keys, values = slice(key_dim, 2 * key_dim), slice(2 * key_dim, None)
    out = qkv.new_empty(batch, height, width, n_heads, attn.d)
    for part in parts(height, width, window):
        q = part_queries(per_head[..., :key_dim], part)
        k = part_windows(per_head[..., keys], part, window, fill[:, keys])
        v = part_windows(per_head[..., values], part, window, fill[:, values])
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores.add_(_part_bias(attn, scores.dtype, window, part.tokens))
        put_part(out, part, window_softmax(scores) @ v)
    return out.view(batch, height, width, -1)


def _part_bias(
    attn: torch.nn.Module, dtype: torch.dtype, window: int, tokens: tuple[int, int]
) -> torch.Tensor:
    """(n_heads, rows * columns, window**2) rows of the window bias for the queries of a
    part's own tokens, ``tokens`` (rows, columns) of each window (eval mode: kept)."""
    if tokens == (window, window):
        return _window_bias(attn, dtype)

    def prepare() -> torch.Tensor:
        bias = _window_bias(attn, dtype)
        bias = bias.view(len(bias), window, window, -1)[:, : tokens[0], : tokens[1]]
        return bias.reshape(len(bias), tokens[0] * tokens[1], -1)

    if attn.training:
        return prepare()
    return kept(attn, ("part bias", dtype, tokens), (attn.ab,), prepare)


def _window_bias(attn: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """(n_heads, tokens, tokens) learned attention bias of ``attn``'s windows in ``dtype``
    (in eval mode kept between calls without gradients)."""
    if attn.training:
        return attn.attention_biases[:, attn.attention_bias_idxs].to(dtype)
    return kept(attn, ("window bias", dtype), (attn.ab,), lambda: attn.ab.to(dtype))


@functools.cache
def _fast_block_class() -> type:
    """:class:`FastTinyViTBlock` (see there)."""
    from mobile_sam.modeling.tiny_vit_sam import TinyViTBlock

    class FastTinyViTBlock(TinyViTBlock):
        """TinyViT's transformer block; same parameters and result.

        Without gradients (inference), window attention computes q, k, v for the image's
        own tokens only and pads the windows with the value every zero padding token has,
        instead of padding the image and projecting 20% more tokens (64 x 64 maps in 14 x 14 and
        7 x 7 windows). Windows are cut (q, k and v each into its own contiguous windows, which
        the products read without copying) and put back by one copy each, the output
        projection runs on the image's tokens only, and each residual add is fused into the
        projection before it. The local convolution reads the tokens as a channels-last
        map: no transposed copies, and oneDNN's depthwise kernel is ~3x faster in that
        layout. With gradients (training) the windows, the output projection and the local
        convolution work the same way, without the fused kernels: the windows are cut and put
        back by autograd functions of :mod:`.windows` (vit_t_all's training step on a 2-core
        AVX2 CPU: 3.69 -> 3.37 s).
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = self.input_resolution
            batch, n_tokens, channels = x.shape
            stochastic_depth = self.training and not isinstance(self.drop_path, torch.nn.Identity)
            if n_tokens != height * width or stochastic_depth:
                return super().forward(x)
            # With gradients the fused kernels step aside (linear_add, forward_residual).
            image = x.view(batch, height, width, channels)
            x = linear_add(self._window_attention(image), self.attn.proj, image, keep=True)
            local = self.local_conv(x.permute(0, 3, 1, 2))  # channels-last view of the map
            x = local.permute(0, 2, 3, 1).reshape(batch, n_tokens, channels)
            return self.mlp.forward_residual(x)  # (the mlp is a FastMlp: swapped with the block)

        def _window_attention(self, image: torch.Tensor) -> torch.Tensor:
            """Window attention of (B, H, W, C) ``image`` before the output projection."""
            attn, window = self.attn, self.window_size
            qkv = _scaled_qkv(attn, attn.norm(image))
            fill = _padding_token(attn, image)
            if not torch.is_grad_enabled():
                return _attention_by_parts(attn, qkv, window, fill)
            windows = to_windows_grad(qkv, window, fill, attn.num_heads)
            q, k, v = windows.split([attn.key_dim, attn.key_dim, attn.d], dim=3)
            scores = torch.matmul(q, k.transpose(-1, -2))
            # in the scores' dtype: a float32 bias made the in-place add of bf16 scores
            # convert them all (window attention of vit_t's encoder 5.3-7.4 -> 4.2-6.1 ms)
            scores = scores.add_(_window_bias(attn, scores.dtype))
            out = window_softmax(scores) @ v
            return from_windows_grad(out, image.shape[1], image.shape[2], window)

    return FastTinyViTBlock


def use_fast_tinyvit(model: torch.nn.Module) -> torch.nn.Module:
    """Switch TinyViT's blocks, attention, conv + batch norm, MBConv, patch merging, patch
    embedding and MLP modules in ``model`` to their fast classes, in place.

    Idempotent, state dict unchanged; returns ``model``. A model without TinyViT is untouched.
    """
    tiny_vit = sys.modules.get("mobile_sam.modeling.tiny_vit_sam")
    if tiny_vit is None:  # no TinyViT was ever built in this process
        return model
    swaps = {tiny_vit.Attention: _fast_attention_class(), tiny_vit.Conv2d_BN: _fast_conv_bn_class()}
    swaps |= {getattr(tiny_vit, name): cls for name, cls in _fast_block_classes().items()}
    swaps[tiny_vit.TinyViTBlock] = _fast_block_class()
    for module in model.modules():
        fast_class = swaps.get(type(module))
        if fast_class is not None:
            module.__class__ = fast_class
    return model
