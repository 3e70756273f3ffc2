"""Choosing the next token of one row: greedy (temperature 0) or temperature + nucleus (top_p).

Each request samples with its own torch.Generator, so a seeded request draws the same numbers
whatever else runs in the batch. Logprobs are the model's raw distribution (log_softmax of the
logits before temperature and top_p), as vLLM reports them by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Choice:
    """One row's next token and, when asked, its logprob and the top (token id, logprob) pairs."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def choose_tokens(logits: torch.Tensor, rows: list[RowSampling]) -> list[Choice]:
    """The next token of every row from fp32 logits (batch, vocab), with one host transfer."""
    tokens = torch.argmax(logits, dim=-1)  # (batch,): greedy rows keep theirs
    for i, row in enumerate(rows):
        if row.temperature > 0.0:
            tokens[i] = sample_token(logits[i], row.temperature, row.top_p, row.generator)
    asking = [i for i, row in enumerate(rows) if row.logprobs or row.top_logprobs]
    if not asking:
        return [Choice(token) for token in tokens.tolist()]
    index = torch.tensor(asking, device=logits.device)
    logprobs = torch.log_softmax(logits[index], dim=-1)  # (asking, vocab): the raw distribution
    chosen = logprobs.gather(1, tokens[index].unsqueeze(1)).squeeze(1)  # (asking,)
    k = min(max(rows[i].top_logprobs for i in asking), logprobs.shape[1])
    top_values, top_ids = torch.topk(logprobs, k, dim=-1) if k else (logprobs[:, :0], tokens[index, None][:, :0])
    token_list, chosen_list = tokens.tolist(), chosen.tolist()
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    choices = [Choice(token) for token in token_list]
    for j, i in enumerate(asking):
        wanted = rows[i].top_logprobs
        choices[i] = Choice(token_list[i], chosen_list[j], tuple(zip(top_ids[j][:wanted], top_values[j][:wanted],
                                                                     strict=True)))
    return choices


@dataclass(frozen=True)
class RowSampling:
    """What choose_tokens needs of a row's request."""

    temperature: float
    top_p: float
    generator: torch.Generator | None
    logprobs: bool
    top_logprobs: int


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """A token drawn from one row's fp32 logits (vocab,) (a 0-d tensor on their device: no sync)."""
    probs = torch.softmax(logits / temperature, dim=-1)  # (vocab,)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above each
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # keeps the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]


def new_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
