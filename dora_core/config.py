"""Adapter settings: what a user chooses when they ask for DoRA or LoRA.

Validation happens here, once, so every caller (CLI, worker, tests) gets the same error
naming the offending field instead of a shape error deep inside a matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ALL_LINEAR = "all-linear"
MAX_RANK = 1024


class AdapterConfigError(ValueError):
    """A setting is invalid; `field` names it so APIs can point at it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class AdapterConfig:
    """DoRA (Liu et al., 2024) or LoRA (Hu et al., 2021) settings.

    scale s = alpha / rank, or alpha / sqrt(rank) with rsLoRA (Kalajdzievski, 2023), which
    keeps the update's size stable as the rank grows.
    """

    method: Literal["dora", "lora"] = "dora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = ALL_LINEAR
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("dora", "lora"):
            raise AdapterConfigError("method", f"must be 'dora' or 'lora', got {self.method!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise AdapterConfigError("rank", f"must be an integer, got {self.rank!r}")
        if not 1 <= self.rank <= MAX_RANK:
            raise AdapterConfigError("rank", f"must be between 1 and {MAX_RANK}, got {self.rank}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise AdapterConfigError("alpha", f"must be a number, got {self.alpha!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise AdapterConfigError("alpha", f"must be a positive finite number, got {self.alpha}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise AdapterConfigError("dropout", f"must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "target_modules", _normalise_targets(self.target_modules))
        if not isinstance(self.use_rslora, bool):
            raise AdapterConfigError("use_rslora", f"must be true or false, got {self.use_rslora!r}")

    @property
    def scale(self) -> float:
        """s in W + s B A."""
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    @property
    def use_dora(self) -> bool:
        return self.method == "dora"


def _normalise_targets(targets: object) -> str | tuple[str, ...]:
    if targets == ALL_LINEAR:
        return ALL_LINEAR
    if isinstance(targets, str):
        raise AdapterConfigError(
            "target_modules", f"must be '{ALL_LINEAR}' or a list of module names, got {targets!r}"
        )
    if not isinstance(targets, (list, tuple)) or not targets:
        raise AdapterConfigError("target_modules", "must be a non-empty list of module names")
    names = tuple(targets)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise AdapterConfigError("target_modules", f"every entry must be a non-empty string, got {name!r}")
    return names
