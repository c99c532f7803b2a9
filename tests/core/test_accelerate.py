import warnings
from functools import partial

import pytest
import torch

from napari_samtune.core import (
    accelerate,
    fast_decoder,
    fast_encoder,
    low_rank_decoder,
    mask_upscaling,
    rel_pos_attention,
)
from napari_samtune.core.accelerate import (
    autocast,
    autocast_dtype,
    bf16_speedup,
    cpu_has_fast_bf16,
    use_fast_paths,
)
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.fast_decoder import _plain_first_product, decode_prompts, decoder_image
from napari_samtune.core.fast_encoder import (
    FastRelPosAttention,
    use_fast_attention,
    use_stock_attention,
)
from napari_samtune.core.mask_upscaling import (
    FastConvTranspose2x2,
    mask_product,
    sub_pixels_to_raster,
    transposed_conv_weight,
    upscaled_masks,
    use_fast_upscaling,
)
from napari_samtune.core.train_step import decode


def _encoder_with_nonzero_rel_pos():
    torch.manual_seed(0)
    encoder = build_sam(TINY).image_encoder
    for module in encoder.modules():
        if hasattr(module, "rel_pos_h"):  # zero-initialised in SAM: make the bias matter
            torch.nn.init.normal_(module.rel_pos_h, std=0.5)
            torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    return encoder


def test_fast_attention_matches_stock_in_fp32():
    encoder = _encoder_with_nonzero_rel_pos()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        reference = encoder(x)
        fast = use_fast_attention(encoder)(x)
    assert any(isinstance(m, FastRelPosAttention) for m in encoder.modules())
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


# the chunk size matters to the bias mask alone; 5000 elements cut it into several pieces
KERNEL_CASES = [
    ("folded_sdpa", 1 << 21),
    ("window_products", 1 << 21),
    ("bias_mask", 1 << 21),
    ("bias_mask", 5000),
]


@pytest.mark.parametrize(("kernel", "chunk_elements"), KERNEL_CASES)
def test_every_inference_attention_kernel_matches_stock(monkeypatch, kernel, chunk_elements):
    """Each kernel, in every block, gives the stock result (small chunks: several mask pieces)."""
    monkeypatch.setattr(fast_encoder, "_pick_kernel", lambda q, n_tokens: kernel)
    monkeypatch.setattr(rel_pos_attention, "BIAS_CHUNK_ELEMENTS", chunk_elements)
    encoder = _encoder_with_nonzero_rel_pos()
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        reference = encoder(x)
        fast = use_fast_attention(encoder)(x)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_the_bias_mask_in_bf16_is_as_close_to_fp32_as_the_folded_kernel(monkeypatch):
    """CPUs whose bf16 products are not much faster than fp32 run the bias mask in bf16: its
    output without a gradient, and its output and the input's gradient with one, are as
    close to the fp32 stock encoder's as the folded kernel's."""
    encoder = _encoder_with_nonzero_rel_pos()
    x = torch.randn(1, 3, 256, 256)
    weights = torch.randn(1, 32, 16, 16)  # a loss with a gradient (a squared norm has ~none)

    def run(autocast: bool) -> list[torch.Tensor]:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            inference = encoder(x).float()
        pixels = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            trained = encoder(pixels).float()
        (trained * weights).sum().backward()
        return [inference, trained, pixels.grad]

    reference = run(autocast=False)
    use_fast_attention(encoder)
    errors = {}
    for kernel in ("folded_sdpa", "bias_mask"):
        monkeypatch.setattr(fast_encoder, "_pick_kernel", lambda q, n_tokens, k=kernel: k)
        found = run(autocast=True)
        errors[kernel] = [(a - b).abs().max().item() for a, b in zip(found, reference, strict=True)]
    for folded, mask, ref in zip(
        errors["folded_sdpa"], errors["bias_mask"], reference, strict=True
    ):
        assert mask <= max(1.5 * folded, 0.01 * ref.abs().max().item()), errors


@pytest.mark.parametrize(
    ("speedup", "amx"),
    # an AMX Xeon's bf16; two AVX-512 BF16 EPYCs' (no AMX: torch's CPU flash attention ran
    # at a quarter of the bf16 peak on the faster one); AMX products measured slow
    [(6.0, True), (2.6, False), (4.2, False), (2.6, True)],
)
def test_kernel_choice_follows_precision_device_and_gradient(monkeypatch, speedup, amx):
    monkeypatch.setattr(accelerate, "bf16_speedup", lambda: speedup)
    monkeypatch.setattr(accelerate, "has_amx", lambda: amx)
    fp32, bf16 = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8, dtype=torch.bfloat16)
    pick = fast_encoder._pick_kernel
    if not amx or speedup < fast_encoder.FOLD_MIN_BF16_SPEEDUP:  # the bias mask, but for
        # small windows
        with torch.enable_grad():
            assert {pick(x, n) for x in (fp32, bf16) for n in (196, 4096)} == {"bias_mask"}
        with torch.no_grad():
            assert pick(fp32, 4096) == pick(fp32, 196) == pick(bf16, 4096) == "bias_mask"
            assert pick(bf16, 196) == "window_products"
        return
    with torch.no_grad():
        assert pick(fp32, 4096) == pick(fp32, 196) == "bias_mask"
        assert pick(bf16, 196) == "window_products"
        assert pick(bf16, 4096) == "folded_sdpa"
    with torch.enable_grad():
        assert pick(fp32, 4096) == pick(fp32, 196) == "bias_mask"
        assert pick(bf16, 196) == pick(bf16, 4096) == "folded_sdpa"


@pytest.mark.parametrize("kernel", ["folded_sdpa", "bias_mask"])
def test_fast_attention_gradients_match_stock(monkeypatch, kernel):
    """Both kernels with a gradient: the input's, the projections' and the bias tables'."""
    encoder = _encoder_with_nonzero_rel_pos()
    x = torch.randn(1, 3, 256, 256)
    grads = []
    for switch in (use_stock_attention, use_fast_attention):
        encoder.zero_grad()
        pixels = x.clone().requires_grad_()
        with monkeypatch.context() as patch:
            patch.setattr(fast_encoder, "_pick_kernel", lambda q, n_tokens: kernel)
            switch(encoder)(pixels).square().mean().backward()
        attention = encoder.blocks[1].attn
        parts = (attention.rel_pos_h, attention.rel_pos_w, attention.qkv.weight)
        grads.append([pixels.grad] + [p.grad.clone() for p in parts])
    for fast, stock in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(fast, stock, rtol=1e-3, atol=1e-6)


def test_state_dict_is_unchanged_by_the_switch():
    model = build_sam(TINY)
    keys = list(model.state_dict())
    use_fast_attention(model)
    assert list(model.state_dict()) == keys
    fresh = build_sam(TINY)
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_bf16_autocast_output_stays_close_to_fp32():
    encoder = use_fast_attention(_encoder_with_nonzero_rel_pos())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        reference = encoder(x)
        with autocast(torch.device("cpu"), torch.bfloat16):
            low = encoder(x).float()
    cosine = torch.nn.functional.cosine_similarity(low.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.999


def test_precision_choice():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype(cpu, "int8")


@pytest.mark.parametrize(
    ("flags", "speedup", "expected"),
    [
        ({"avx2"}, None, False),  # no native bf16: never measured (emulation takes seconds)
        ({"avx512_bf16"}, 0.55, False),  # the Xeon VM where bf16 runs at half the fp32 rate
        ({"avx512_bf16", "amx_bf16"}, 6.0, True),
        ({"amx_bf16"}, 1.2, False),  # faster, but not enough to pay for the rounding
    ],
)
def test_cpu_bf16_needs_the_instructions_and_a_measured_gain(monkeypatch, flags, speedup, expected):
    def measured():
        assert speedup is not None, "bf16 was measured on a CPU without bf16 instructions"
        return speedup

    monkeypatch.setattr(accelerate, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(accelerate, "bf16_speedup", measured)
    assert cpu_has_fast_bf16() is expected
    assert autocast_dtype(torch.device("cpu"), "auto") is (torch.bfloat16 if expected else None)


@pytest.mark.parametrize(
    ("flags", "speedup", "why"),
    [
        ({"avx2"}, None, "no bf16 instructions"),  # emulated: never measured
        ({"avx512_bf16"}, 0.55, "0.55x the fp32 speed"),
        ({"avx512_bf16", "amx_bf16"}, 6.0, None),
    ],
)
def test_bf16_asked_for_on_a_slow_cpu_warns_and_runs_in_bf16(monkeypatch, flags, speedup, why):
    """Asked for by name, bf16 stays the choice; where the CPU computes it slowly a warning
    says why and names the fix, for the Segmenter's precision and for training's."""
    from napari_samtune.core.train_setup import resolve_precision

    def measured():
        assert speedup is not None, "bf16 was measured on a CPU without bf16 instructions"
        return speedup

    monkeypatch.setattr(accelerate, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(accelerate, "bf16_speedup", measured)
    cpu = torch.device("cpu")
    choices = {
        torch.bfloat16: lambda: autocast_dtype(cpu, "bf16"),
        "bf16": lambda: resolve_precision("bf16", cpu),
    }
    for expected, choose in choices.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert choose() == expected
        messages = [str(w.message) for w in caught]
        if why is None:
            assert messages == []
        else:
            assert len(messages) == 1 and why in messages[0] and "'auto'" in messages[0]
    with warnings.catch_warnings(record=True) as caught:  # "auto" picks fp32 there, silently
        warnings.simplefilter("always")
        autocast_dtype(cpu, "auto")
        resolve_precision("auto", cpu)
    assert caught == []


def test_bf16_speedup_is_measured_and_cached():
    speedup = bf16_speedup(n_rows=64, width=64)
    assert speedup > 0
    assert bf16_speedup(n_rows=64, width=64) == speedup  # once per process


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 0), torch.float16), ((8, 0), torch.bfloat16)]
)
def test_auto_precision_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    """V100-class GPUs get fp16, Ampere and newer bf16 (the choice is made without a GPU here)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype(torch.device("cuda"), "auto") is expected


def test_fast_upscaling_matches_the_stock_transposed_convolution():
    torch.manual_seed(0)
    decoder = build_sam(TINY).mask_decoder
    stock = decoder.output_upscaling
    x = torch.randn(2, TINY.prompt_embed_dim, 16, 16, requires_grad=True)
    reference = stock(x)
    reference.square().sum().backward()
    grad_reference = x.grad.clone()
    x.grad = None
    use_fast_upscaling(decoder)
    assert isinstance(decoder.output_upscaling[0], FastConvTranspose2x2)
    fast = decoder.output_upscaling(x)
    fast.square().sum().backward()
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, grad_reference, rtol=1e-4, atol=1e-5)


def test_other_transposed_convolutions_are_left_alone():
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 4, 3, stride=2))
    use_fast_upscaling(model)
    assert type(model[0]) is torch.nn.ConvTranspose2d


# -- training fast paths: prompt decoding and TinyViT attention ------------------------------


def _decoder_sam():
    """TINY with non-trivial decoder weights (the random init gives near-zero logits, and
    layer norms that scale by one and shift by zero)."""
    torch.manual_seed(0)
    sam = build_sam(TINY)
    for module in sam.mask_decoder.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=module.in_features**-0.5)
            torch.nn.init.normal_(module.bias, std=0.1)
        elif isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, std=0.2)
    return sam.train()


def _prompts(kind: str, n: int = 3):
    """Prompts for n objects of a TINY model (256 px input, 16 x 16 embedding)."""
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(n, 2, 2, generator=generator) * 256
    labels = torch.tensor([[1, 0], [1, -1], [1, 1]])[:n]
    boxes = torch.sort(torch.rand(n, 2, 2, generator=generator) * 256, dim=1).values.reshape(n, 4)
    masks = torch.randn(n, 1, 64, 64, generator=generator) * 3
    return {
        "points first pass": (points, labels, None, None, True),
        "boxes first pass": (None, None, boxes, None, False),
        "points with mask input": (points, labels, None, masks, False),
        "everything": (points, labels, boxes, masks, True),
    }[kind]


def _outputs_and_grads(sam, decode_fn, image, embedding, prompts):
    sam.zero_grad()
    embedding.grad = None
    logits, iou = decode_fn(sam, image, *prompts)
    (logits.float().sin().sum() + iou.float().square().sum()).backward()
    grads = {k: p.grad.clone() for k, p in sam.named_parameters() if p.grad is not None}
    return logits.detach().float(), iou.detach().float(), grads, embedding.grad.clone()


@pytest.mark.parametrize(
    "kind", ["points first pass", "boxes first pass", "points with mask input", "everything"]
)
def test_decode_prompts_matches_the_stock_modules(kind):
    sam, prompts = _decoder_sam(), _prompts(kind)
    embedding = torch.randn(1, TINY.prompt_embed_dim, 16, 16, requires_grad=True)
    stock = _outputs_and_grads(sam, decode, embedding, embedding, prompts)
    fast = _outputs_and_grads(
        sam, decode_prompts, decoder_image(sam, embedding), embedding, prompts
    )
    assert fast[0].shape == stock[0].shape == (3, 3 if prompts[-1] else 1, 64, 64)
    assert stock[0].std() > 0.05  # logits that matter
    for fast_value, stock_value in zip(fast[:2] + fast[3:], stock[:2] + stock[3:], strict=True):
        _assert_close_to_scale(fast_value, stock_value)  # logits, IoU, gradient into the encoder
    assert fast[2].keys() == stock[2].keys()
    scale = max(g.abs().max().item() for g in stock[2].values())
    for name, grad in stock[2].items():
        # a key bias adds the same q . b_k to all scores of a query, which softmax removes:
        # the true gradient of every k_proj.bias is 0, both sides hold rounding noise
        if name.endswith("k_proj.bias"):
            assert max(fast[2][name].abs().max(), grad.abs().max()) < 1e-4 * scale, name
            continue
        _assert_close_to_scale(fast[2][name], grad, name)


def _assert_close_to_scale(actual, expected, name="", tolerance=1e-4):
    """Every element within ``tolerance`` x the largest magnitude of ``expected``."""
    error = (actual - expected).abs().max().item()
    assert error <= tolerance * expected.abs().max().item(), (name, error)


@pytest.mark.parametrize("n_objects", [1, 3])
@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("kind", ["points first pass", "boxes first pass", "everything"])
def test_inference_decoding_with_a_projected_first_layer_matches_stock(
    kind, multimask, n_objects, monkeypatch
):
    """Without gradients: the image's first-layer projections (skipped when there is a mask
    input), only the picked masks' tokens and MLPs, and (without a mask input) the low-rank
    image tokens of later layers, up to the first upscaling product (16 x 16 tokens: one
    chunk for one object, uneven chunks of 100 for three)."""
    sam, prompts = _decoder_sam().eval(), _prompts(kind, n_objects)
    prompts = prompts[:-1] + (multimask,)
    embedding = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    monkeypatch.setattr(mask_upscaling, "UPSCALE_CHUNK_ROWS", 300)
    monkeypatch.setattr(mask_upscaling, "UPSCALE_MIN_CHUNK_TOKENS", 100)
    monkeypatch.setattr(fast_decoder, "LOW_RANK_MIN_TOKENS", 16 * 16)
    low_rank_chunks = []
    chunked_product = low_rank_decoder.Keys.chunked_product

    def spy(self, projection):
        product = chunked_product(self, projection)
        return lambda *span: low_rank_chunks.append(span) or product(*span)

    monkeypatch.setattr(low_rank_decoder.Keys, "chunked_product", spy)
    with torch.no_grad():
        stock_logits, stock_iou = decode(sam, embedding, *prompts)
        image = decoder_image(sam, embedding, project_first_layer=True)
        attention = sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image
        heads, head_dim = attention.num_heads, attention.internal_dim // attention.num_heads
        assert image.first_layer.keys.shape == (heads, head_dim, 16 * 16)
        logits, iou = decode_prompts(sam, image, *prompts)
    mask_input = prompts[3]
    chunks = [(0, 300)] if n_objects == 1 else [(0, 100), (100, 200), (200, 300)]
    assert low_rank_chunks == ([] if mask_input is not None else chunks)
    assert logits.shape == stock_logits.shape == (n_objects, 3 if multimask else 1, 64, 64)
    assert stock_logits.std() > 0.05
    _assert_close_to_scale(logits, stock_logits)
    _assert_close_to_scale(iou, stock_iou)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n_masks", [1, 3])
def test_sub_pixel_logits_come_out_in_raster_order(dtype, n_masks):
    """Pixel (4i + 2a + a2, 4j + 2b + b2) of token (i, j) lands where it belongs, whether
    the pairs move as wider integers (fp32, bf16) or one by one (fp64, gradients)."""
    side = 5
    rows, cols = torch.meshgrid(torch.arange(4 * side), torch.arange(4 * side), indexing="ij")
    i, a, a2 = rows // 4, rows % 4 // 2, rows % 2
    j, b, b2 = cols // 4, cols % 4 // 2, cols % 2
    position = ((((i * side + j) * 2 + a) * 2 + b) * 2 + a2) * 2 + b2  # sub-pixel index
    logits = torch.randn(2, n_masks, side * side * 16).to(dtype)
    raster = sub_pixels_to_raster(logits, side)
    assert raster.shape == (2, n_masks, 4 * side, 4 * side) and raster.dtype == dtype
    assert torch.equal(raster, logits[:, :, position])
    with torch.enable_grad():
        leaf = logits.float().requires_grad_()
        differentiable = sub_pixels_to_raster(leaf, side)
        differentiable.sum().backward()
    assert torch.equal(differentiable.detach(), logits.float()[:, :, position])
    assert torch.equal(leaf.grad, torch.ones_like(leaf))


@pytest.mark.parametrize("autocast_on", [False, True])
@pytest.mark.parametrize("n_masks", [1, 3])
def test_mask_product_gradients_match_autograd_in_the_features_layout(n_masks, autocast_on):
    """The masks' product backward gives autograd's gradients, the features' one contiguous
    (as the GELU backward before it wants), in the inputs' dtypes (also under autocast)."""
    generator = torch.Generator().manual_seed(0)
    hyper = torch.randn(2, n_masks, 8, generator=generator)
    x = torch.randn(2, 50, 8, generator=generator)
    upstream = torch.randn(2, n_masks, 50, generator=generator)
    results = []
    for product in (lambda h, f: h @ f.mT, mask_product):
        leaves = [hyper.clone().requires_grad_(), x.clone().requires_grad_()]
        layouts = []
        leaves[1].register_hook(lambda grad, seen=layouts: seen.append(grad.is_contiguous()))
        with autocast(torch.device("cpu"), torch.bfloat16 if autocast_on else None):
            out = product(*leaves)
        (out.float() * upstream).sum().backward()
        results.append((out.detach().float(), leaves[0].grad, leaves[1].grad, layouts))
    (want, *want_grads, _), (got, *got_grads, layouts) = results
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert layouts == [True]
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert got_grad.dtype == torch.float32
        tolerance = 2e-2 if autocast_on else 1e-6  # one bf16 rounding apart at most
        torch.testing.assert_close(got_grad, want_grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("grad", [False, True])
def test_upscaling_in_chunks_matches_one_pass(grad):
    """Chunked or not, with or without gradients; without, the GELUs run in place."""
    sam = _decoder_sam()
    torch.manual_seed(2)
    keys = torch.randn(2, 16 * 16, TINY.prompt_embed_dim, requires_grad=grad)
    hyper = torch.randn(2, 3, TINY.prompt_embed_dim // 8)
    upscaling = sam.mask_decoder.output_upscaling
    with torch.set_grad_enabled(grad):
        weight, bias = transposed_conv_weight(upscaling[0])
        first_product = partial(_plain_first_product, keys, weight, bias)
        whole = upscaled_masks(upscaling, first_product, 256, hyper, 16, chunk_tokens=16 * 16)
        with torch.profiler.profile() as profile:
            chunked = upscaled_masks(upscaling, first_product, 256, hyper, 16, chunk_tokens=37)
    assert whole.shape == (2, 3, 64, 64)
    _assert_close_to_scale(chunked, whole, tolerance=1e-6)
    assert chunked.requires_grad == grad
    ops = [event.name for event in profile.events()]
    n_chunks = -(-256 // 37)
    assert ops.count("aten::gelu_") == (0 if grad else 2 * n_chunks), ops
    assert ops.count("aten::gelu") == (2 * n_chunks if grad else 0), ops
    if grad:  # the stock activations, differentiable as such
        whole.square().sum().backward()
        assert keys.grad is not None and keys.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["points first pass", "everything"])
def test_decode_prompts_in_bf16_is_as_close_to_fp32_as_stock_autocast(kind):
    sam, prompts = _decoder_sam(), _prompts(kind)
    embedding = torch.randn(1, TINY.prompt_embed_dim, 16, 16, requires_grad=True)
    reference = _outputs_and_grads(sam, decode, embedding, embedding, prompts)
    with autocast(torch.device("cpu"), torch.bfloat16):
        image = decoder_image(sam, embedding)
        assert image.dtype == torch.bfloat16 and image.tokens.dtype == torch.float32
        fast = _outputs_and_grads(sam, decode_prompts, image, embedding, prompts)
        stock = _outputs_and_grads(sam, decode, embedding, embedding, prompts)

    def error(result, part, name=None):
        got, want = (r[part] if name is None else r[part][name] for r in (result, reference))
        return ((got.float() - want).norm() / want.norm().clamp(min=1e-12)).item()

    assert error(fast, 0) < 0.03  # logits
    for part in (0, 1, 3):  # logits, IoU, gradient into the encoder
        assert error(fast, part) <= max(1.5 * error(stock, part), 0.01), part
    for name, grad in reference[2].items():
        if not name.endswith("k_proj.bias") and grad.abs().max() > 0:  # zero true gradients
            assert error(fast, 2, name) <= max(3 * error(stock, 2, name), 0.1), name


def test_use_fast_paths_switches_encoder_and_decoder_and_keeps_the_weights():
    model = build_sam(TINY)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_fast_paths(model)
    kinds = {type(m) for m in model.modules()}
    assert FastRelPosAttention in kinds and FastConvTranspose2x2 in kinds
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_low_precision_and_small_images_keep_the_plain_image_tokens(monkeypatch):
    """The low-rank tokens' norms come from moments with cancellations: float32 only; and
    for embeddings smaller than LOW_RANK_MIN_TOKENS the plain decoder is faster."""
    sam = _decoder_sam().eval()
    embedding = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    with torch.no_grad():
        assert decoder_image(sam, embedding, project_first_layer=True).first_layer.low_rank is None
        monkeypatch.setattr(fast_decoder, "LOW_RANK_MIN_TOKENS", 16 * 16)
        assert decoder_image(sam, embedding, project_first_layer=True).first_layer.low_rank
        with autocast(torch.device("cpu"), torch.bfloat16):
            image = decoder_image(sam, embedding, project_first_layer=True)
    assert image.first_layer is not None and image.first_layer.low_rank is None


@pytest.mark.parametrize(("flags", "expected"), [({"avx512_bf16"}, False), ({"amx_bf16"}, True)])
def test_amx_is_read_from_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(accelerate, "_cpu_flags", lambda: flags | {"avx2"})
    assert accelerate.has_amx.__wrapped__() is expected
