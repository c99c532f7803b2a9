"""Weights prepared once (weight_cache.kept): kept while the weights stay, never stale."""

import pytest
import torch

from napari_samtune.core import onednn
from napari_samtune.core.accelerate import use_fast_paths
from napari_samtune.core.architectures import TINY_TINYVIT, build_sam
from napari_samtune.core.fast_encoder import encode
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.train_setup import make_optimizer
from napari_samtune.core.weight_cache import kept


class Doubled:
    """``prepare`` for :func:`kept` that counts its calls."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        self.linear, self.calls = linear, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.linear.weight * 2

    def kept(self) -> torch.Tensor:
        return kept(self.linear, "doubled", (self.linear.weight, self.linear.bias), self)


def test_a_kept_result_is_made_once_while_the_weights_stay():
    doubled = Doubled(torch.nn.Linear(4, 3))
    with torch.no_grad():
        first, again = doubled.kept(), doubled.kept()
    assert first is again and doubled.calls == 1
    assert torch.equal(first, doubled.linear.weight * 2)
    assert set(doubled.linear.state_dict()) == {"weight", "bias"}


def test_a_kept_result_follows_changes_in_place_replacements_and_moves():
    linear = torch.nn.Linear(4, 3)
    doubled = Doubled(linear)
    changes = [
        lambda: linear.weight.add_(1.0),  # an optimizer step
        lambda: linear.load_state_dict({"weight": torch.ones(3, 4), "bias": torch.zeros(3)}),
        lambda: linear.bias.mul_(3.0),  # a tensor the result does not read, but listed
        lambda: setattr(linear, "weight", torch.nn.Parameter(torch.randn(3, 4))),
        lambda: linear.double(),
    ]
    with torch.no_grad():
        doubled.kept()
        for calls, change in enumerate(changes, start=2):
            change()
            result = doubled.kept()
            assert doubled.calls == calls
            assert torch.equal(result, linear.weight * 2) and result.dtype == linear.weight.dtype


def test_nothing_is_kept_with_gradients_or_for_inference_tensors():
    doubled = Doubled(torch.nn.Linear(4, 3))
    results = [doubled.kept(), doubled.kept()]  # gradients on: the result must carry them
    assert doubled.calls == 2 and all(r.grad_fn is not None for r in results)
    with torch.inference_mode():
        doubled = Doubled(torch.nn.Linear(4, 3))  # its weights have no version counter
        doubled.kept()
        doubled.linear.weight.add_(1.0)
        assert torch.equal(doubled.kept(), doubled.linear.weight * 2) and doubled.calls == 2


def _fast_tiny_tinyvit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    sam = build_sam(TINY_TINYVIT)
    for module in sam.image_encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # trained-like statistics
            torch.nn.init.normal_(module.running_mean, std=0.1)
            module.running_var.uniform_(0.5, 2.0)
        if hasattr(module, "attention_biases"):
            torch.nn.init.normal_(module.attention_biases)
    return use_fast_paths(sam.eval())


def _embedding(sam: torch.nn.Module, pixels: torch.Tensor, precision: str) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, precision == "bf16"):
        return encode(sam, pixels).float()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_fast_tinyvit_given_new_weights_uses_them(precision, monkeypatch):
    """Loaded with other weights after a call, or trained a step, the fast TinyViT gives what
    a model made with those weights gives: nothing it kept from before is used."""
    monkeypatch.setattr(onednn, "fused_linears_pay", lambda: True)  # every kept path, any CPU
    sam, other = _fast_tiny_tinyvit(0), _fast_tiny_tinyvit(1)
    pixels = torch.randn(1, 3, 1024, 1024)
    before = _embedding(sam, pixels, precision)
    kept_on = [m for m in sam.image_encoder.modules() if "_samtune_kept" in m.__dict__]
    assert len(kept_on) >= 10  # convolutions, attention, linear layers
    sam.load_state_dict(other.state_dict())
    sam.eval()  # (TinyViT's attention makes its bias of eval mode here, not when loaded)
    after = _embedding(sam, pixels, precision)
    assert not torch.allclose(after, before, atol=1e-2)
    torch.testing.assert_close(after, _embedding(other, pixels, precision), rtol=0, atol=0)

    sam.train()  # a training step changes weights and batch-norm statistics in place
    optimizer = torch.optim.SGD(sam.image_encoder.parameters(), lr=0.1)
    sam.image_encoder(torch.randn(1, 3, 1024, 1024)).square().mean().backward()
    optimizer.step()
    sam.eval()
    trained = _fast_tiny_tinyvit(2)
    trained.load_state_dict(sam.state_dict())
    trained.eval()
    torch.testing.assert_close(
        _embedding(sam, pixels, precision), _embedding(trained, pixels, precision), rtol=0, atol=0
    )


def test_a_segmenter_made_after_weights_changed_through_data_uses_them(monkeypatch):
    """``p.data.copy_(q)`` bumps no version counter: a Segmenter made for the model after such
    a change embedded with a mix of the old kept weights and the new ones (and cached that
    embedding under the new model id)."""
    from napari_samtune.core.predict import Segmenter

    monkeypatch.setattr(onednn, "fused_linears_pay", lambda: True)  # every kept path, any CPU
    sam, other = _fast_tiny_tinyvit(0), _fast_tiny_tinyvit(1)
    image = (torch.rand(1024, 1024) * 255).to(torch.uint8).numpy()
    first = Segmenter(sam, model_id="first", use_disk_cache=False)
    first.set_image(image)
    pairs = zip(
        [*sam.parameters(), *sam.buffers()], [*other.parameters(), *other.buffers()], strict=True
    )
    for mine, theirs in pairs:
        mine.data.copy_(theirs.data)
    again = Segmenter(sam, model_id="second", use_disk_cache=False)
    again.set_image(image)
    reference = Segmenter(other, model_id="reference", use_disk_cache=False)
    reference.set_image(image)
    torch.testing.assert_close(again.features(0), reference.features(0), rtol=0, atol=0)


def test_a_kept_result_follows_a_step_of_the_fused_optimizer_training_uses():
    """PyTorch's fused Adam writes the weights without bumping their version counters: a
    Segmenter kept over a model finetuned in the same process decoded new images with the
    old weights' positional projections."""
    linear = torch.nn.Linear(4, 3)
    doubled = Doubled(linear)
    optimizer, _ = make_optimizer(list(linear.parameters()), TrainConfig(learning_rate=0.1))
    assert optimizer.defaults["fused"] is True
    with torch.no_grad():
        before = doubled.kept()
    linear.weight.grad, linear.bias.grad = torch.ones(3, 4), torch.ones(3)
    optimizer.step()
    with torch.no_grad():
        after = doubled.kept()
    assert doubled.calls == 2 and not torch.equal(after, before)
    assert torch.equal(after, linear.weight.detach() * 2)
