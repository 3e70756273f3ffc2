"""Put adapters into a transformers causal LM, and take them out again (merge).

`apply_adapter` swaps target linear layers for `AdapterLinear` in place and freezes the rest,
so the model stays the same transformers class (generate, save_pretrained, Trainer all work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from dora_core.config import ALL_LINEAR, AdapterConfig, AdapterConfigError
from dora_core.layers import AdapterLinear, is_conv1d

log = logging.getLogger(__name__)

CONFIG_ATTRIBUTE = "dora_adapter_config"


@dataclass(frozen=True)
class AdapterSummary:
    """What apply_adapter did: which layers, and how many parameters now train."""

    adapted_modules: tuple[str, ...]
    trainable_parameters: int
    total_parameters: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / max(self.total_parameters, 1)


def apply_adapter(model: nn.Module, config: AdapterConfig, *, quantization: str = "none",
                  layer_device: torch.device | None = None) -> nn.Module:
    """Replace the target layers of `model` with adapters, in place; freeze everything else.

    "all-linear" means every nn.Linear / Conv1D except the output head (PEFT's meaning).
    A list matches a module whose name equals an entry or ends with "." + entry.
    The summary (including the trainable parameter count) is logged and kept on the model
    as `model.dora_adapter_summary`. quantization="nf4" stores the adapted layers' base weights
    4-bit (dora_core.quantization: QDoRA / QLoRA). `layer_device`: move each target layer there
    just before its adapter is made, so a base held in host memory is quantized onto the GPU one
    layer at a time and the GPU never holds the unquantized weights (the caller moves the rest).
    """
    if adapted_module_names(model):
        raise ValueError("model already has adapters; merge or reload the base model first")
    layer_class = _adapter_layer_class(quantization)
    targets = resolve_target_modules(model, config.target_modules)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in targets:
        parent, child_name = _parent_and_child(model, name)
        layer = getattr(parent, child_name)
        if layer_device is not None:
            layer.to(layer_device)
        setattr(parent, child_name, layer_class(layer, config))
    setattr(model, CONFIG_ATTRIBUTE, config)
    summary = summarise(model)
    model.dora_adapter_summary = summary
    log.info(
        "%s adapters on %d layers: %d trainable of %d parameters (%.3f%%)",
        config.method, len(targets), summary.trainable_parameters, summary.total_parameters,
        summary.trainable_percent,
    )
    return model


def _adapter_layer_class(quantization: str) -> type[AdapterLinear]:
    """AdapterLinear, or its NF4 variant (imported only then: torchao is the `quant` extra)."""
    if quantization == "none":
        return AdapterLinear
    if quantization == "nf4":
        try:
            from dora_core.quantization import NF4AdapterLinear
        except ModuleNotFoundError as missing:
            raise AdapterConfigError("training.quantization", f"nf4 needs torchao ({missing}): pip install "
                                     "'dora-tuner[quant]'") from None
        return NF4AdapterLinear
    raise AdapterConfigError("training.quantization", f"must be 'none' or 'nf4', got {quantization!r}")


def merge_adapter(model: nn.Module) -> nn.Module:
    """Write W' into every adapted layer and put the plain base layers back.

    The result is the original transformers architecture with new weights: no adapter
    modules, no inference overhead, and `save_pretrained` gives a standard checkpoint.
    """
    for name in adapted_module_names(model):
        parent, child_name = _parent_and_child(model, name)
        setattr(parent, child_name, getattr(parent, child_name).merged_base_layer())
    for attribute in (CONFIG_ATTRIBUTE, "dora_adapter_summary"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    return model


def adapter_config_of(model: nn.Module) -> AdapterConfig:
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    if config is None:
        raise ValueError("model has no adapters (apply_adapter or load_adapter first)")
    return config


def adapted_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, AdapterLinear)]


def summarise(model: nn.Module) -> AdapterSummary:
    parameters = list(model.parameters())
    return AdapterSummary(
        adapted_modules=tuple(adapted_module_names(model)),
        trainable_parameters=sum(p.numel() for p in parameters if p.requires_grad),
        total_parameters=sum(p.numel() for p in parameters),
    )


def resolve_target_modules(model: nn.Module, target_modules: str | tuple[str, ...]) -> list[str]:
    """Names of the modules that the setting selects; an error if it selects none."""
    candidates = [name for name, module in model.named_modules() if is_linear(module)]
    if target_modules == ALL_LINEAR:
        head = _output_head_name(model)
        selected = [name for name in candidates if name != head]
    else:
        selected = [name for name in candidates if any(_matches(name, target) for target in target_modules)]
        unmatched = [t for t in target_modules if not any(_matches(n, t) for n in candidates)]
        if unmatched:
            raise AdapterConfigError(
                "target_modules", f"no linear layer matches {unmatched}; linear layers are named like "
                f"{sorted({n.rsplit('.', 1)[-1] for n in candidates})}",
            )
    if not selected:
        raise AdapterConfigError("target_modules", "selects no linear layer of this model")
    return selected


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def is_linear(module: nn.Module) -> bool:
    """Layers an adapter can wrap: nn.Linear and GPT-2's Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _output_head_name(model: nn.Module) -> str | None:
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    for name, module in model.named_modules():
        if head is not None and module is head:
            return name
    return None


def _parent_and_child(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child_name = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child_name
