"""Many adapters on one shared base model, unmerged: slot tensors in every adapted linear.

`AdapterSlots.install(model, slots=..., max_rank=...)` swaps every linear that "all-linear" selects
(not the output head) for a `MultiAdapterLinear`: the frozen base layer plus, per slot,
A (slots, r_max, in), B (slots, out, r_max) and the DoRA gain (slots, out). A forward computes

    y = g[slot] * (W x + B[slot] (A[slot] x)) + bias        (one bmm pair for the whole batch)

with the slot id of each batch row read from the shared `SlotContext` the engine sets. The LoRA
scale s is folded into B when an adapter is loaded: every slot may have its own scale, and folding
saves a multiply per layer and step. LoRA slots keep g = 1 and slot 0 (the base model) has A = B = 0
and g = 1, so its rows give exactly the base layer's output. An adapter of rank r < r_max is
zero-padded (B A is unchanged), a layer the adapter does not target keeps zeros for that slot.

Memory: slots x r_max x (in + out) values of the model's dtype per adapted linear, plus an fp32 gain
per slot and output row (SmolLM2-135M with 9 slots, 8 adapters and the base, of rank 64 in bf16:
about 360 MB, more than its own 270 MB of weights).

Loading is split so the engine can keep decoding: `prepare(directory)` reads and validates the
PEFT folder and computes the gains (the heavy part, any thread), `write(slot, prepared)` copies into
the slot tensors under `lock`, which the engine holds during each forward.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydantic
import torch
from torch import nn

from dora_core.config import ALL_LINEAR, AdapterConfig
from dora_core.dora_math import NORM_EPS, at_least_fp32, factored_row_norm, squared_row_norms
from dora_core.inject import resolve_target_modules
from dora_core.layers import is_conv1d
from dora_core.peft_format import AdapterFormatError, _read_tensors, read_peft_config

BASE_SLOT = 0  # the slot of requests without an adapter


class AdapterMismatchError(AdapterFormatError):
    """The adapter folder is readable but does not fit this base model or these slots."""


class SlotContext:
    """The slot id of each batch row, (batch,) int64 on the model's device, shared by every layer.

    None means "all rows on the base model" (the adapter branch is skipped)."""

    def __init__(self) -> None:
        self.slot_ids: torch.Tensor | None = None

    @contextmanager
    def rows(self, slot_ids: torch.Tensor | None) -> Iterator[None]:
        previous, self.slot_ids = self.slot_ids, slot_ids
        try:
            yield
        finally:
            self.slot_ids = previous


class MultiAdapterLinear(nn.Module):
    """A frozen linear (nn.Linear or GPT-2's Conv1D) plus per-slot adapter tensors."""

    def __init__(self, base_layer: nn.Module, context: SlotContext, *, slots: int, max_rank: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.context = context
        weight = base_layer.weight.T if is_conv1d(base_layer) else base_layer.weight  # (out, in)
        out_features, in_features = weight.shape
        self.in_features, self.out_features = in_features, out_features
        options = {"device": weight.device, "dtype": weight.dtype}
        self.register_buffer("slot_A", torch.zeros(slots, max_rank, in_features, **options))  # (S, r_max, in)
        # (S, out, r_max), the scale s folded in
        self.register_buffer("slot_B", torch.zeros(slots, out_features, max_rank, **options))
        # the gain stays fp32 (fp64 for a float64 base) and multiplies in it: one rounding to the activation dtype
        gain_dtype = at_least_fp32(weight.dtype)
        self.register_buffer("slot_gain", torch.ones(slots, out_features, device=weight.device, dtype=gain_dtype))
        self._weight_sq_norm: torch.Tensor | None = None

    def base_weight(self) -> torch.Tensor:
        """W as (out, in) (a view for Conv1D, which stores W^T)."""
        weight = self.base_layer.weight
        return weight.T if is_conv1d(self.base_layer) else weight

    def weight_sq_norm(self) -> torch.Tensor:
        """||W||_row^2 in fp32 (fp64 for a float64 base), computed once: the base is frozen."""
        if self._weight_sq_norm is None:
            self._weight_sq_norm = squared_row_norms(self.base_weight())
        return self._weight_sq_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, seq, in) -> (batch, seq, out)
        y = self.base_layer(x)
        slot_ids = self.context.slot_ids
        if slot_ids is None:
            return y
        # index_select, not tensor[ids]: the same gather, several times faster on CPUs
        a = torch.index_select(self.slot_A, 0, slot_ids).to(x.dtype)  # (batch, r_max, in)
        b = torch.index_select(self.slot_B, 0, slot_ids).to(x.dtype)  # (batch, out, r_max)
        gain = torch.index_select(self.slot_gain, 0, slot_ids).unsqueeze(1)  # (batch, 1, out), fp32
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, seq, in)
        delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2)).view(y.shape)  # (batch, seq, out)
        bias = self.base_layer.bias
        if bias is None:  # g (W x + delta): slot 0 rows are y + 0 times 1, exactly y
            return (gain * (y + delta)).to(y.dtype)
        adapted = (gain * (y - bias + delta)).to(y.dtype) + bias
        return torch.where((slot_ids == BASE_SLOT).view(-1, 1, 1), y, adapted)

    def extra_repr(self) -> str:
        slots, max_rank, _ = self.slot_A.shape
        return f"slots={slots}, max_rank={max_rank}"


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter ready to copy into a slot: per layer name, A (r, in), s B (out, r), gain (out,) or None."""

    method: str
    rank: int
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class AdapterSlots:
    """The MultiAdapterLinear layers of one model, and the lock that guards their slot tensors."""

    def __init__(self, model: nn.Module, layers: dict[str, MultiAdapterLinear], context: SlotContext,
                 *, slots: int, max_rank: int) -> None:
        self.model, self.layers, self.context = model, layers, context
        self.num_slots, self.max_rank = slots, max_rank
        self.lock = threading.RLock()  # held by the engine during a forward, by write() during a copy

    @classmethod
    def install(cls, model: nn.Module, *, slots: int, max_rank: int) -> AdapterSlots:
        """Replace the model's "all-linear" layers in place; `slots` counts slot 0 (the base)."""
        if slots < 2 or max_rank < 1:
            raise ValueError(f"need slots >= 2 (slot 0 is the base model) and max_rank >= 1, got {slots}, {max_rank}")
        context = SlotContext()
        layers = {}
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for name in resolve_target_modules(model, ALL_LINEAR):
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = MultiAdapterLinear(getattr(parent, child_name), context, slots=slots, max_rank=max_rank)
            setattr(parent, child_name, layer)
            layers[name] = layer
        return cls(model, layers, context, slots=slots, max_rank=max_rank)

    # -- loading ----------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, directory: str | Path) -> PreparedAdapter:
        """Read a PEFT adapter folder, check it against the base, compute s B and the gains."""
        directory = Path(directory)
        peft_config = read_peft_config(directory)
        rank = peft_config["r"]
        if not isinstance(rank, int) or rank < 1:
            raise AdapterMismatchError(f"r must be a positive integer, got {rank!r}")
        if rank > self.max_rank:
            raise AdapterMismatchError(f"rank {rank} exceeds this server's max_rank {self.max_rank}")
        use_dora = bool(peft_config.get("use_dora"))
        try:
            config = AdapterConfig(method="dora" if use_dora else "lora", rank=rank,
                                   alpha=float(peft_config.get("lora_alpha", 8)),
                                   use_rslora=bool(peft_config.get("use_rslora", False)))
        except (pydantic.ValidationError, TypeError, ValueError) as error:
            raise AdapterMismatchError(f"adapter_config.json: {error}") from None
        names = self._target_names(peft_config["target_modules"])
        tensors = _read_tensors(directory)
        expected = {f"{n}.{part}" for n in names for part in ("lora_A.weight", "lora_B.weight")}
        expected |= {f"{n}.lora_magnitude_vector" for n in names} if use_dora else set()
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise AdapterMismatchError(f"adapter weights do not fit this base model: missing {missing[:5]}, "
                                       f"unexpected {unexpected[:5]}")
        layers = {}
        for name in names:
            layer = self.layers[name]
            layers[name] = self._prepare_layer(name, layer, tensors, rank, config.scale, use_dora)
        return PreparedAdapter(method=config.method, rank=rank, layers=layers)

    def _target_names(self, target_modules: str | list[str]) -> list[str]:
        """The slot layers an adapter's target_modules select (PEFT's rules: a string is a regex that
        must match the whole name, a list entry matches a name or its last dotted parts)."""
        if isinstance(target_modules, str):
            names = [n for n in self.layers if re.fullmatch(target_modules, n)]
            if not names:
                raise AdapterMismatchError(f"target_modules regex {target_modules!r} matches no adaptable layer")
            return names
        if not isinstance(target_modules, list) or not all(isinstance(t, str) for t in target_modules):
            raise AdapterMismatchError(f"target_modules must be a list of names or a regex, got {target_modules!r}")
        unknown = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in self.layers)]
        if unknown:
            raise AdapterMismatchError(f"target_modules {unknown[:5]} name no adaptable layer of this base model")
        return [n for n in self.layers if any(n == t or n.endswith("." + t) for t in target_modules)]

    def _prepare_layer(self, name: str, layer: MultiAdapterLinear, tensors: dict[str, torch.Tensor], rank: int,
                       scale: float, use_dora: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        weight = layer.base_weight()  # (out, in)
        exact = at_least_fp32(weight.dtype)
        shapes = {"lora_A.weight": (rank, layer.in_features), "lora_B.weight": (layer.out_features, rank),
                  "lora_magnitude_vector": (layer.out_features,)}
        found = {}
        for part, shape in shapes.items():
            if part == "lora_magnitude_vector" and not use_dora:
                continue
            tensor = tensors[f"{name}.{part}"]
            if tuple(tensor.shape) != shape:
                raise AdapterMismatchError(f"{name}.{part}: shape {tuple(tensor.shape)}, this base model needs {shape}")
            if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
                raise AdapterMismatchError(f"{name}.{part}: must hold finite floating-point values")
            found[part] = tensor.to(device=weight.device, dtype=exact)
        lora_a, lora_b = found["lora_A.weight"], found["lora_B.weight"]  # (r, in), (out, r)
        gain = None
        if use_dora:  # g = m / ||W + s B A||_row, the merge's clamp (dora_math.dense_adapted_weight)
            norm = factored_row_norm(weight, lora_a, lora_b, scale, layer.weight_sq_norm())  # (out,)
            gain = found["lora_magnitude_vector"] / norm.to(exact).clamp_min(NORM_EPS)
        return lora_a, lora_b * scale, gain

    def write(self, slot: int, prepared: PreparedAdapter | None) -> None:
        """Copy a prepared adapter into `slot` (None: clear it), between two engine steps."""
        if not BASE_SLOT < slot < self.num_slots:
            raise ValueError(f"slot must be in 1..{self.num_slots - 1}, got {slot}")
        with self.lock, torch.no_grad():
            for name, layer in self.layers.items():
                layer.slot_A[slot].zero_()
                layer.slot_B[slot].zero_()
                layer.slot_gain[slot].fill_(1.0)
                if prepared is None or name not in prepared.layers:
                    continue
                lora_a, scaled_b, gain = prepared.layers[name]
                rank = lora_a.shape[0]
                layer.slot_A[slot, :rank].copy_(lora_a)
                layer.slot_B[slot, :, :rank].copy_(scaled_b)
                if gain is not None:
                    layer.slot_gain[slot].copy_(gain)

    def load(self, slot: int, directory: str | Path) -> PreparedAdapter:
        """prepare + write."""
        prepared = self.prepare(directory)
        self.write(slot, prepared)
        return prepared
