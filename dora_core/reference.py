"""The reference policy of preference tuning: the same model with its adapter switched off.

DPO compares the policy's log-probabilities with a frozen reference's. The reference is the
base model, which the adapted model already holds: inside `adapter_disabled(model)` every
AdapterLinear returns W x + b (its base output), so no second copy of the weights is loaded.
Callers run it under torch.no_grad(); dropout is off there too (the adapter branch is skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from dora_core.layers import AdapterLinear


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
