"""A job's experiment-tracking integrations (issue #26), in OpenAI's shape plus MLflow.

`{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}` is OpenAI's one integration;
`{"type": "mlflow", "mlflow": {"experiment", "run_name"}}` is ours. The tenant names only where
in the tracking server the run goes; the server itself (URL, key) is the operator's setting, so
these values are stored on the job (JobSpec.integrations) and the worker logs to them.
Bounds are W&B's own (a project or run name of at most 128 characters, tags of at most 64), so a
name W&B would refuse is a 400 at creation, not a job that silently logs nothing.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from dora_contract.base import ContractModel

INTEGRATION_TYPES = ("wandb", "mlflow")
MAX_INTEGRATIONS = 2  # one of each type
MAX_NAME_LENGTH = 128  # W&B's limit on project and run names; MLflow's names share it here
MAX_TAG_LENGTH = 64  # W&B's limit on one tag
MAX_TAGS = 50

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]


class WandbIntegration(ContractModel):
    """OpenAI's `wandb` block: the run is created under `project` (and `entity`, else the key's default)."""

    project: Name
    name: Name | None = Field(None, description="the run's display name; default: the job id")
    entity: Name | None = Field(None, description="team or user; default: the API key's default entity")
    tags: tuple[Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH)], ...] = Field(
        (), max_length=MAX_TAGS, description="added to the default tags dora/finetune, dora/<base model>, dora/<job>")


class MlflowIntegration(ContractModel):
    """Our `mlflow` block: the experiment (created when missing) and the run's name (default: the job id)."""

    experiment: Name
    run_name: Name | None = None


class Integration(ContractModel):
    type: str
    wandb: WandbIntegration | None = None
    mlflow: MlflowIntegration | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in INTEGRATION_TYPES:
            raise ValueError(f"integration type '{value}' is not supported; use 'wandb' or 'mlflow'")
        return value

    @model_validator(mode="after")
    def _its_block(self) -> Integration:
        if getattr(self, self.type) is None:
            raise ValueError(f"an integration of type '{self.type}' needs its settings under '{self.type}'")
        other = next((name for name in INTEGRATION_TYPES if name != self.type and getattr(self, name)), None)
        if other:
            raise ValueError(f"integration type is '{self.type}' but settings were given under '{other}'")
        return self


def check_integrations(value: tuple[Integration, ...]) -> tuple[Integration, ...]:
    """At most one integration of each type (a second W&B run of the same job is a mistake)."""
    types = [integration.type for integration in value]
    if len(set(types)) != len(types):
        raise ValueError("give each integration type at most once")
    return value
