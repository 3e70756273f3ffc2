"""Adapter settings: what a user chooses when they ask for DoRA or LoRA.

Defaults take the lean path: dropout 0.0 (as torchtune, Together and Unsloth default to) and
alpha = 2 x rank (scale 2), so a job created with nothing but a model trains the cheap layer.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictBool, StrictFloat, StrictInt, StringConstraints, model_validator

from dora_contract.base import ContractModel, distinct

ALL_LINEAR = "all-linear"
MAX_RANK = 1024
METHODS = ("dora", "lora")
ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,254}$")]
# 'all-linear' or a non-empty list of distinct module names (a name matches itself or a suffix)
TargetModules = Literal["all-linear"] | Annotated[tuple[ModuleName, ...], AfterValidator(distinct)]


class AdapterSettings(ContractModel):
    """DoRA (Liu et al., 2024) or LoRA (Hu et al., 2021) on the base model's linear layers.

    scale s = alpha / rank, or alpha / sqrt(rank) with rsLoRA (Kalajdzievski, 2023), which keeps
    the update's size stable as the rank grows.
    """

    method: Literal["dora", "lora"] = Field("dora", description="dora: magnitude + direction; lora: plain low rank")
    rank: StrictInt = Field(16, ge=1, le=MAX_RANK, description="r, the rank of B A")
    alpha: StrictFloat | None = Field(None, gt=0, description="scale numerator; null means 2 x rank")
    dropout: StrictFloat = Field(
        0.0, ge=0.0, lt=1.0,
        description="dropout on the adapter branch's input; 0 keeps DoRA's lean backward exact and cheapest")
    target_modules: TargetModules = Field(
        ALL_LINEAR, description="'all-linear' (every linear layer but the output head) or a list of module names")
    use_rslora: StrictBool = Field(False, description="scale = alpha / sqrt(rank) instead of alpha / rank")

    @model_validator(mode="before")
    @classmethod
    def _alpha_follows_rank(cls, data: Any) -> Any:
        """alpha left out (or null) is 2 x rank, resolved here so every dump shows the number."""
        if isinstance(data, dict) and data.get("alpha") is None:
            rank = data.get("rank", cls.model_fields["rank"].default)
            if isinstance(rank, int) and not isinstance(rank, bool):
                data = dict(data) | {"alpha": 2.0 * rank}
        return data

    @property
    def scale(self) -> float:
        """s in W + s B A."""
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    @property
    def use_dora(self) -> bool:
        return self.method == "dora"
