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


# Dropout: LoRA matches PEFT given the same masks; DoRA follows torchtune's semantics there
# (tests/core/test_dora_dropout.py).
