"""TinyViT (vit_t) fast paths: each gives the stock result, fused or not."""

import math

import pytest
import torch

from napari_samtune.core import fast_tinyvit, onednn, windows
from napari_samtune.core.accelerate import use_fast_paths
from napari_samtune.core.architectures import TINY, TINY_TINYVIT, build_sam
from napari_samtune.core.fast_encoder import encode
from napari_samtune.core.fast_tinyvit import use_fast_tinyvit


def _tinyvit_attention():
    from mobile_sam.modeling.tiny_vit_sam import Attention as TinyViTAttention

    torch.manual_seed(0)
    attention = TinyViTAttention(64, 32, num_heads=2, attn_ratio=1, resolution=(7, 7))
    torch.nn.init.normal_(attention.attention_biases)  # zero-initialised: make the bias matter
    return attention


@pytest.mark.parametrize("training", [True, False])
def test_fast_tinyvit_attention_matches_stock(training):
    attention = _tinyvit_attention()
    attention.train(training)  # (returns None: TinyViT's Attention overrides train)
    stock_class = type(attention)
    x = torch.randn(5, 49, 64, requires_grad=True)
    results = []
    for switch in (lambda m: m, use_fast_tinyvit):
        module = torch.nn.Sequential(attention)
        switch(module)
        attention.zero_grad()
        x.grad = None
        out = module(x)
        out.square().sum().backward()
        results.append([out.detach(), x.grad.clone()])
        if training:  # (eval mode reads a precomputed, detached bias)
            results[-1].append(attention.attention_biases.grad.clone())
    assert type(attention) is not stock_class and isinstance(attention, stock_class)
    for fast, stock in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-5)


def test_fast_tinyvit_attention_keeps_the_state_dict_and_skips_other_models():
    attention = _tinyvit_attention()
    keys = list(attention.state_dict())
    use_fast_tinyvit(torch.nn.Sequential(attention))
    assert type(attention).__name__ == "FastTinyViTAttention"
    assert list(attention.state_dict()) == keys
    model = build_sam(TINY)
    before = [type(m) for m in model.modules()]
    assert [type(m) for m in use_fast_tinyvit(model).modules()] == before


@pytest.mark.parametrize("training", [True, False])
def test_fast_tinyvit_conv_bn_matches_stock(training):
    """In eval mode the batch norm is folded into the convolution; training keeps the stock path."""
    from mobile_sam.modeling.tiny_vit_sam import Conv2d_BN

    torch.manual_seed(0)
    block = torch.nn.Sequential(Conv2d_BN(8, 16, ks=3, stride=2, pad=1, groups=2))
    norm = block[0].bn
    for tensor in (norm.weight, norm.bias, norm.running_mean):  # defaults make the fold trivial
        torch.nn.init.normal_(tensor)
    norm.running_var.uniform_(0.5, 2.0)
    block.train(training)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        reference = block(x)
        fast = use_fast_tinyvit(block)(x)
    assert type(block[0]) is not Conv2d_BN
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_fast_paths_give_the_stock_tinyvit_embedding_in_eval_mode():
    """Attention, folded batch norms and channels-last pixels together, on a whole TinyViT."""

    torch.manual_seed(0)
    sam = build_sam(TINY_TINYVIT).eval()
    for module in sam.image_encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # trained-like statistics, not defaults
            torch.nn.init.normal_(module.running_mean, std=0.1)
            module.running_var.uniform_(0.5, 2.0)
    pixels = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        reference = sam.image_encoder(pixels)
        fast = encode(use_fast_paths(sam), pixels)
    assert type(sam.image_encoder.patch_embed.seq[0]).__name__ == "FastConv2dBN"
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_fast_tinyvit_attention_in_bf16_is_as_close_as_stock_autocast():
    """The bf16 branch (one baddbmm with the bias) against the stock module under autocast."""
    attention = _tinyvit_attention()
    attention.eval()  # (returns None: TinyViT's Attention overrides train)
    x = torch.randn(5, 49, 64)
    with torch.no_grad():
        reference = attention(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = attention(x).float()
            fast = use_fast_tinyvit(torch.nn.Sequential(attention))(x).float()
    assert (fast - reference).abs().max() <= 2 * (stock - reference).abs().max() + 1e-3


def _trained_like(module: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm statistics and affine terms (defaults make the fold trivial)."""
    torch.manual_seed(1)
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            for tensor in (norm.weight, norm.bias, norm.running_mean):
                torch.nn.init.normal_(tensor, std=0.5)
            norm.running_var.uniform_(0.5, 2.0)
        if hasattr(norm, "attention_biases"):  # zero-initialised: make the bias matter
            torch.nn.init.normal_(norm.attention_biases)
    return module.eval()


def _tinyvit_blocks():
    """One of each TinyViT module with a fused path, and an input for it."""
    from mobile_sam.modeling import tiny_vit_sam as tv

    gelu = torch.nn.GELU
    return [
        (tv.MBConv(16, 16, 4.0, gelu, 0.0), torch.randn(2, 16, 20, 20)),
        (tv.PatchMerging((20, 20), 16, 32, gelu), torch.randn(2, 16, 20, 20)),
        (tv.PatchMerging((10, 10), 16, 32, gelu), torch.randn(2, 100, 16)),  # tokens in
        (tv.PatchEmbed(3, 16, 64, gelu), torch.randn(2, 3, 64, 64)),
        (tv.Mlp(16, 64), torch.randn(2, 100, 16)),
        # 20 x 18 tokens in 7 x 7 windows: padded bottom and right
        (tv.TinyViTBlock(32, (20, 18), num_heads=2, window_size=7), torch.randn(2, 360, 32)),
        (tv.TinyViTBlock(32, (14, 7), num_heads=4, window_size=7), torch.randn(1, 98, 32)),
    ]


N_BLOCKS = len(_tinyvit_blocks())


def _fused_ops_run(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    with torch.profiler.profile() as profile:
        out = module(x)
    return out, {event.name for event in profile.events() if "pointwise" in event.name}


@pytest.fixture(params=[True, False], ids=["fused-linears", "plain-linears"])
def fused_linears(request, monkeypatch):
    """Both ways of running linear + GELU / + residual add in fp32 inference, whatever
    this CPU would pick (:func:`.onednn.fused_linears_pay`)."""
    monkeypatch.setattr(onednn, "fused_linears_pay", lambda: request.param)
    return request.param


@pytest.mark.parametrize("index", range(N_BLOCKS))
def test_fused_tinyvit_blocks_match_stock_in_fp32_inference(index, fused_linears):
    block, x = _tinyvit_blocks()[index]
    _trained_like(block)
    with torch.inference_mode():
        reference = block(x)
        use_fast_tinyvit(torch.nn.Sequential(block))
        fast, fused_ops = _fused_ops_run(block, x)
    assert type(block).__name__.startswith("Fast")
    fuses_linears = index >= 4  # the Mlp and the transformer blocks; the others convolutions
    assert ("mkldnn::_linear_pointwise" in fused_ops) == (fuses_linears and fused_linears)
    assert ("mkldnn::_convolution_pointwise" in fused_ops) == (not fuses_linears)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("index", range(N_BLOCKS))
def test_fused_tinyvit_blocks_in_bf16_are_as_close_as_stock_autocast(
    index, fused_linears, bf16_kernels
):
    """Under bf16 autocast the convolutions + GELU are fused in bf16, and so is the MLP's
    linear + GELU where fused linears pay (not the residual adds): as close to fp32 as the
    stock modules under autocast. Without oneDNN's bf16 kernels nothing is fused."""
    block, x = _tinyvit_blocks()[index]
    _trained_like(block)
    with torch.inference_mode():
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = block(x).float()
            use_fast_tinyvit(torch.nn.Sequential(block))
            fast, fused_ops = _fused_ops_run(block, x)
    if not bf16_kernels:
        assert fused_ops == set()
    elif index < 4:  # convolutions
        assert fused_ops == {"mkldnn::_convolution_pointwise"}
    else:
        assert fused_ops == ({"mkldnn::_linear_pointwise"} if fused_linears else set())
    assert (fast.float() - reference).abs().max() <= 2 * (stock - reference).abs().max() + 1e-2


@pytest.mark.parametrize("index", range(N_BLOCKS))
def test_fused_tinyvit_blocks_fall_back_where_gradients_are_taken(index):
    block, x = _tinyvit_blocks()[index]
    _trained_like(block)
    x.requires_grad_(True)
    reference = block(x)
    (reference_grad,) = torch.autograd.grad(reference.square().sum(), x)
    use_fast_tinyvit(torch.nn.Sequential(block))
    fast, fused_ops = _fused_ops_run(block, x)
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), x)
    assert not fused_ops  # oneDNN's fused ops have no backward
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-4, atol=1e-4)


def test_only_the_exact_gelu_is_fused():
    assert onednn.is_gelu(torch.nn.GELU())
    assert not onednn.is_gelu(torch.nn.GELU(approximate="tanh"))
    assert not onednn.is_gelu(torch.nn.ReLU())


def test_fusion_only_in_eval_inference_in_fp32_or_under_bf16_autocast(monkeypatch):
    monkeypatch.setattr(onednn, "has_bf16_kernels", lambda: True)
    conv = fast_tinyvit._fast_conv_bn_class()(4, 4)
    conv.eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert onednn.fusable(x, conv) and not onednn.bf16_fusable(x, conv)
        assert not onednn.fusable(x.bfloat16(), conv)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn.fusable(x, conv)
            assert onednn.bf16_fusable(x, conv)  # in bf16, as autocast would run it
            monkeypatch.setattr(onednn, "has_bf16_kernels", lambda: False)  # an AVX2 CPU
            assert not onednn.bf16_fusable(x, conv)
            monkeypatch.setattr(onednn, "has_bf16_kernels", lambda: True)
        with torch.autocast("cpu", dtype=torch.float16):
            assert not onednn.bf16_fusable(x, conv)
        conv.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn.bf16_fusable(x, conv)
        assert not onednn.fusable(x, conv)
    conv.eval()
    assert not onednn.fusable(x, conv)  # gradients enabled
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.bf16_fusable(x, conv)


@pytest.mark.parametrize(("supported", "expected"), [(None, False), (False, False), (True, True)])
def test_bf16_kernels_are_asked_of_onednn(monkeypatch, supported, expected):
    """oneDNN says whether it runs bf16 here (AVX-512 BW/VL/DQ or AVX-NE-CONVERT); a torch
    build that cannot say gets the stock modules."""
    monkeypatch.setattr(onednn, "has_fused_ops", lambda: True)
    names = {"_convolution_pointwise": None, "_linear_pointwise": None}
    if supported is not None:
        names["_is_mkldnn_bf16_supported"] = lambda: supported
    monkeypatch.setattr(torch.ops, "mkldnn", type("Ops", (), names))
    assert onednn.has_bf16_kernels.__wrapped__() is expected


def _stock_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """TinyViT's own partition: zero-pad (B, H, W, C) to whole windows, then cut."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    x = torch.nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    n_high, n_wide = (height + pad_h) // window, (width + pad_w) // window
    x = x.view(batch, n_high, window, n_wide, window, channels).transpose(2, 3)
    return x.reshape(-1, window * window, channels)


@pytest.mark.parametrize("shape", [(2, 20, 18), (1, 14, 7), (1, 5, 9), (3, 7, 16)])
def test_windows_are_tinyvits_padded_windows_and_go_back(shape):
    window, n_heads, per_head = 7, 3, 4
    x = torch.randn(*shape, n_heads * per_head)
    fill = torch.randn(n_heads * per_head)
    cut = windows.to_windows(x, window, fill, n_heads)
    stock = _stock_windows(x, window)
    padding = _stock_windows(torch.ones(*shape, 1), window)[..., 0] == 0  # (n, tokens)
    expected = torch.where(padding[..., None], fill, stock)
    expected = expected.view(len(stock), window * window, n_heads, per_head).transpose(1, 2)
    assert torch.equal(cut, expected)
    assert torch.equal(windows.from_windows(cut, *shape[1:], window), x)


@pytest.mark.parametrize("shape", [(2, 20, 18), (1, 14, 7), (1, 5, 9), (3, 7, 16)])
def test_parts_of_the_windows_are_the_padded_windows_and_their_own_tokens(shape):
    """Each part's whole windows are those of to_windows; its queries are their rows of the
    map's own tokens; putting the queries back rebuilds the map; the parts cover it once."""
    window, n_heads, per_head = 7, 3, 4
    x = torch.randn(*shape, n_heads * per_head)
    fill = torch.randn(n_heads * per_head)
    grid = windows.to_windows(x, window, fill, n_heads)
    grid = grid.view(shape[0], -(-shape[1] // window), -(-shape[2] // window), *grid.shape[1:])
    per_head_map = x.view(*shape, n_heads, per_head)
    rebuilt, covered = torch.zeros_like(per_head_map), torch.zeros(shape[1:], dtype=torch.int)
    for part in windows.parts(*shape[1:], window):
        rows, cols = part.tokens
        whole = windows.part_windows(per_head_map, part, window, fill.view(n_heads, per_head))
        expected = grid[(slice(None), *part.windows)].reshape(whole.shape)
        assert torch.equal(whole, expected) and whole.is_contiguous()
        queries = windows.part_queries(per_head_map, part)
        own = expected.view(len(whole), n_heads, window, window, per_head)[:, :, :rows, :cols]
        assert torch.equal(queries, own.reshape(queries.shape)) and queries.is_contiguous()
        windows.put_part(rebuilt, part, queries)
        covered[part.pixels] += 1
    assert torch.equal(rebuilt, per_head_map) and bool((covered == 1).all())


def test_fast_tinyvit_block_asks_queries_of_the_maps_own_tokens_only():
    """20 x 18 tokens in 7 x 7 windows: 441 padded tokens a head, of which 360 the map's own;
    the score and output products take those 360 rows."""
    block, x = _tinyvit_blocks()[5]
    _trained_like(block)
    use_fast_tinyvit(torch.nn.Sequential(block))
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as profile:
        block(x)
    products = [e.input_shapes for e in profile.events() if e.name == "aten::bmm"]
    rows = sum(a[0] * a[1] for a, _ in products)  # (windows x heads, query rows, ...)
    assert rows == 2 * len(x) * block.num_heads * 20 * 18  # scores and outputs


@pytest.mark.parametrize("shape", [(2, 20, 18), (1, 14, 7), (1, 5, 9), (3, 7, 16)])
def test_windows_with_gradients_give_the_padded_windows_gradients(shape):
    """The gradients of the x and fill that made the windows, against autograd through
    TinyViT's padded windows (to_windows) and through a crop (from_windows)."""
    window, n_heads, per_head = 7, 3, 4
    x = torch.randn(*shape, n_heads * per_head, dtype=torch.float64, requires_grad=True)
    fill = torch.randn(n_heads * per_head, dtype=torch.float64, requires_grad=True)
    padding = _stock_windows(torch.ones(*shape, 1), window)[..., 0] == 0  # (n, tokens)
    stock = torch.where(padding[..., None], fill, _stock_windows(x, window))
    stock = stock.view(len(stock), window * window, n_heads, per_head).transpose(1, 2)
    weights = torch.randn_like(stock), torch.randn_like(x)
    stock_back = _stock_crop(stock * weights[0], shape, window)
    stock_loss = stock.square().sum() + (stock_back * weights[1]).sum()
    cut = windows.to_windows_grad(x, window, fill, n_heads)
    back = windows.from_windows_grad(cut * weights[0], *shape[1:], window)
    loss = cut.square().sum() + (back * weights[1]).sum()
    assert torch.equal(cut, stock)
    expected = torch.autograd.grad(stock_loss, (x, fill))
    for grad, reference in zip(torch.autograd.grad(loss, (x, fill)), expected, strict=True):
        torch.testing.assert_close(grad, reference)


def _stock_crop(cut: torch.Tensor, shape: tuple[int, int, int], window: int) -> torch.Tensor:
    """TinyViT's window reverse and crop of (n, heads, window**2, E) windows."""
    batch, height, width = shape
    n_high, n_wide = -(-height // window), -(-width // window)
    x = cut.transpose(1, 2).reshape(batch, n_high, n_wide, window, window, -1).transpose(2, 3)
    return x.reshape(batch, n_high * window, n_wide * window, -1)[:, :height, :width]


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("index", [5, 6])
def test_fast_tinyvit_block_trains_like_stock(index, lora):
    """Training mode with gradients: same output, input and parameter gradients, and batch-norm
    statistics as the stock block (padded and unpadded windows; with LoRA adapters on its
    linear layers, whose scaled qkv output then carries the attention scale)."""
    import copy

    from napari_samtune.core.lora import apply_lora, lora_modules

    block, x = _tinyvit_blocks()[index]
    if lora:
        apply_lora(torch.nn.Sequential(block), rank=2)
        for adapter in lora_modules(block).values():  # lora_b starts at zero: make it matter
            torch.nn.init.normal_(adapter.lora_b, std=0.5)
    _trained_like(block).train()
    stock = copy.deepcopy(block)
    use_fast_tinyvit(torch.nn.Sequential(block))
    results = []
    for module in (stock, block):
        inp = x.clone().requires_grad_(True)
        out = module(inp)
        out.square().sum().backward()
        grads = {name: p.grad for name, p in module.named_parameters() if p.requires_grad}
        results.append((out, inp.grad, grads, copy.deepcopy(module.state_dict())))
    (out, x_grad, grads, state), (f_out, f_x_grad, f_grads, f_state) = results
    assert type(block).__name__ == "FastTinyViTBlock"
    torch.testing.assert_close(f_out, out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f_x_grad, x_grad, rtol=1e-4, atol=1e-4)
    assert grads.keys() == f_grads.keys() and all(g is not None for g in f_grads.values())
    assert any("lora_b" in name for name in grads) is lora
    for name, grad in grads.items():
        torch.testing.assert_close(f_grads[name], grad, rtol=1e-4, atol=1e-3, msg=name)
    for name, tensor in state.items():  # batch-norm running statistics moved alike
        torch.testing.assert_close(f_state[name], tensor, msg=name)


def test_fast_tinyvit_block_fuses_its_residual_adds(fused_linears):
    block, x = _tinyvit_blocks()[5]
    _trained_like(block)
    use_fast_tinyvit(torch.nn.Sequential(block))
    with torch.inference_mode(), torch.profiler.profile() as profile:
        block(x)
    names = [event.name for event in profile.events()]
    assert "aten::gelu" not in names, names  # fused, or in place on the product
    if fused_linears:
        # attention projection + add, fc1 + gelu, fc2 + add (the profiler names both
        # overloads alike)
        assert names.count("mkldnn::_linear_pointwise") == 3, names
    else:  # the GELU and both adds in place on their products
        assert "mkldnn::_linear_pointwise" not in names, names
        assert names.count("aten::gelu_") == 1, names
        # both residuals, and the attention bias of each part of the windows (20 x 18 tokens
        # in 7 x 7 windows: full windows, the last row and column, the corner)
        assert names.count("aten::add_") == 2 + 4, names


def test_fast_tinyvit_block_in_bf16_fuses_its_bf16_residual_adds(fused_linears, bf16_kernels):
    """TinyViT's tokens are bf16 under autocast (the convolutions before the blocks make
    them so): where fused linears pay and oneDNN has bf16 kernels, both residual adds go
    into the bf16 linear kernels, and the block stays as close to fp32 as stock autocast."""
    fused = fused_linears and bf16_kernels
    block, x = _tinyvit_blocks()[5]
    _trained_like(block)
    x = x.bfloat16()
    with torch.inference_mode():
        reference = block(x.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = block(x).float()
            use_fast_tinyvit(torch.nn.Sequential(block))
            with torch.profiler.profile(record_shapes=True) as profile:
                fast = block(x)
    names = [event.name for event in profile.events()]
    token_adds = [  # not the adds of the folded batch norm's statistics
        e for e in profile.events() if e.name == "aten::add" and x.numel() in _numels(e)
    ]
    assert fast.dtype == torch.bfloat16
    # q, k, v of the tokens and of the padding's zero token, the attention projection + add,
    # fc1 + GELU, fc2 + add; no addmm, which copies its bias into every row first
    assert names.count("mkldnn::_linear_pointwise") == (5 if fused else 0), names
    assert ("aten::addmm" in names) == (not fused), names
    assert len(token_adds) == (0 if fused else 2)  # else the two residual adds
    assert (fast.float() - reference).abs().max() <= 2 * (stock - reference).abs().max() + 1e-2


def _numels(event) -> list[int]:
    return [math.prod(shape) for shape in event.input_shapes if shape]


def test_linear_add_keeps_a_float32_residual_in_float32_under_bf16_autocast():
    """ViT-B's residual stream stays float32 under autocast; fusing its add into a bf16
    kernel would round it to bf16 at every block."""
    linear = torch.nn.Linear(32, 16).eval()
    x, residual = torch.randn(50, 32), torch.randn(50, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        kept = onednn.linear_add(x, linear, residual)
        rounded = onednn.linear_add(x, linear, residual.bfloat16())
    assert kept.dtype == torch.float32
    assert rounded.dtype == torch.bfloat16
    expected = residual + linear(x)
    torch.testing.assert_close(kept, expected, rtol=0.02, atol=0.05)
    torch.testing.assert_close(rounded.float(), expected, rtol=0.02, atol=0.05)


def test_window_softmax_takes_short_bf16_rows_through_float32():
    torch.manual_seed(0)
    short = torch.randn(6, 4, 49, 49).mul(4).bfloat16()
    long = torch.randn(2, 5, 196, 196).mul(4).bfloat16()
    with torch.no_grad():
        probs = fast_tinyvit.window_softmax(short)
        assert probs.dtype == torch.bfloat16
        torch.testing.assert_close(probs, short.float().softmax(-1).bfloat16(), rtol=0, atol=0)
        torch.testing.assert_close(fast_tinyvit.window_softmax(long), long.softmax(-1))
        with torch.profiler.profile(record_shapes=True) as profile:
            fast_tinyvit.window_softmax(short)
            fast_tinyvit.window_softmax(long)
    softmax_inputs = [e.input_shapes[0] for e in profile.events() if e.name == "aten::_softmax"]
    assert softmax_inputs == [[6, 4, 49, 49], [2, 5, 196, 196]]
    casts = [e for e in profile.events() if e.name == "aten::_to_copy"]
    assert len(casts) == 2  # to float32 for the short rows and back; none for the long ones
    short.requires_grad_(True)  # with gradients: the plain softmax
    torch.testing.assert_close(fast_tinyvit.window_softmax(short), short.softmax(-1))


def test_fused_linears_pay_where_the_cpu_has_avx512(monkeypatch):
    for capability, expected in [("AVX512", True), ("AVX512_BF16", True), ("AVX2", False)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert onednn.fused_linears_pay.__wrapped__() is expected


def test_fast_tinyvit_block_in_bf16_is_as_close_as_stock_autocast():
    """Under autocast the window path runs too; as close to fp32 as stock bf16."""
    block, x = _tinyvit_blocks()[5]
    _trained_like(block)
    with torch.no_grad():
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = block(x).float()
            fast = use_fast_tinyvit(torch.nn.Sequential(block))(x).float()
    assert type(block).__name__ == "FastTinyViTBlock"
    assert (fast - reference).abs().max() <= 2 * (stock - reference).abs().max() + 1e-2


def test_fast_tinyvit_block_keeps_a_lora_adapter():
    """The attention scale goes into a plain qkv's weights; an adapted qkv keeps its adapter."""
    from napari_samtune.core.lora import apply_lora, lora_modules

    block, x = _tinyvit_blocks()[5]
    model = torch.nn.Sequential(block)
    apply_lora(model, rank=2)
    for adapter in lora_modules(model).values():  # lora_b starts at zero: make it matter
        torch.nn.init.normal_(adapter.lora_b, std=0.5)
    _trained_like(block)
    with torch.inference_mode():
        reference = block(x)
        fast = use_fast_tinyvit(model)(x)
    assert type(block).__name__ == "FastTinyViTBlock"
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
