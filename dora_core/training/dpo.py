"""The sigmoid DPO loss (Rafailov et al., 2023) over a batch of preference pairs, summed.

A batch is 2B rows from PreferenceCollator: rows 0..B-1 the preferred answers, B..2B-1 the
non-preferred ones, labels -100 on the prompt. A sequence's log-probability is the sum of its
answer tokens' log-probabilities (next-token, as TRL's DPOTrainer). Per pair:

    logits = beta * ((pi_c - ref_c) - (pi_r - ref_r))      loss = -log sigmoid(logits)
    rewards/chosen = beta * (pi_c - ref_c)   rewards/rejected = beta * (pi_r - ref_r)

The reference log-probabilities come from the same model with the adapter off
(dora_core/reference.py) under no_grad. Sums, not means, so that a step normalises by the
pairs of its global batch (micro-batch size does not change the update, as for SFT's tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dora_contract import DPO_METRICS
from dora_core.reference import adapter_disabled
from dora_core.training.loss import IGNORE_INDEX, model_inputs


@dataclass
class DpoSums:
    loss_sum: torch.Tensor  # () >= fp32, differentiable: sum over pairs of -log sigmoid(logits)
    pairs: int
    chosen_rewards: float  # sums over pairs (detached)
    rejected_rewards: float
    correct: int  # pairs whose chosen reward exceeds the rejected one

    def metrics(self, pairs: int, prefix: str = "") -> dict[str, float]:
        """Means over `pairs` under TRL's names (dora_contract.DPO_METRICS), loss excluded."""
        chosen, rejected = self.chosen_rewards / pairs, self.rejected_rewards / pairs
        values = (chosen, rejected, chosen - rejected, self.correct / pairs)  # in DPO_METRICS' order
        return {f"{prefix}{name}": value for name, value in zip(DPO_METRICS, values, strict=True)}


def count_pairs(batch: dict[str, torch.Tensor]) -> int:
    return batch["input_ids"].shape[0] // 2


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(rows,) >= fp32: each row's summed log-probability of its trained (answer) tokens."""
    logits = model(**model_inputs(batch)).logits  # (rows, seq, vocab)
    labels = batch["labels"][:, 1:]  # (rows, seq - 1)
    trained = labels != IGNORE_INDEX  # (rows, seq - 1)
    selected = logits[:, :-1][trained]  # (tokens, vocab): only answer positions are upcast
    selected = selected.to(torch.promote_types(selected.dtype, torch.float32))
    token_logps = selected.log_softmax(dim=-1).gather(1, labels[trained][:, None]).squeeze(1)  # (tokens,)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[trained]  # (tokens,)
    return torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, rows, token_logps)  # (rows,)


def reference_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(rows,): the same sums under the reference policy (adapter off), without gradients."""
    with torch.no_grad(), adapter_disabled(model):
        return sequence_logprobs(model, batch)


def dpo_sums(model, batch: dict[str, torch.Tensor], *, beta: float,
             reference: torch.Tensor | None = None) -> DpoSums:
    """Summed DPO loss and reward sums of one micro-batch; `reference` (rows,) when already known."""
    reference = reference_logprobs(model, batch) if reference is None else reference
    policy = sequence_logprobs(model, batch)  # (2B,)
    pairs = policy.shape[0] // 2
    ratios = policy - reference.to(policy.dtype)  # (2B,) log pi/ref
    chosen, rejected = beta * ratios[:pairs], beta * ratios[pairs:]  # (B,) each
    loss_sum = -F.logsigmoid(chosen - rejected).sum()
    chosen, rejected = chosen.detach(), rejected.detach()
    return DpoSums(loss_sum=loss_sum, pairs=pairs, chosen_rewards=float(chosen.sum()),
                   rejected_rewards=float(rejected.sum()), correct=int((chosen > rejected).sum()))
