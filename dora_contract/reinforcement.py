"""Reinforcement fine-tuning (GRPO) settings: what a run adds to SFT's when it learns from a grader.

A run with `reinforcement` set (RunSettings.reinforcement) samples `samples_per_prompt` answers
to each training prompt from the model being trained, grades each with `grader` (any grader of
dora_contract.graders), and follows the group-relative policy gradient of DeepSeekMath's GRPO
(Shao et al., 2024, arXiv 2402.03300) with TRL's GRPOTrainer as the reference for the loss
(dora_core/training/grpo.py). `beta` weighs the KL to the reference policy, the model with its
adapter off; 0.0 drops that term (and its forward). Defaults are written here once.
"""

from __future__ import annotations

from pydantic import Field, StrictFloat, StrictInt

from dora_contract.base import ContractModel
from dora_contract.graders import Grader

# answers sampled per prompt (OpenAI's compute_multiplier): a group needs two to have a spread
DEFAULT_SAMPLES_PER_PROMPT = 4
MAX_SAMPLES_PER_PROMPT = 64
# DeepSeekMath's KL weight (its section 4.2); TRL 1.16's default is 0.0 (no KL, no reference forward)
DEFAULT_GRPO_BETA = 0.04
MAX_GRPO_BETA = 10.0
DEFAULT_MAX_COMPLETION_TOKENS = 256  # TRL's max_completion_length default
MAX_COMPLETION_TOKENS = 4096
DEFAULT_EVAL_SAMPLES = 8  # validation prompts whose mean reward is measured at each evaluation
MAX_EVAL_SAMPLES = 1024
# Sampling is at temperature 1 (the policy's own distribution, which the policy gradient assumes)
SAMPLING_TEMPERATURE = 1.0
# one list of the metrics a reinforcement step reports beside loss (TRL's names); eval_reward at evaluations
RFT_METRICS = ("reward", "reward_std", "kl", "completions/mean_length")


class ReinforcementSettings(ContractModel):
    """GRPO: advantages (r - mean) / (std + eps) over each prompt's samples, the token-level
    policy-gradient loss plus beta x KL(policy || adapter-off reference)."""

    grader: Grader = Field(description="the reward of each sampled answer (any grader type; python where enabled)")
    samples_per_prompt: StrictInt = Field(
        DEFAULT_SAMPLES_PER_PROMPT, ge=2, le=MAX_SAMPLES_PER_PROMPT,
        description="answers sampled per prompt, the group its advantages are relative to (OpenAI's "
                    "compute_multiplier)")
    beta: StrictFloat = Field(DEFAULT_GRPO_BETA, ge=0, le=MAX_GRPO_BETA,
                              description="weight of the KL to the reference (the model with the adapter off); "
                                          f"default {DEFAULT_GRPO_BETA} (DeepSeekMath); 0 turns it off")
    max_completion_tokens: StrictInt = Field(DEFAULT_MAX_COMPLETION_TOKENS, ge=1, le=MAX_COMPLETION_TOKENS,
                                             description="tokens each sampled answer may take")
    eval_samples: StrictInt = Field(DEFAULT_EVAL_SAMPLES, ge=1, le=MAX_EVAL_SAMPLES,
                                    description="validation prompts whose mean reward (one greedy answer each) is "
                                                "measured at each evaluation")
