"""A grade in the shape of OpenAI's `GraderRunResponse` (reward, sub_rewards, metadata.errors...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# OpenAI's metadata.errors flags; a failed grade sets one of them (and its details where OpenAI has a field)
ERROR_FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error",
               "model_grader_refusal_error", "model_grader_server_error", "other_error",
               "python_grader_runtime_error", "python_grader_server_error", "sample_parse_error",
               "truncated_observation_error", "unresponsive_reward_error")
DETAILS = {"model_grader_server_error": "model_grader_server_error_details",
           "python_grader_runtime_error": "python_grader_runtime_error_details",
           "python_grader_server_error": "python_grader_server_error_type"}


@dataclass
class GradeResult:
    """`reward` is 0.0 when `error` (a flag of ERROR_FLAGS) is set; `message` says what failed."""

    name: str
    type: str
    reward: float = 0.0
    error: str | None = None
    message: str | None = None
    label: str | None = None  # label_model: the judge's label
    passed: bool | None = None  # string_check and label_model decide; score graders need a threshold
    sub_rewards: dict[str, float] = field(default_factory=dict)
    sub_results: dict[str, GradeResult] = field(default_factory=dict)
    tokens_per_model: dict[str, int] = field(default_factory=dict)
    sampled_model_name: str | None = None
    execution_time: float = 0.0

    def errors(self) -> dict[str, Any]:
        flags: dict[str, Any] = {flag: False for flag in ERROR_FLAGS} | {detail: None for detail in DETAILS.values()}
        for result in (self, *self.sub_results.values()):
            if result.error is not None:
                flags[result.error] = True
                if result.error in DETAILS and flags[DETAILS[result.error]] is None:
                    flags[DETAILS[result.error]] = result.message
        return flags

    def to_openai(self) -> dict[str, Any]:
        """The `GraderRunResponse` body."""
        tokens = sum(self.tokens_per_model.values()) if self.tokens_per_model else None
        return {
            "reward": self.reward,
            "sub_rewards": dict(self.sub_rewards),
            "model_grader_token_usage_per_model": {model: {"total_tokens": count}
                                                   for model, count in self.tokens_per_model.items()},
            "metadata": {"name": self.name, "type": self.type, "errors": self.errors(),
                         "execution_time": self.execution_time, "scores": dict(self.sub_rewards),
                         "token_usage": tokens, "sampled_model_name": self.sampled_model_name},
        }
