"""Choosing the next token of one row: greedy (temperature 0) or temperature + nucleus (top_p).

Each request samples with its own torch.Generator, so a seeded request draws the same numbers
whatever else runs in the batch. Logprobs are the model's raw distribution (log_softmax of the
logits before temperature and top_p), as vLLM reports them by default.
"""

from __future__ import annotations

import torch


def choose_token(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> int:
    """The next token id from one row's fp32 logits (vocab,)."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)  # (vocab,)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above each
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # keeps the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def new_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
