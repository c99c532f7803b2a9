"""Fast paths for SAM's prompt encoder and mask decoder, from the stock modules' parameters.

:class:`FastConvTranspose2x2` (via :func:`use_fast_upscaling`) runs SAM's 2x2 transposed
convolutions as matrix products. :func:`decode_prompts` is SAM's prompt encoder + mask
decoder with far less work per prompt pass (see the comment above it): training uses it
for every pass of its iterative-prompt loop, the Segmenter for every prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


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


# -- prompt decoding ---------------------------------------------------------------------------
#
# The mask decoder runs once per prompt pass on (n objects, N = E*E image tokens, C channels):
# stock code repeats the image embedding n times, flattens it in every pass and projects all
# N tokens to queries, keys and values (N x C x C/2 each) although they only ever meet the
# T ~ 7 prompt tokens. Here the small side is folded into the weights instead: the scores of
# T tokens against N image tokens are ``(q_t W_k) . image`` (an (8T x C) matrix times the
# image), and the values are mixed before projection (softmax rows sum to 1). The image side
# then costs two (N x C x 8T) products per attention instead of three or four (N x C x C/2)
# ones, with the same parameters and the same result up to rounding. The upscaling runs on
# the tokens in sub-pixel order (both 2x2 transposed convolutions are matrix products) and
# is put into raster order only as the final logits.
#
# Without gradients, given the image's first-layer projections, the first upscaling product
# skips most of its work too (:class:`_UpscalingInput`): each of the two layers changes the
# image tokens by a rank-8T update and a layer norm, so their product with the (C x C)
# upscaling weight is a per-token scale of the unchanged tokens' product (once per image)
# plus an (N x R) @ (R x C) product per pass, R = 2 (8T + 2) - 1: 115 instead of 256
# multiply-adds per token and output channel for one point.


UPSCALE_CHUNK_TOKENS = 512  # ~3 MB of upscaling activations per chunk (no gradients)


@dataclass(frozen=True)
class FirstLayerImage:
    """The first decoder layer's projections of the image side, per head.

    Until the first layer updates them, the image tokens are the embedding plus the "no
    mask" embedding whatever the prompt (without a mask input): their keys and values for
    the token -> image attention and their queries for the image -> token attention can be
    projected once per image. Each prompt pass then does (T x d x N) products per head
    instead of three (N x C x 8T) ones. Only worth it when the image has many prompts
    (interactive use): for one pass the projections cost more than they save. In float32
    the tokens' first upscaling product is kept too (:class:`UpscalingBase`).
    """

    keys: torch.Tensor  # (heads, d, E*E) token -> image keys, transposed for q @ k
    values: torch.Tensor  # (heads, E*E, d) token -> image values
    queries: torch.Tensor  # (heads, d, E*E) image -> token queries, transposed
    upscaling: UpscalingBase | None = None  # float32 only (None in low precision)


@dataclass(frozen=True)
class DecoderImage:
    """One image embedding as the tokens :func:`decode_prompts` works on (once per image)."""

    tokens: torch.Tensor  # float32 (1, E*E, C) image embedding, tokens in raster order
    pe: torch.Tensor  # float32 (1, E*E, C) the prompt encoder's dense positional encoding
    size: int  # E, the side of the embedding grid
    dtype: torch.dtype  # compute dtype of the products: autocast's, else float32
    first_layer: FirstLayerImage | None = None  # projections for passes without mask input


def decoder_image(
    sam: torch.nn.Module, embedding: torch.Tensor, project_first_layer: bool = False
) -> DecoderImage:
    """Tokens of a (1, C, E, E) ``embedding``; the compute dtype is autocast's, if it is on.

    The positional encoding is computed without autocast, which would round its sin/cos
    arguments (up to ~20 radians) to bf16. ``project_first_layer`` precomputes the
    :class:`FirstLayerImage` for an image that will see many prompts with fixed weights.
    """
    device = embedding.device
    dtype = torch.get_autocast_dtype(device.type)
    dtype = dtype if torch.is_autocast_enabled(device.type) else torch.float32
    with torch.autocast(device.type, enabled=False):
        pe = sam.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).float().contiguous()
        tokens = embedding.flatten(2).transpose(1, 2).float().contiguous()
        first = None
        if project_first_layer:
            keys = tokens + sam.prompt_encoder.no_mask_embed.weight
            first = _first_layer_image(sam.mask_decoder.transformer.layers[0], keys, pe, dtype)
            if dtype == torch.float32:  # low precision would lose the cancellations
                first = replace(first, upscaling=UpscalingBase.of(sam.mask_decoder, keys))
    return DecoderImage(tokens, pe, embedding.shape[-1], dtype, first)


def _first_layer_image(layer, keys: torch.Tensor, key_pe: torch.Tensor, dtype) -> FirstLayerImage:
    """The projections of (1, N, C) ``keys`` (and ``keys + key_pe``) in ``dtype``, per head."""
    keys_pe = (keys + key_pe).to(dtype)

    def heads(attention, projection, x):
        n_heads, head_dim, _ = _heads(attention)
        weight, bias = projection.weight.to(dtype), projection.bias.to(dtype)
        return F.linear(x[0], weight, bias).view(-1, n_heads, head_dim).transpose(0, 1)

    to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    return FirstLayerImage(
        heads(to_image, to_image.k_proj, keys_pe).transpose(1, 2).contiguous(),
        heads(to_image, to_image.v_proj, keys.to(dtype)).contiguous(),
        heads(to_tokens, to_tokens.q_proj, keys_pe).transpose(1, 2).contiguous(),
    )


def decode_prompts(
    sam: torch.nn.Module,
    image: DecoderImage,
    points: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's prompt encoder + mask decoder for n objects of one image, as the stock modules.

    Args:
        points: float32 (n, k, 2) (x, y) in the input frame, with int64 (n, k) labels.
        boxes: float32 (n, 4) XYXY in the input frame.
        mask_input: (n, 1, 4E, 4E) low-res logits of an earlier pass.
        multimask: three candidate masks (else one).

    Returns:
        low-res logits (n, 3 or 1, 4E, 4E) and predicted IoUs (n, 3 or 1) in the compute
        dtype. As under autocast in the stock modules, image-sized tensors stay float32
        between products and every layer norm of them runs in float32 (the CPU layer-norm
        backward sums its weight gradients over all pixels in the input's dtype: in bf16
        they come out 10-20% off); matrix products run in the compute dtype.
    """
    encoder, decoder = sam.prompt_encoder, sam.mask_decoder
    with torch.autocast(image.tokens.device.type, enabled=False):  # sin/cos of coordinates
        sparse, _ = encoder(
            points=None if points is None else (points, point_labels), boxes=boxes, masks=None
        )
    if mask_input is None:  # every object sees the same image tokens: keep one copy
        keys = image.tokens + encoder.no_mask_embed.weight
    else:
        keys = image.tokens + _embed_masks(encoder.mask_downscaling, mask_input.to(image.dtype))
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat([output_tokens.expand(len(sparse), -1, -1), sparse], dim=1)
    picked = list(range(1, decoder.num_mask_tokens)) if multimask else [0]
    # with gradients: all four mask weights, then the picked ones, so that unused tokens'
    # MLPs get zero gradients as in the stock decoder (which makes all four masks) and
    # Adam treats them alike; without, only the picked ones
    used = list(range(decoder.num_mask_tokens)) if torch.is_grad_enabled() else picked
    first = image.first_layer if mask_input is None else None
    # the keys' updates, for the upscaling's low-rank first product (no gradients: no autograd
    # graph for it)
    updates = None if first is None or first.upscaling is None or torch.is_grad_enabled() else []
    queries, keys = _two_way_transformer(
        decoder.transformer,
        tokens,
        keys,
        image.pe,
        image.dtype,
        first,
        [0] + [1 + i for i in used],  # the IoU token and the used mask tokens
        updates,
    )
    mlps = decoder.output_hypernetworks_mlps
    hyper = torch.stack([mlps[i](queries[:, 1 + j]) for j, i in enumerate(used)], dim=1)
    if len(used) > len(picked):
        hyper = hyper[:, picked]
    first_product = None if updates is None else _UpscalingInput.of(first.upscaling, updates)
    logits = _upscaled_masks(
        decoder.output_upscaling, keys, hyper, image.size, first_product=first_product
    )
    iou = decoder.iou_prediction_head(queries[:, 0])[:, picked]
    return logits, iou.to(logits.dtype)


def _embed_masks(downscaling: torch.nn.Sequential, masks: torch.Tensor) -> torch.Tensor:
    """The prompt encoder's mask embedding of (n, 1, 4E, 4E) ``masks`` as (n, E*E, C) tokens.

    Both 2x2 stride-2 convolutions become matrix products on each token's 4x4 pixels.
    """
    conv1, norm1, act1, conv2, norm2, act2, conv3 = downscaling
    n, side = len(masks), masks.shape[-1] // 4
    # token (i, j) holds pixel rows 4i + 2a + p and columns 4j + 2b + q as ((a, b), (p, q))
    patches = masks.reshape(n, side, 2, 2, side, 2, 2).permute(0, 1, 4, 2, 5, 3, 6)
    patches = patches.reshape(n, side * side, 4, 4)
    c1, c2 = conv1.out_channels, conv2.out_channels
    x = F.linear(patches, conv1.weight.reshape(c1, 4), conv1.bias)
    x = act1(_layer_norm(norm1, x))
    weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(c2, 4 * c1)  # inputs as ((a, b), c1)
    x = F.linear(x.reshape(n, side * side, 4 * c1), weight2, conv2.bias)
    x = act2(_layer_norm(norm2, x))
    return F.linear(x, conv3.weight.reshape(conv3.out_channels, c2), conv3.bias)


def _layer_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (LayerNorm or SAM's LayerNorm2d) over the last axis, in float32."""
    return F.layer_norm(x.float(), norm.weight.shape, norm.weight, norm.bias, norm.eps)


def _two_way_transformer(
    transformer, tokens, keys, key_pe, dtype, first, final_tokens, updates=None
):
    """``TwoWayTransformer.forward`` on (n, T, C) prompt tokens and (1 or n, N, C) float32
    image keys and positional encoding ``key_pe``; products run in ``dtype``. ``first``: the
    first layer's image-side projections of these ``keys``, if they were precomputed.
    ``updates``: a list that gets each layer's :class:`_KeysUpdate`.

    Returns the queries of the ``final_tokens`` only (token indices; each token attends to
    the image on its own in the final attention, so the others' are not computed) and the
    keys.

    Like the stock modules under autocast, the image side stays float32 and every product
    casts it: gradients from its several uses then add up in float32 (in bf16 their sum
    can cancel to noise).
    """
    queries = tokens
    for index, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        projected = first if index == 0 else None
        to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if projected is None:
            low = keys.to(dtype)  # for the products with the keys
            keys_pe = keys + key_pe
            attended = _tokens_to_image(to_image, queries + tokens, keys_pe, low)
        else:
            attended = _tokens_to_projected_image(
                to_image, queries + tokens, projected.keys, projected.values
            )
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        if projected is None:
            probs, values = _image_to_tokens(to_tokens, keys_pe, queries + tokens, queries)
        else:
            probs, values = _projected_image_to_tokens(
                to_tokens, projected.queries, queries + tokens, queries
            )
        keys = _add_mixed(keys, probs, values)
        if updates is None:
            keys = _layer_norm(layer.norm4, keys)
        else:
            norm = layer.norm4
            keys, mean, rstd = torch.native_layer_norm(
                keys, norm.weight.shape, norm.weight, norm.bias, norm.eps
            )
            updates.append(_KeysUpdate(probs, values, mean, rstd))
    low = keys.to(dtype)
    queries, tokens = queries[:, final_tokens], tokens[:, final_tokens]
    attended = _tokens_to_image(
        transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, low
    )
    return transformer.norm_final_attn(queries + attended), keys


def _heads(attention) -> tuple[int, int, float]:
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    return heads, head_dim, head_dim**-0.5


def _tokens_to_image(attention, q_in, keys_pe, keys):
    """``Attention(q=q_in, k=keys_pe, v=keys)`` for (n, T, C) queries and (1 or n, N, C) keys.

    Scores: ``q_h . (W_k,h x + b_k,h) = (q_h W_k,h) . x + q_h . b_k,h`` (the second term is
    constant along the softmax but kept: it is part of the stock graph). Values: the softmax
    weights sum to one, so ``sum_j p_j (W_v,h x_j + b_v,h) = W_v,h (sum_j p_j x_j) + b_v,h``.
    """
    n, n_tokens, channels = q_in.shape
    heads, head_dim, scale = _heads(attention)
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


def _image_to_tokens(attention, keys_pe, k_in, v_in):
    """``Attention(q=keys_pe, k=k_in, v=v_in)``: (1 or n, N, C) image queries, (n, T, C)
    tokens, as the (n, N, heads*T) softmax weights and (n, heads*T, C) values of
    :func:`_mixed_values` (the output is ``probs @ values``).

    Scores: ``(W_q,h x + b_q,h) . k_h = x . (W_q,h^T k_h) + b_q,h . k_h``; output: the
    projection ``W_o`` folded into the values, ``sum_h,t p_h,t (W_o,h v_h,t)``.
    """
    n, n_tokens, channels = k_in.shape
    heads, head_dim, scale = _heads(attention)
    k = attention.k_proj(k_in).view(n, n_tokens, heads, head_dim)
    w_q = attention.q_proj.weight.view(heads, head_dim, channels)
    q_k = torch.einsum("nthd,hdc->nhtc", k, w_q).reshape(n, heads * n_tokens, channels)
    q_b = torch.einsum("nthd,hd->nht", k, attention.q_proj.bias.view(heads, head_dim))
    scores = _scores(keys_pe, q_k * scale) + (q_b * scale).reshape(n, -1, 1).to(q_k.dtype)
    # softmax over the T tokens: a middle axis here, which is far faster than a last axis of ~8
    probs = scores.view(n, heads, n_tokens, -1).softmax(dim=2).view(n, heads * n_tokens, -1)
    return probs.transpose(1, 2), _mixed_values(attention, v_in)


def _mixed_values(attention, v_in):
    """(n, heads*T, C) values ``W_o,h v_h,t + b_o / heads`` (head-major) of (n, T, C) value
    tokens ``v_in``: ``probs @ values`` is the attention's output for (n, N, heads*T) softmax
    weights. The output projection is folded into the T values instead of applied to the N
    outputs, and so is its bias (each head's weights sum to one: ``b_o / heads`` on every
    value adds ``b_o``)."""
    n, n_tokens, channels = v_in.shape
    heads, head_dim, _ = _heads(attention)
    v = attention.v_proj(v_in).view(n, n_tokens, heads, head_dim)
    w_o = attention.out_proj.weight.view(channels, heads, head_dim)
    values = torch.einsum("nthd,chd->nhtc", v, w_o) + attention.out_proj.bias / heads
    return values.reshape(n, heads * n_tokens, channels)


def _add_mixed(residual, probs, values):
    """``residual + probs @ values``, the add fused into the product (except under autocast,
    which would round the float32 ``residual`` to the compute dtype)."""
    if torch.is_autocast_enabled(residual.device.type):
        return residual + probs @ values
    return torch.baddbmm(residual, probs, values)


def _tokens_to_projected_image(attention, q_in, keys_t, values):
    """``Attention(q=q_in, k=., v=.)`` for (n, T, C) queries against an image's projected
    (heads, d, N) keys and (heads, N, d) values: the stock computation, per head."""
    n, n_tokens, _ = q_in.shape
    heads, head_dim, scale = _heads(attention)
    q = attention.q_proj(q_in).view(n, n_tokens, heads, head_dim).permute(2, 0, 1, 3)
    q = q.reshape(heads, n * n_tokens, head_dim).to(keys_t.dtype)
    probs = ((q @ keys_t) * scale).softmax(dim=-1)  # (heads, n*T, N)
    out = (probs @ values).view(heads, n, n_tokens, head_dim).permute(1, 2, 0, 3)
    return attention.out_proj(out.reshape(n, n_tokens, heads * head_dim))


def _projected_image_to_tokens(attention, queries_t, k_in, v_in):
    """``Attention(q=., k=k_in, v=v_in)`` for an image's projected (heads, d, N) queries and
    (n, T, C) tokens, as softmax weights and values (:func:`_image_to_tokens`)."""
    n, n_tokens, _ = k_in.shape
    heads, head_dim, scale = _heads(attention)
    k = attention.k_proj(k_in).view(n, n_tokens, heads, head_dim).permute(2, 0, 1, 3)
    k = k.reshape(heads, n * n_tokens, head_dim).to(queries_t.dtype)
    scores = (k @ queries_t) * scale  # (heads, n*T, N)
    # softmax over the T tokens (a middle axis); then (n, N, heads*T), a view for n = 1
    probs = scores.view(heads, n, n_tokens, -1).softmax(dim=2).transpose(0, 1)
    probs = probs.reshape(n, heads * n_tokens, -1).transpose(1, 2)
    return probs, _mixed_values(attention, v_in)


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
    return a @ b


def _upscaled_masks(
    upscaling: torch.nn.Sequential,
    keys,
    hyper,
    side: int,
    chunk_tokens: int | None = None,
    first_product: _UpscalingInput | None = None,
) -> torch.Tensor:
    """Mask logits (n, k, 4E, 4E) from (n, E*E, C) image tokens and (n, k, C/8) mask weights.

    Each 2x2 stride-2 transposed convolution gives every pixel four children: a matrix
    product per token. Pixels stay grouped by token (sub-pixel order) up to the logits.
    Without gradients the tokens go through in chunks of ``chunk_tokens`` (default
    :data:`UPSCALE_CHUNK_TOKENS`), whose activations stay in the CPU's cache.
    ``first_product``: the first convolution's output, which then replaces its product.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    n, n_pixels = len(keys), keys.shape[1]
    c1, c2 = conv1.out_channels, conv2.out_channels
    if chunk_tokens is None:
        chunk_tokens = n_pixels if torch.is_grad_enabled() else UPSCALE_CHUNK_TOKENS
    if first_product is None:
        weight1, bias1 = _first_upscaling_weight(conv1)
    weight2 = conv2.weight.permute(2, 3, 1, 0).reshape(4 * c2, c1)
    bias2, hyper_t = conv2.bias.repeat(4), hyper.transpose(1, 2)
    parts = []
    for start in range(0, n_pixels, chunk_tokens):
        stop = start + chunk_tokens
        if first_product is None:
            x = F.linear(keys[:, start:stop], weight1, bias1)
        else:
            x = first_product.product(start, stop)
        x = act1(_layer_norm(norm, x.view(n, -1, 4, c1)))
        x = act2(F.linear(x, weight2, bias2).view(n, -1, c2))
        parts.append(x @ hyper_t.to(x.dtype))  # (n, chunk*16, k)
    logits = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    # in (i, j, a, b, a2, b2) order
    logits = logits.view(n, side, side, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(n, -1, 4 * side, 4 * side)


@dataclass(frozen=True)
class UpscalingBase:
    """What the first upscaling product of a pass (:class:`_UpscalingInput`) needs of the
    unchanged image tokens ``k_0`` and the decoder's weights, for L transformer layers.

    ``D_l`` is the (C, K) first upscaling weight ``W^T`` (K = 4 C_up) with its input scaled by
    the final-norm weights of layers l, l + 1, ..., L; ``b_l`` is layer l's final-norm bias.
    """

    tokens: torch.Tensor  # (1, N, K) k_0 D_1
    weights: tuple[torch.Tensor, ...]  # D_l, (C, K) each
    mean_rows: tuple[torch.Tensor, ...]  # -1 D_l (column sums), (1, 1, K) each
    shift_rows: tuple[torch.Tensor, ...]  # b_l D_l+1 for l < L, (1, 1, K) each
    bias: torch.Tensor  # (K,) b_L W^T + the convolution's bias

    @classmethod
    def of(cls, decoder, tokens: torch.Tensor) -> UpscalingBase:
        """For (1, N, C) ``tokens`` (the embedding plus the no-mask embedding)."""
        weight, bias = _first_upscaling_weight(decoder.output_upscaling[0])
        norms = [layer.norm4 for layer in decoder.transformer.layers]
        weights = [weight.T]  # D_L+1 = W^T, then D_L, ..., D_1
        for norm in reversed(norms):
            weights.insert(0, norm.weight[:, None] * weights[0])
        shifts = [
            (norm.bias @ d).view(1, 1, -1) for norm, d in zip(norms, weights[1:], strict=True)
        ]
        return cls(
            tokens @ weights[0],
            tuple(weights[:-1]),
            tuple(-d.sum(0).view(1, 1, -1) for d in weights[:-1]),
            tuple(shifts[:-1]),
            bias + shifts[-1].view(-1),
        )


def _first_upscaling_weight(conv1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 2x2 transposed convolution as a (4 C_out, C_in) linear weight and its bias,
    output features ordered (a, b, channel): child (2i + a, 2j + b) of pixel (i, j)."""
    weight = conv1.weight.permute(2, 3, 1, 0).reshape(4 * conv1.out_channels, -1)
    return weight, conv1.bias.repeat(4)


@dataclass(frozen=True)
class _KeysUpdate:
    """One layer's change of the image tokens: ``LayerNorm(keys + probs @ values)`` with the
    norm's per-token mean and 1/std."""

    probs: torch.Tensor  # (n, N, R) softmax weights (a transposed view)
    values: torch.Tensor  # (n, R, C)
    mean: torch.Tensor  # (n, N, 1)
    rstd: torch.Tensor  # (n, N, 1)


@dataclass(frozen=True)
class _UpscalingInput:
    """The first upscaling product of the decoder's final image tokens, from their updates.

    Layer l maps tokens ``k`` to ``((k + P_l V_l) - m_l) r_l g_l + b_l`` (per-token mean m_l
    and 1/std r_l; the norm's weight g_l and bias b_l). Unrolled from the unchanged tokens
    ``k_0``, the product with the weight is, with ``s_l = r_l r_l+1 ... r_L`` and ``D_l``
    as in :class:`UpscalingBase`::

        s_1 (k_0 D_1) + sum_l [ s_l P_l (V_l D_l) - s_l m_l (1 D_l) ]
                      + sum_l<L s_l+1 (b_l D_l+1) + b_L W^T

    ``k_0 D_1`` is computed once per image; the rest is ``columns @ rows`` with
    R = L (heads * T + 2) - 1 per token (115 for SAM, against C = 256 for the plain product).
    """

    base: UpscalingBase
    scale: torch.Tensor  # (n, N, 1) s_1
    columns_t: torch.Tensor  # (n, R, N) the columns, transposed
    rows: torch.Tensor  # (n, R, K)

    @classmethod
    def of(cls, base: UpscalingBase, updates: list[_KeysUpdate]) -> _UpscalingInput:
        columns, rows = [], []
        scale_after = None  # s_l+1
        for index in reversed(range(len(updates))):
            update = updates[index]
            scale = update.rstd if scale_after is None else update.rstd * scale_after
            columns += [update.probs.mT * scale.mT, (update.mean * scale).mT]
            rows += [update.values @ base.weights[index], base.mean_rows[index]]
            if scale_after is not None:
                columns.append(scale_after.mT)
                rows.append(base.shift_rows[index])
            scale_after = scale
        n = max(len(c) for c in columns)
        columns = torch.cat([c.expand(n, -1, -1) for c in columns], dim=1)
        rows = torch.cat([r.expand(n, -1, -1) for r in rows], dim=1)
        return cls(base, scale_after, columns, rows)

    def product(self, start: int, stop: int) -> torch.Tensor:
        """(n, stop - start, K): the product for tokens ``start:stop``."""
        tokens, scale = self.base.tokens[:, start:stop], self.scale[:, start:stop]
        out = torch.addcmul(self.base.bias, tokens, scale)
        return out.baddbmm_(self.columns_t[:, :, start:stop].mT, self.rows)
