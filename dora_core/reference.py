"""The reference policy of preference tuning and GRPO's KL: the model as it was before the run trained it.

DPO compares the policy's log-probabilities with a frozen reference's, and GRPO's KL term keeps
the policy near one. The reference is the model the run started from, which the adapted model
already holds, so no second copy of the weights is loaded:

- a run from the base model: inside `adapter_disabled(model)` every AdapterLinear returns
  W x + b (its base output);
- a continued run (`init_adapter`, e.g. DPO after SFT, as OpenAI's preference tuning of a
  fine-tuned model): its starting adapter, whose trainable tensors the run keeps
  (`hold_reference_adapter`, one adapter-sized copy) and swaps in for the reference forward.
  Its reference is the SFT model, not the base: the KL anchor DPO's derivation assumes.

`reference_policy(model)` picks the one that applies. Callers run it under torch.no_grad(), and
only between a micro-batch's backward and the next policy forward (a swap never lands inside a
pending autograd graph); dropout is off with the adapter off (its branch is skipped).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from dora_core.layers import AdapterLinear

HELD_ATTRIBUTE = "dora_reference_adapter"  # on the model: the starting adapter's trainable tensors


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Every adapter layer of `model` returns its base output until the block ends (even on error)."""
    layers = [module for module in model.modules() if isinstance(module, AdapterLinear)]
    if not layers:
        raise ValueError("the model has no adapter layers to switch off")
    for layer in layers:
        layer.adapter_enabled = False
    try:
        yield model
    finally:
        for layer in layers:
            del layer.adapter_enabled  # back to the class's True


def hold_reference_adapter(model: nn.Module, values: Sequence[torch.Tensor]) -> None:
    """Make `values` (the starting adapter: one tensor per trainable parameter, in model.parameters()
    order, never written while held) the reference that `reference_policy` swaps in."""
    trainable = _trainable(model)
    if len(values) != len(trainable) or any(v.shape != p.shape for v, p in zip(values, trainable, strict=False)):
        raise ValueError("the reference adapter does not match the model's trainable parameters")
    setattr(model, HELD_ATTRIBUTE, list(values))


@contextmanager
def reference_policy(model: nn.Module) -> Iterator[nn.Module]:
    """The run's reference until the block ends: its held starting adapter, else the adapter off."""
    held = getattr(model, HELD_ATTRIBUTE, None)
    if held is None:
        with adapter_disabled(model):
            yield model
        return
    trainable = _trainable(model)
    current = [parameter.data for parameter in trainable]
    for parameter, value in zip(trainable, held, strict=True):
        parameter.data = value  # a swap of storage, no copy and no version bump
    try:
        yield model
    finally:
        for parameter, value in zip(trainable, current, strict=True):
            parameter.data = value


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]
