"""PEFT is the oracle: our DoRA and LoRA must give its logits and its gradients.

In float64 this is the exactness check (the same math, ~1e-13 apart); in fp32 it checks that our
factored computation stays within fp32's rounding budget of PEFT's dense one. Both budgets come
from tests/support/numerics.py (the dtype's eps and the model's size), not from a hand-picked atol.
"""

import pytest
import torch

from dora_core import AdapterConfig, AdapterLinear
from tests.support.model_factories import adapted_pair, input_ids
from tests.support.numerics import assert_close_to_reference, model_budget

DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
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
    limit = model_budget(ours, ours.dtype, backward=True)
    checked = 0
    for name, layer, peft_layer in _layer_pairs(ours, twin):
        pairs = [(layer.lora_A, peft_layer.lora_A["default"].weight),
                 (layer.lora_B, peft_layer.lora_B["default"].weight)]
        if layer.use_dora:
            pairs.append((layer.lora_magnitude_vector, peft_layer.lora_magnitude_vector["default"].weight))
        for mine, theirs in pairs:
            assert mine.grad is not None and theirs.grad is not None, name
            assert mine.grad.abs().max() > 0, f"{name}: zero gradient tells nothing"
            assert mine.grad.dtype == theirs.grad.dtype == ours.dtype, name
            assert_close_to_reference(mine.grad, theirs.grad, limit, what=f"{name} gradient")
            checked += 1
    assert checked >= 8


@DTYPES
@pytest.mark.parametrize(("kind", "config"), CASES, ids=lambda c: getattr(c, "method", c))
def test_logits_and_gradients_match_peft(kind, config, dtype):
    _, ours, twin = adapted_pair(kind, config, dtype=dtype)
    ids = input_ids()
    ours_logits = ours(ids).logits
    peft_logits = twin(input_ids=ids).logits
    assert ours_logits.dtype == peft_logits.dtype == dtype
    assert_close_to_reference(ours_logits, peft_logits, model_budget(ours, dtype), what="logits")
    target = torch.randn_like(ours_logits)
    (ours_logits * target).sum().backward()
    (peft_logits * target).sum().backward()
    _assert_grads_match(ours, twin)


# Dropout: LoRA matches PEFT given the same masks; DoRA follows torchtune's semantics there
# (tests/core/test_dora_dropout.py).
