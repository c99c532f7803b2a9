"""Fast paths for SAM's prompt encoder and mask decoder, from the stock modules' parameters.

:func:`decode_prompts` is SAM's prompt encoder + mask decoder with far less work per prompt
pass (see the comment below the imports): training uses it for every pass of its
iterative-prompt loop, the Segmenter for every prompt. The attentions between prompt and
image tokens are in :mod:`~napari_samtune.core.decoder_attention`, the masks' upscaling in
:mod:`~napari_samtune.core.mask_upscaling`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F

from napari_samtune.core.decoder_attention import (
    add_mixed,
    image_to_tokens,
    projected_image_to_tokens,
    tokens_to_image,
    tokens_to_projected_image,
    value_heads,
)
from napari_samtune.core.low_rank_decoder import (
    Keys,
    LowRankImage,
    Projection,
    Update,
    attention_heads,
    first_keys,
    low_rank_attention,
    second_keys,
)
from napari_samtune.core.mask_upscaling import layer_norm, transposed_conv_weight, upscaled_masks
from napari_samtune.core.weight_cache import kept

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
# Without gradients, given the image's projections (:class:`FirstLayerImage`), no pass
# materialises image tokens at all: each layer changes them by a rank-8T update and a layer
# norm, so every later product with them is a per-token scale of a product computed once per
# image plus a low-rank one (:mod:`~napari_samtune.core.low_rank_decoder`).


# Smallest embedding (tokens) that gets the low-rank decoder: with SAM's 64 x 64 tokens it
# took 0.79-0.91x the plain decoder's time, with nano's 16 x 16 1.16-1.20x (its ~80 extra
# small operations cost more than the image side it saves; benchmarks/bench_decoder.py)
LOW_RANK_MIN_TOKENS = 64 * 64


@dataclass(frozen=True)
class FirstLayerImage:
    """The first decoder layer's projections of the image side, per head.

    Until the first layer updates them, the image tokens are the embedding plus the "no
    mask" embedding whatever the prompt (without a mask input): their keys and values for
    the token -> image attention and their queries for the image -> token attention can be
    projected once per image. Each prompt pass then does (T x d x N) products per head
    instead of three (N x C x 8T) ones. Only worth it when the image has many prompts
    (interactive use): for one pass the projections cost more than they save. In float32
    the later layers' projections are kept too (:class:`.LowRankImage`), for SAM's
    two-layer transformer and embeddings of at least :data:`LOW_RANK_MIN_TOKENS` tokens.
    """

    keys: torch.Tensor  # (heads, d, E*E) token -> image keys, transposed for q @ k
    values: torch.Tensor  # (heads, E*E, d) token -> image values
    queries: torch.Tensor  # (heads, d, E*E) image -> token queries, transposed
    low_rank: LowRankImage | None = None  # float32 only (None in low precision)


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
        pe = dense_pe(sam.prompt_encoder)
        tokens = embedding.flatten(2).transpose(1, 2).float().contiguous()
        first = None
        if project_first_layer:
            keys = tokens + sam.prompt_encoder.no_mask_embed.weight
            first = _first_layer_image(sam.mask_decoder.transformer.layers[0], keys, pe, dtype)
            # low precision would lose the cancellations of the norms' moments
            if (
                dtype == torch.float32
                and len(sam.mask_decoder.transformer.layers) == 2
                and tokens.shape[1] >= LOW_RANK_MIN_TOKENS
            ):
                low_rank = LowRankImage.of(sam.mask_decoder, keys, pe)
                first = replace(first, low_rank=low_rank)
    return DecoderImage(tokens, pe, embedding.shape[-1], dtype, first)


def dense_pe(prompt_encoder) -> torch.Tensor:
    """The prompt encoder's dense positional encoding as float32 (1, E*E, C) tokens, the same
    for every image: kept while its Gaussian matrix stays (:func:`.weight_cache.kept`; made
    outside inference mode, so that what is computed from it can be kept too)."""
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix

    def make() -> torch.Tensor:
        with torch.inference_mode(False):
            pe = prompt_encoder.get_dense_pe()
            return pe.flatten(2).transpose(1, 2).float().contiguous()

    key = ("dense_pe", tuple(prompt_encoder.image_embedding_size))
    return kept(prompt_encoder, key, [gaussian], make)


def _first_layer_image(layer, keys: torch.Tensor, key_pe: torch.Tensor, dtype) -> FirstLayerImage:
    """The projections of (1, N, C) ``keys`` (and ``keys + key_pe``) in ``dtype``, per head."""
    keys_pe = (keys + key_pe).to(dtype)

    def heads(attention, projection, x):
        n_heads, head_dim, _ = attention_heads(attention)
        weight, bias = projection.weight.to(dtype), projection.bias.to(dtype)
        return F.linear(x[0], weight, bias).view(-1, n_heads, head_dim).transpose(0, 1)

    to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    return FirstLayerImage(
        heads(to_image, to_image.k_proj, keys_pe).transpose(1, 2).contiguous(),
        heads(to_image, to_image.v_proj, keys.to(dtype)).contiguous(),
        heads(to_tokens, to_tokens.q_proj, keys_pe).transpose(1, 2).contiguous(),
    )


@dataclass(frozen=True)
class DecodedPrompts:
    """n prompts decoded up to their masks: the predicted IoUs, and the mask logits on demand
    (the upscaling is most of a pass's work once the image tokens are low-rank)."""

    iou: torch.Tensor  # (n, k) predicted IoUs, compute dtype
    hyper: torch.Tensor  # (n, k, C/8) the masks' weights
    image_tokens: torch.Tensor | Keys  # (n, N, C) final image tokens, or their low-rank form
    upscaling: torch.nn.Sequential  # the decoder's output upscaling
    projection: Projection | None  # the low-rank form's first upscaling projection
    side: int  # E, the side of the embedding grid

    def best(self) -> DecodedPrompts:
        """These prompts with only their mask of the highest predicted IoU (k = 1)."""
        rows = torch.arange(len(self.iou), device=self.iou.device)
        best = torch.argmax(self.iou, dim=1)
        return replace(self, iou=self.iou[rows, best, None], hyper=self.hyper[rows, best, None])

    def logits(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Low-res logits (m, k, 4E, 4E) of the prompts ``rows`` (an index; default all)."""
        tokens, hyper = self.image_tokens, self.hyper
        if rows is not None:
            tokens, hyper = tokens[rows], hyper[rows]
        if len(hyper) == 0:
            return hyper.new_empty(0, hyper.shape[1], 4 * self.side, 4 * self.side)
        if isinstance(tokens, Keys):
            first_product = tokens.chunked_product(self.projection)
        else:
            weight, bias = transposed_conv_weight(self.upscaling[0])
            first_product = partial(_plain_first_product, tokens, weight, bias)
        return upscaled_masks(self.upscaling, first_product, self.side**2, hyper, self.side)


def decode_prompts(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_until_masks` (same arguments) with all masks: low-res logits
    (n, 3 or 1, 4E, 4E) and predicted IoUs (n, 3 or 1), both in the compute dtype."""
    decoded = decode_until_masks(*args, **kwargs)
    logits = decoded.logits()
    return logits, decoded.iou.to(logits.dtype)


def decode_until_masks(
    sam: torch.nn.Module,
    image: DecoderImage,
    points: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask: bool,
) -> DecodedPrompts:
    """SAM's prompt encoder + mask decoder for n objects of one image, as the stock modules,
    up to the masks' upscaling (:meth:`DecodedPrompts.logits`).

    Args:
        points: float32 (n, k, 2) (x, y) in the input frame, with int64 (n, k) labels.
        boxes: float32 (n, 4) XYXY in the input frame.
        mask_input: (n, 1, 4E, 4E) low-res logits of an earlier pass.
        multimask: three candidate masks (else one).

    As under autocast in the stock modules, image-sized tensors stay float32 between products
    and every layer norm of them runs in float32 (the CPU layer-norm backward sums its weight
    gradients over all pixels in the input's dtype: in bf16 they come out 10-20% off); matrix
    products run in the compute dtype.
    """
    encoder, decoder = sam.prompt_encoder, sam.mask_decoder
    with torch.autocast(image.tokens.device.type, enabled=False):  # sin/cos of coordinates
        sparse, _ = encoder(
            points=None if points is None else (points, point_labels), boxes=boxes, masks=None
        )
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat([output_tokens.expand(len(sparse), -1, -1), sparse], dim=1)
    picked = list(range(1, decoder.num_mask_tokens)) if multimask else [0]
    # with gradients: all four mask weights, then the picked ones, so that unused tokens'
    # MLPs get zero gradients as in the stock decoder (which makes all four masks) and
    # Adam treats them alike; without, only the picked ones
    used = list(range(decoder.num_mask_tokens)) if torch.is_grad_enabled() else picked
    first = image.first_layer if mask_input is None else None
    final_tokens = [0] + [1 + i for i in used]  # the IoU token and the used mask tokens
    projection = None
    if first is not None and first.low_rank is not None and not torch.is_grad_enabled():
        queries, keys = _low_rank_transformer(decoder.transformer, tokens, first, final_tokens)
        projection = first.low_rank.upscaling
    else:
        keys = _dense_keys(encoder, image, mask_input)
        queries, keys = _two_way_transformer(
            decoder.transformer, tokens, keys, image.pe, image.dtype, first, final_tokens
        )
    mlps = decoder.output_hypernetworks_mlps
    hyper = torch.stack([mlps[i](queries[:, 1 + j]) for j, i in enumerate(used)], dim=1)
    if len(used) > len(picked):
        hyper = hyper[:, picked]
    iou = decoder.iou_prediction_head(queries[:, 0])[:, picked]
    return DecodedPrompts(iou, hyper, keys, decoder.output_upscaling, projection, image.size)


def _dense_keys(encoder, image: DecoderImage, mask_input: torch.Tensor | None) -> torch.Tensor:
    """The image tokens plus the dense prompt embedding, (n, N, C); (1, N, C) without a mask
    input, as every object then sees the same tokens. (The low-rank path never needs them.)"""
    if mask_input is None:
        return image.tokens + encoder.no_mask_embed.weight
    return image.tokens + _embed_masks(encoder.mask_downscaling, mask_input.to(image.dtype))


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
    x = act1(layer_norm(norm1, x))
    weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(c2, 4 * c1)  # inputs as ((a, b), c1)
    x = F.linear(x.reshape(n, side * side, 4 * c1), weight2, conv2.bias)
    x = act2(layer_norm(norm2, x))
    return F.linear(x, conv3.weight.reshape(conv3.out_channels, c2), conv3.bias)


def _update_tokens(layer, queries, tokens, attend_image):
    """The prompt tokens' side of a ``TwoWayAttentionBlock``: self-attention, attention to the
    image (``attend_image(queries + tokens)``, the attention's output) and the MLP."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + tokens
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    queries = layer.norm2(queries + attend_image(queries + tokens))
    return layer.norm3(queries + layer.mlp(queries))


def _two_way_transformer(transformer, tokens, keys, key_pe, dtype, first, final_tokens):
    """``TwoWayTransformer.forward`` on (n, T, C) prompt tokens and (1 or n, N, C) float32
    image keys and positional encoding ``key_pe``; products run in ``dtype``. ``first``: the
    first layer's image-side projections of these ``keys``, if they were precomputed.

    Returns the queries of the ``final_tokens`` only (token indices; each token attends to
    the image on its own in the final attention, so the others' are not computed) and the
    keys.

    Like the stock modules under autocast, the image side stays float32 and every product
    casts it: gradients from its several uses then add up in float32 (in bf16 their sum
    can cancel to noise).
    """
    queries = tokens
    for index, layer in enumerate(transformer.layers):
        projected = first if index == 0 else None
        to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if projected is None:
            keys_pe = keys + key_pe
            attend = partial(tokens_to_image, to_image, keys_pe=keys_pe, keys=keys.to(dtype))
        else:
            attend = partial(
                tokens_to_projected_image, to_image, keys_t=projected.keys, values=projected.values
            )
        queries = _update_tokens(layer, queries, tokens, attend)
        if projected is None:
            probs = image_to_tokens(to_tokens, keys_pe, queries + tokens)
        else:
            probs = projected_image_to_tokens(to_tokens, projected.queries, queries + tokens)
        _, values = value_heads(to_tokens, queries)
        keys = layer_norm(layer.norm4, add_mixed(keys, probs, values))
    low = keys.to(dtype)
    queries, tokens = queries[:, final_tokens], tokens[:, final_tokens]
    attended = tokens_to_image(
        transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, low
    )
    return transformer.norm_final_attn(queries + attended), keys


def _plain_first_product(keys, weight, bias, start: int, stop: int) -> torch.Tensor:
    """The first upscaling convolution (:func:`.mask_upscaling.transposed_conv_weight`)
    of (n, N, C) ``keys`` ``start:stop``, as (n, stop - start, 4 C_up) sub-pixel features."""
    return F.linear(keys[:, start:stop], weight, bias)


def _low_rank_transformer(transformer, tokens, first: FirstLayerImage, final_tokens):
    """:func:`_two_way_transformer` without gradients, in float32, given the image's
    :class:`.LowRankImage`: the image tokens stay :class:`.low_rank_decoder.Keys`. Returns
    the final queries and the final image tokens."""
    image = first.low_rank
    layer1, layer2 = transformer.layers
    to_image, to_tokens = layer1.cross_attn_token_to_image, layer1.cross_attn_image_to_token
    attend = partial(tokens_to_projected_image, to_image, keys_t=first.keys, values=first.values)
    queries = _update_tokens(layer1, tokens, tokens, attend)
    probs = projected_image_to_tokens(to_tokens, first.queries, queries + tokens)
    keys1, normed1 = first_keys(
        image, layer1.norm4, Update(probs.mT, *value_heads(to_tokens, queries))
    )
    to_image, to_tokens = layer2.cross_attn_token_to_image, layer2.cross_attn_image_to_token
    attend = partial(low_rank_attention, to_image, keys1, image.keys, image.values)
    queries = _update_tokens(layer2, queries, tokens, attend)
    scale = attention_heads(to_tokens)[2]
    scores = keys1.scores(image.queries, to_tokens.k_proj(queries + tokens) * scale)
    probs_t = scores.softmax(dim=2).flatten(1, 2)  # over the T tokens; (n, heads*T, N)
    update2 = Update(probs_t, *value_heads(to_tokens, queries))
    keys2 = second_keys(image, layer1.norm4, layer2.norm4, normed1, update2)
    final = transformer.final_attn_token_to_image
    queries, tokens = queries[:, final_tokens], tokens[:, final_tokens]
    attended = low_rank_attention(
        final, keys2, image.final_keys, image.final_values, queries + tokens
    )
    return transformer.norm_final_attn(queries + attended), keys2
