"""The adapter module that replaces a frozen linear layer: LoRA or DoRA on top of it.

One class serves both methods because they share A, B, the scale and the dropout; DoRA adds
the magnitude vector m. Parameter names (lora_A, lora_B, lora_magnitude_vector) mirror PEFT's so
that state dicts and adapter files map one to one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dora_core.config import AdapterConfig
from dora_core.dora_math import (
    at_least_fp32,
    dense_adapted_weight,
    dora_linear,
    draw_dropout_seed,
    factored_row_norm,
    lora_linear,
    squared_row_norms,
)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's `Conv1D` is a linear layer with its weight stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class AdapterLinear(nn.Module):
    """A frozen base linear layer plus a trainable LoRA/DoRA adapter.

    Adapter parameters are fp32 masters whatever the base dtype; the forward casts them to
    the activation dtype, so a bf16 model keeps bf16 activations (and saved tensors).
    Every forward, with or without dropout, runs one of the two lean autograd functions of
    dora_math; dropout drops the adapter branch's input only (see DoraLinearFunction).
    """

    quantized = False  # the base weight is NF4 (dora_core/quantization.NF4AdapterLinear)
    adapter_enabled = True  # False: the layer returns its base output (dora_core/reference.py, DPO's reference)

    def __init__(self, base_layer: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.method = config.method
        self.rank = config.rank
        self.scale = config.scale
        self.dropout_p = float(config.dropout)
        weight = self.base_weight()  # (out, in)
        out_features, in_features = weight.shape
        self.in_features, self.out_features = in_features, out_features
        device, master = weight.device, at_least_fp32(weight.dtype)  # fp32 masters (float64 for a float64 base)
        self.lora_A = nn.Parameter(torch.empty(config.rank, in_features, device=device, dtype=master))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.rank, device=device, dtype=master))  # (out, r)
        # PEFT's (and nn.Linear's) default init for A; B = 0 makes the adapter a no-op at step 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self._weight_sq_norm_cache: tuple[tuple, torch.Tensor] | None = None
        if config.use_dora:
            # m starts at ||W||_row so that W' = W at init (B = 0).
            self.lora_magnitude_vector = nn.Parameter(squared_row_norms(weight).sqrt())  # (out,)
        else:
            self.register_parameter("lora_magnitude_vector", None)

    # -- the base layer, seen as (out, in) ------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """W as (out, in); GPT-2's Conv1D stores W^T, returned here as a view, not a copy."""
        weight = self.base_layer.weight
        return weight.T if self.fan_in_fan_out else weight

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, for code that inspects `layer.weight` (dtype, device)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def use_dora(self) -> bool:
        return self.lora_magnitude_vector is not None

    def weight_sq_norm(self) -> torch.Tensor:
        """||W||_row^2, cached while the frozen weight is unchanged (same storage and version)."""
        weight = self.base_layer.weight
        # the version counter is how torch itself tells an in-place change (autograd's saved-tensor
        # checks); it has no public name
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)  # noqa: SLF001 - see above
        if self._weight_sq_norm_cache is None or self._weight_sq_norm_cache[0] != key:
            self._weight_sq_norm_cache = (key, squared_row_norms(self.base_weight()))
        return self._weight_sq_norm_cache[1]

    def weight_norm(self) -> torch.Tensor:
        """n = ||W + s B A||_row (fp32, detached, (out,)) without the dense matrix."""
        return factored_row_norm(self.base_weight(), self.lora_A, self.lora_B, self.scale, self.weight_sq_norm())

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        x = _to_autocast_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight, bias = self.base_weight(), self.base_layer.bias
            if not self.adapter_enabled:  # W x + b: the same kernel with scale 0 (an NF4 or Conv1D base too)
                return lora_linear(x, weight, bias, self.lora_A, self.lora_B, 0.0)
            dropout_p, seed = self.active_dropout()
            if not self.use_dora:
                return lora_linear(x, weight, bias, self.lora_A, self.lora_B, self.scale, dropout_p, seed)
            norm = self.weight_norm()
            return dora_linear(x, weight, bias, self.lora_A, self.lora_B, self.lora_magnitude_vector, norm, self.scale,
                               dropout_p, seed)

    def active_dropout(self) -> tuple[float, int]:
        """(p, seed of this forward's mask): (0.0, 0) in eval mode or without dropout."""
        if not (self.training and self.dropout_p > 0.0):
            return 0.0, 0
        return self.dropout_p, draw_dropout_seed()

    # -- merge ------------------------------------------------------------------------------
    @torch.no_grad()
    def merged_base_layer(self) -> nn.Module:
        """The base layer with W' written into its weight (same class, no overhead)."""
        merged = dense_adapted_weight(
            self.base_weight(), self.lora_A, self.lora_B, self.scale, self.lora_magnitude_vector
        )  # (out, in) fp32
        weight = self.base_layer.weight
        weight.copy_((merged.T if self.fan_in_fan_out else merged).to(weight.dtype))
        self._weight_sq_norm_cache = None
        return self.base_layer

    def extra_repr(self) -> str:
        return f"method={self.method}, rank={self.rank}, scale={self.scale:g}, dropout={self.dropout_p:g}"


def _to_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """Under autocast, compute in the autocast dtype, as nn.Linear would."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        return x.to(torch.get_autocast_dtype(device_type))
    return x
