"""Adapter dropout on the lean path: torchtune's semantics for DoRA, PEFT's for LoRA, no extra saves.

DoRA with dropout computes y = g * (W x + s B A x_d) + bias, x_d = x * keep, keep = mask / (1 - p)
(dora_core/dora_math.py says why). The exact checks run in float64 against a plain-autograd
reference built from the same mask, where the two computations agree to rounding: ~1e-16 per
operation, so a relative error bound of 1e-12 leaves four orders of magnitude for accumulation
over these small sums and still catches any wrong term (a missing mask is an O(1) error).
"""

import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer

from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from dora_core.dora_math import DoraLinearFunction, dora_linear, dropout_keep_scale, lora_linear
from tests.support.model_factories import adapted_pair, input_ids, perturb_adapters, tiny_llama

FLOAT64_RELATIVE = 1e-12
N, IN, OUT, RANK, P, SEED, SCALE = 24, 12, 10, 3, 0.3, 1234, 1.7


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).norm() / expected.norm().clamp_min(torch.finfo(expected.dtype).tiny))


def _float64_case(with_bias: bool):
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    x = rand(2, N // 2, IN).requires_grad_()
    weight = rand(OUT, IN)
    bias = rand(OUT).requires_grad_() if with_bias else None
    lora_a, lora_b = rand(RANK, IN).requires_grad_(), (0.3 * rand(OUT, RANK)).requires_grad_()
    magnitude = (weight.norm(dim=1) * (1 + 0.1 * rand(OUT))).requires_grad_()
    return x, weight, bias, lora_a, lora_b, magnitude


def _gradients(output, inputs, upstream):
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(output, wanted, upstream)


@pytest.mark.parametrize("with_bias", [False, True])
def test_dora_dropout_matches_float64_reference(with_bias):
    x, weight, bias, lora_a, lora_b, magnitude = _float64_case(with_bias)
    norm = (weight + SCALE * lora_b.detach() @ lora_a.detach()).norm(dim=1)  # n, detached
    keep = dropout_keep_scale(x, P, SEED)
    assert 0 < int((keep == 0).sum()) < keep.numel(), "the mask must drop some inputs and keep others"

    ours = dora_linear(x, weight, bias, lora_a, lora_b, magnitude, norm, SCALE, P, SEED)
    gain = magnitude / norm
    reference = gain * (x @ weight.T + SCALE * ((x * keep) @ lora_a.T) @ lora_b.T)
    reference = reference if bias is None else reference + bias

    assert _relative_error(ours, reference) < FLOAT64_RELATIVE
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    inputs = (x, bias, lora_a, lora_b, magnitude)
    for mine, theirs in zip(_gradients(ours, inputs, upstream), _gradients(reference, inputs, upstream), strict=True):
        assert _relative_error(mine, theirs) < FLOAT64_RELATIVE


def test_lora_dropout_matches_float64_reference():
    x, weight, _, lora_a, lora_b, _ = _float64_case(False)
    keep = dropout_keep_scale(x, P, SEED)
    ours = lora_linear(x, weight, None, lora_a, lora_b, SCALE, P, SEED)
    reference = x @ weight.T + SCALE * ((x * keep) @ lora_a.T) @ lora_b.T
    assert _relative_error(ours, reference) < FLOAT64_RELATIVE
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for mine, theirs in zip(_gradients(ours, (x, lora_a, lora_b), upstream),
                            _gradients(reference, (x, lora_a, lora_b), upstream), strict=True):
        assert _relative_error(mine, theirs) < FLOAT64_RELATIVE


def test_masks_drop_p_of_the_inputs_and_keep_the_mean():
    """The mask is Bernoulli(1 - p) per entry (p to 1/65536), scaled so the dropped input is unbiased."""
    like = torch.empty(512, 1024)
    for p in (0.05, 0.3):
        keep = dropout_keep_scale(like, p, seed=7)
        dropped = float((keep == 0).double().mean())
        sigma = (p * (1 - p) / like.numel()) ** 0.5
        assert abs(dropped - p) < 5 * sigma, (p, dropped)
        zero, kept = torch.unique(keep).tolist()
        assert zero == 0.0 and kept == pytest.approx(1 / (1 - p), rel=1e-4)
        assert torch.equal(keep, dropout_keep_scale(like, p, seed=7))  # the seed makes the mask
        assert not torch.equal(keep, dropout_keep_scale(like, p, seed=8))


def test_dora_dropout_backward_passes_gradcheck():
    """Finite differences in float64: the seed makes the mask, so the function is deterministic."""
    x, weight, bias, lora_a, lora_b, magnitude = _float64_case(True)
    norm = (weight + SCALE * lora_b.detach() @ lora_a.detach()).norm(dim=1)

    def layer(x, bias, lora_a, lora_b, magnitude):
        return DoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, magnitude, norm, SCALE, P, SEED)

    assert torch.autograd.gradcheck(layer, (x, bias, lora_a, lora_b, magnitude))


def _one_layer(method: str, dropout: float) -> AdapterLinear:
    torch.manual_seed(0)
    layer = AdapterLinear(torch.nn.Linear(IN, OUT), AdapterConfig(method=method, rank=RANK, alpha=4.0,
                                                                  dropout=dropout))
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)
    return layer


def _saved_tensor_bytes(layer: AdapterLinear, x: torch.Tensor) -> tuple[int, str]:
    """(bytes of every tensor saved for backward, name of the autograd node of the output)."""
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = layer(x)
    return sum(saved.values()), type(output.grad_fn).__name__


@pytest.mark.parametrize("method", ["dora", "lora"])
def test_dropout_runs_the_lean_function_and_saves_only_its_mask_beyond_p0(method):
    """No plain-autograd fallback and no dropped copy of x: with dropout the layer saves what it
    saves at p = 0 plus the mask, one byte per input element."""
    x = torch.randn(2, 8, IN, requires_grad=True)
    lean, lean_node = _saved_tensor_bytes(_one_layer(method, 0.0).train(), x)
    dropped, dropped_node = _saved_tensor_bytes(_one_layer(method, 0.25).train(), x)
    expected_node = "DoraLinearFunctionBackward" if method == "dora" else "LoraLinearFunctionBackward"
    assert lean_node == dropped_node == expected_node
    assert dropped == lean + x.numel()  # the bool mask


def test_layer_draws_its_mask_seed_from_torch_rng():
    """Same torch seed, same masks (reproducible runs and resume); another seed, other masks."""
    layer = _one_layer("dora", P).train()
    x = torch.randn(4, IN)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    again = layer(x)
    torch.manual_seed(6)
    other = layer(x)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_eval_mode_and_p0_give_the_undropped_layer():
    dropped, plain = _one_layer("dora", P), _one_layer("dora", 0.0)
    x = torch.randn(4, IN)
    torch.testing.assert_close(dropped.eval()(x), plain.eval()(x), rtol=0, atol=0)
    training, evaluating = dropped.train()(x), dropped.eval()(x)
    assert not torch.allclose(training, evaluating), "in training the adapter input is really dropped"


class _SeededDropout(torch.nn.Module):
    """Stands in for PEFT's lora_dropout: the mask our layer would draw at the same point."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        from dora_core.dora_math import draw_dropout_seed

        flat = x.reshape(-1, x.shape[-1])
        return (flat * dropout_keep_scale(flat, self.p, draw_dropout_seed())).view(x.shape)


def test_lora_dropout_is_peft_lora_with_the_same_masks():
    """LoRA keeps PEFT's semantics exactly: given our masks, PEFT's outputs and gradients (float64)."""
    config = AdapterConfig(method="lora", rank=4, alpha=8.0, dropout=0.3)
    _, ours, twin = adapted_pair("llama", config)
    ours, twin = ours.double().train(), twin.double().train()
    for module in twin.modules():
        if isinstance(module, LoraLayer):
            module.lora_dropout["default"] = _SeededDropout(config.dropout)
    for model in (ours, twin):  # only the adapter dropout may draw random numbers
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    ids = input_ids()
    torch.manual_seed(123)
    ours_logits = ours(ids).logits
    torch.manual_seed(123)
    peft_logits = twin(input_ids=ids).logits
    assert _relative_error(ours_logits, peft_logits) < FLOAT64_RELATIVE
    ours_logits.square().mean().backward()
    peft_logits.square().mean().backward()
    compared = 0
    for name, layer in ours.named_modules():
        if isinstance(layer, AdapterLinear):
            peft_layer = twin.base_model.model.get_submodule(name)
            for mine, theirs in ((layer.lora_A, peft_layer.lora_A["default"].weight),
                                 (layer.lora_B, peft_layer.lora_B["default"].weight)):
                assert _relative_error(mine.grad, theirs.grad) < FLOAT64_RELATIVE, name
                compared += 1
    assert compared >= 8


def test_dora_dropout_differs_from_peft_only_in_training():
    """PEFT's DoRA at p > 0 adds (g - 1) W x_d where we scale W x: different in training, equal in eval."""
    config = AdapterConfig(method="dora", rank=4, alpha=8.0, dropout=0.3)
    _, ours, twin = adapted_pair("llama", config)
    ours, twin = ours.double(), twin.double()
    ids = input_ids()
    assert _relative_error(ours.eval()(ids).logits, twin.eval()(input_ids=ids).logits) < FLOAT64_RELATIVE
    torch.manual_seed(123)
    assert _relative_error(ours.train()(ids).logits, twin.train()(input_ids=ids).logits) > 1e-6


def test_training_model_with_dropout_trains_every_adapter_through_the_lean_function():
    model = apply_adapter(copy.deepcopy(tiny_llama()), AdapterConfig(rank=4, alpha=8.0, dropout=0.1)).train()
    perturb_adapters(model)
    nodes = []
    handles = [m.register_forward_hook(lambda module, i, out: nodes.append(type(out.grad_fn).__name__))
               for m in model.modules() if isinstance(m, AdapterLinear)]
    ids = input_ids()
    model(input_ids=ids, labels=ids).loss.backward()
    for handle in handles:
        handle.remove()
    assert nodes and set(nodes) == {"DoraLinearFunctionBackward"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
