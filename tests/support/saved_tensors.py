"""Bytes autograd keeps for backward, measured with torch.autograd.graph.saved_tensors_hooks."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_activation_bytes(model: torch.nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of the unique storages handed to autograd's pack hook while `forward()` runs, less the
    model's parameters (frozen weights are referenced by backward, not copied)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())
