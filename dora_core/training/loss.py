"""Next-token loss over the trained tokens of a batch, summed so a global batch can be
normalised by its total trained-token count (micro-batch size then does not change the
gradient: halving it after an OOM gives the same update)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dora_contract.memory_plan import CHUNKED_LOSS_MODEL_TYPES
from dora_core.chunked_cross_entropy import chunked_linear_cross_entropy

IGNORE_INDEX = -100
# CHUNKED_LOSS_MODEL_TYPES: the architectures whose logits are exactly lm_head(final hidden state)
# (no soft-capping or scaling in between), so the chunked loss may replace the model's own head;
# kept in the torch-free memory planner, which counts the loss by it.


@dataclass
class LossSums:
    loss_sum: torch.Tensor  # () fp32, differentiable
    tokens: int  # trained tokens (labels != -100 after the shift)
    correct: int  # argmax predictions equal to the label on those tokens


def count_trained_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss once labels are shifted left by one: labels (batch, seq)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes; the cache is off so packed examples stay separate."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
    inputs["use_cache"] = False
    return inputs


def supports_chunked_loss(model) -> bool:
    head = model.get_output_embeddings()
    return (getattr(model.config, "model_type", None) in CHUNKED_LOSS_MODEL_TYPES and isinstance(head, nn.Linear)
            and head.bias is None and not head.weight.requires_grad and model.base_model is not model)


def summed_loss(model, batch: dict[str, torch.Tensor], *, chunked: bool | None = None) -> LossSums:
    """Summed next-token loss; `chunked` None picks the chunked head+loss when the model allows it."""
    if chunked if chunked is not None else supports_chunked_loss(model):
        return _chunked_summed_loss(model, batch)
    return _full_logits_summed_loss(model, batch)


def _chunked_summed_loss(model, batch: dict[str, torch.Tensor]) -> LossSums:
    """Runs the decoder, then head + loss chunk by chunk on the trained positions only."""
    hidden = model.base_model(**model_inputs(batch)).last_hidden_state  # (batch, seq, d)
    labels = batch["labels"][:, 1:]  # (batch, seq - 1)
    trained = labels != IGNORE_INDEX  # (batch, seq - 1)
    selected = hidden[:, :-1][trained]  # (tokens, d)
    targets = labels[trained]  # (tokens,)
    loss_sum, correct = chunked_linear_cross_entropy(selected, model.get_output_embeddings().weight, targets)
    return LossSums(loss_sum=loss_sum, tokens=int(targets.numel()), correct=int(correct))


def _full_logits_summed_loss(model, batch: dict[str, torch.Tensor]) -> LossSums:
    logits = model(**model_inputs(batch)).logits  # (batch, seq, vocab)
    labels = batch["labels"][:, 1:]  # (batch, seq - 1)
    trained = labels != IGNORE_INDEX  # (batch, seq - 1)
    # Only trained positions are upcast to fp32: (tokens, vocab), not the whole (batch, seq, vocab).
    selected = logits[:, :-1][trained]
    selected = selected.to(torch.promote_types(selected.dtype, torch.float32))  # (tokens, vocab), >= fp32
    targets = labels[trained]  # (tokens,)
    loss_sum = F.cross_entropy(selected, targets, reduction="sum")
    correct = int((selected.detach().argmax(dim=-1) == targets).sum())
    return LossSums(loss_sum=loss_sum, tokens=int(targets.numel()), correct=correct)
