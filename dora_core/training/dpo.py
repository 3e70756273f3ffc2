"""The sigmoid DPO loss (Rafailov et al., 2023) over a batch of preference pairs, summed.

A batch is 2B rows from PreferenceCollator: rows 0..B-1 the preferred answers, B..2B-1 the
non-preferred ones, labels -100 on the prompt. A sequence's log-probability is the sum of its
answer tokens' log-probabilities (next-token, as TRL's DPOTrainer). Per pair:

    logits = beta * ((pi_c - ref_c) - (pi_r - ref_r))      loss = -log sigmoid(logits)
    rewards/chosen = beta * (pi_c - ref_c)   rewards/rejected = beta * (pi_r - ref_r)

The reference log-probabilities come from the model as the run started (adapter off, or a
continued run's starting adapter: dora_core/reference.py) under no_grad. Sums, not means, so
that a step normalises by the pairs of its global batch (micro-batch size does not change the
update, as for SFT's tokens).

The reference does not change while the adapter trains, so a run computes each pair's two
reference sums once, the first time the pair is scored, and keeps them (`ReferenceCache`, two
floats per pair keyed by dataset and example index): a later epoch or evaluation reuses them and
skips that forward. The first epoch costs what it did without the cache (the same forward, where
it was). Not checkpointed: a resumed run recomputes each pair on first sight, the same values up
to the float noise of another batch's padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dora_contract import DPO_METRICS
from dora_core.reference import reference_policy
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
    """(rows,): the same sums under the reference policy (dora_core/reference.py), without gradients."""
    with torch.no_grad(), reference_policy(model):
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


class ReferenceCache:
    """Each pair's reference sums (preferred, non-preferred), keyed by (dataset, example index),
    computed by `reference_logprobs` the first time the pair is scored and reused after.

    Kept as Python floats, which hold any float16, bfloat16, float32 or float64 value exactly, with
    the dtype they were computed in: a reused value is bit for bit the one first computed, in the
    dtype dpo_sums would get from reference_logprobs. The reference must be constant for the run
    (the adapter-off model and a held starting adapter are: training moves only the live adapter).
    """

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, int], tuple[float, float]] = {}
        self.dtype: torch.dtype | None = None  # reference_logprobs' (>= fp32), known after the first forward

    def logprobs(self, model, batch: dict[str, torch.Tensor], dataset: str, indices: Sequence[int]) -> torch.Tensor:
        """(2B,) the reference sums of the batch's B pairs (`indices` in `dataset`, in the batch's
        order), rows as the batch's; one reference forward over the pairs not seen before, if any."""
        pairs, device = count_pairs(batch), batch["input_ids"].device
        if len(indices) != pairs:
            raise ValueError(f"{len(indices)} example indices for a batch of {pairs} pairs")
        keys = [(dataset, index) for index in indices]
        missing = [row for row, key in enumerate(keys) if key not in self.pairs]
        if missing:
            if len(missing) < pairs:  # only the unseen pairs' rows: preferred, then non-preferred
                rows = torch.tensor(missing + [pairs + row for row in missing], device=device)
                batch = {key: value[rows] for key, value in batch.items()}  # (2M, seq)
            computed = reference_logprobs(model, batch)  # (2M,)
            if self.dtype not in (None, computed.dtype):
                raise ValueError(f"reference log-probabilities in {computed.dtype}, cached ones in {self.dtype}")
            self.dtype = computed.dtype
            chosen, rejected = computed.view(2, -1).tolist()  # (M,) each
            for row, chosen_sum, rejected_sum in zip(missing, chosen, rejected, strict=True):
                self.pairs[keys[row]] = (chosen_sum, rejected_sum)
        known = [self.pairs[key] for key in keys]
        return torch.tensor([c for c, _ in known] + [r for _, r in known], dtype=self.dtype, device=device)  # (2B,)
