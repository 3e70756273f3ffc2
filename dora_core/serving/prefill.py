"""Prefilling the requests that join the running batch together: who goes with whom, and their inputs.

Requests that join in one loop iteration prefill in as few forwards as the padding allows: one
forward of k rows costs about what one row costs wherever a forward is bound by its fixed costs
(kernel launches, reading the weights: a GPU, or short prompts), so a burst of 16 prompts no longer
costs 16 prefills in a row. Rows are left-padded to the group's longest prompt, and the padded
columns are computed and thrown away; `prefill_groups` bounds that waste:

  * the joiners are sorted by prompt length and cut, in that order, into groups whose padded size
    (rows x longest) is at most MAX_PADDED_PER_REAL times their real tokens (at most a third of a
    group's columns are padding), and
  * at most PREFILL_TOKEN_BUDGET padded tokens (a prompt longer than that prefills alone, as every
    prompt did before), so a group's activations stay within a few long prompts' worth.

A group never has more rows than joined in the iteration, which the engine holds to max_batch.
"""

from __future__ import annotations

import torch

from dora_core.serving.batch_cache import left_padding_mask

MAX_PADDED_PER_REAL = 1.5  # a group's padded tokens / its real tokens, at most
PREFILL_TOKEN_BUDGET = 8192  # a group's padded tokens (rows x longest prompt), at most
PAD_ID = 0  # the token id fed at padded positions: any id in the vocabulary (masked, never read)


def prefill_groups(lengths: list[int]) -> list[list[int]]:
    """Indices into `lengths` (prompt lengths), grouped to prefill together; each group in ascending length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for index in order:
        longest = lengths[index]  # ascending: the row being added is the group's longest
        padded = (len(group) + 1) * longest
        if group and (padded > PREFILL_TOKEN_BUDGET or padded > MAX_PADDED_PER_REAL * (real + longest)):
            groups.append(group)
            group, real = [], 0
        group.append(index)
        real += longest
    if group:
        groups.append(group)
    return groups


def left_padded(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids), each (rows, longest): every prompt right-aligned, its real tokens at
    positions 0, 1, ... (as generate() numbers a left-padded batch), so a row computes what it computes alone."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[PAD_ID] * (width - len(prompt)) + list(prompt) for prompt in prompts], device=device)
    mask = left_padding_mask([len(prompt) for prompt in prompts], width, device)  # (rows, width), 0 = padding
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (rows, width): padded columns at 0, never read
    return ids, mask, positions
