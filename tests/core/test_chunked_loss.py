"""The chunked head + loss equals the model's full-logits loss, in value and in gradients."""

import copy

import pytest
import torch

from dora_core import AdapterConfig, apply_adapter
from dora_core.chunked_cross_entropy import chunked_linear_cross_entropy
from dora_core.training.loss import summed_loss, supports_chunked_loss
from tests.support.model_factories import MODEL_MAKERS, input_ids, perturb_adapters
from tests.support.numerics import assert_close_to_reference, budget, model_budget


def test_chunked_cross_entropy_matches_plain_cross_entropy():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (37,))
    loss, correct = chunked_linear_cross_entropy(hidden, weight, targets, chunk_tokens=8)
    logits = hidden @ weight.T
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    # float64 throughout. Loss: logits (16 terms), max and exp, the sum over the vocabulary (50),
    # log, the target's term, the sum over tokens (37); the gradient adds softmax - onehot and the
    # product with W (50 terms): 8 stages of at most 50 terms.
    limit = budget(torch.float64, stages=8, terms=50)
    assert loss.dtype == torch.float64
    assert_close_to_reference(loss, expected, limit, what="loss")
    assert int(correct) == int((logits.argmax(-1) == targets).sum())
    (grad_chunked,) = torch.autograd.grad(3.0 * loss, hidden)
    (grad_plain,) = torch.autograd.grad(3.0 * expected, hidden)
    assert_close_to_reference(grad_chunked, grad_plain, limit, what="gradient")


def test_a_trainable_head_is_refused():
    with pytest.raises(ValueError, match="frozen output head"):
        chunked_linear_cross_entropy(torch.randn(2, 4), torch.randn(5, 4, requires_grad=True), torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_model_loss_and_adapter_gradients_match_the_full_logits_path(kind):
    """In fp32: the full-logits path computes its loss in fp32 whatever the model dtype (it
    upcasts the trained logits with .float()), so float64 would not make the two paths exact."""
    model = apply_adapter(MODEL_MAKERS[kind](), AdapterConfig(rank=4, alpha=8))
    perturb_adapters(model)
    twin = copy.deepcopy(model)
    ids = input_ids(batch=3, length=11)
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt without loss
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    assert supports_chunked_loss(model)
    chunked, full = summed_loss(model, batch, chunked=True), summed_loss(twin, batch, chunked=False)
    assert chunked.tokens == full.tokens == 3 * 7 and chunked.correct == full.correct
    assert_close_to_reference(chunked.loss_sum, full.loss_sum, model_budget(model, torch.float32), what="loss")
    chunked.loss_sum.backward()
    full.loss_sum.backward()
    limit = model_budget(model, torch.float32, backward=True)
    for (name, mine), theirs in zip(model.named_parameters(), twin.parameters(), strict=True):
        if mine.requires_grad:
            assert_close_to_reference(mine.grad, theirs.grad, limit, what=f"{name} gradient")
