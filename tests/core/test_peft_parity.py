"""PEFT is the oracle: our DoRA and LoRA must give its logits and its gradients."""

import pytest
import torch

from dora_core import AdapterConfig, AdapterLinear
from tests.core.model_factories import adapted_pair, input_ids

RTOL, ATOL = 1e-4, 1e-6
CASES = [
    ("llama", AdapterConfig(method="dora", rank=4, alpha=8)),
    ("gpt2", AdapterConfig(method="dora", rank=4, alpha=8)),
    ("llama", AdapterConfig(method="dora", rank=3, alpha=5, use_rslora=True)),
    ("llama", AdapterConfig(method="lora", rank=4, alpha=8)),
    ("gpt2", AdapterConfig(method="lora", rank=4, alpha=8)),
]


def _layer_pairs(ours, twin):
    for name, module in ours.named_modules():
        if isinstance(module, AdapterLinear):
            yield name, module, twin.base_model.model.get_submodule(name)


def _assert_grads_match(ours, twin):
    checked = 0
    for name, layer, peft_layer in _layer_pairs(ours, twin):
        pairs = [(layer.lora_A, peft_layer.lora_A["default"].weight),
                 (layer.lora_B, peft_layer.lora_B["default"].weight)]
        if layer.use_dora:
            pairs.append((layer.lora_magnitude_vector, peft_layer.lora_magnitude_vector["default"].weight))
        for mine, theirs in pairs:
            assert mine.grad is not None and theirs.grad is not None, name
            assert mine.grad.abs().max() > 0, f"{name}: zero gradient tells nothing"
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=RTOL, atol=ATOL, msg=name)
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize(("kind", "config"), CASES, ids=lambda c: getattr(c, "method", c))
def test_logits_and_gradients_match_peft(kind, config):
    _, ours, twin = adapted_pair(kind, config)
    ids = input_ids()
    ours_logits = ours(ids).logits
    peft_logits = twin(input_ids=ids).logits
    torch.testing.assert_close(ours_logits, peft_logits, rtol=RTOL, atol=ATOL)
    target = torch.randn_like(ours_logits)
    (ours_logits * target).sum().backward()
    (peft_logits * target).sum().backward()
    _assert_grads_match(ours, twin)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_dropout_follows_peft(kind):
    """In training with dropout, the same random masks give PEFT's outputs and gradients."""
    config = AdapterConfig(method="dora", rank=4, alpha=8, dropout=0.3)
    _, ours, twin = adapted_pair(kind, config)
    ours.train()
    twin.train()
    for model in (ours, twin):  # only the adapter dropout may draw random numbers
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:
                module.p = 0.0
    ids = input_ids()
    torch.manual_seed(123)
    ours_logits = ours(ids).logits
    torch.manual_seed(123)
    peft_logits = twin(input_ids=ids).logits
    torch.testing.assert_close(ours_logits, peft_logits, rtol=RTOL, atol=ATOL)
    ours_logits.square().mean().backward()
    peft_logits.square().mean().backward()
    _assert_grads_match(ours, twin)
    # dropout is really active: a different seed changes the output
    torch.manual_seed(7)
    assert not torch.allclose(ours(ids).logits, ours_logits)
