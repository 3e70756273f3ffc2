"""Preference tuning (DPO) settings: what a run adds to SFT's when it learns from pairs.

A run with `dpo` set (RunSettings.dpo) trains with the sigmoid DPO loss of Rafailov et al.
(2023) on preference rows instead of the next-token loss; left out (null), the run is SFT.
The reference policy is the same model with the adapter switched off, so `beta` is the only
knob. beta = 0.1 is what OpenAI's `auto` resolves to in its DPO guide and TRL's DPOConfig
default; it is written here once (the API shows `auto` resolved to it).
"""

from __future__ import annotations

from pydantic import Field, StrictFloat

from dora_contract.base import ContractModel

DEFAULT_DPO_BETA = 0.1
# beta above this leaves the loss a step function of the log-ratio margin: no useful gradient
MAX_DPO_BETA = 100.0
# one list of the metrics a DPO step reports beside loss (TRL's names); eval_ prefixes them at evaluations
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class DpoSettings(ContractModel):
    """Sigmoid DPO: loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), per pair."""

    beta: StrictFloat = Field(DEFAULT_DPO_BETA, gt=0, le=MAX_DPO_BETA,
                              description="how strongly the policy is held to the reference (adapter off); "
                                          f"default {DEFAULT_DPO_BETA} (OpenAI's auto, TRL's default)")
