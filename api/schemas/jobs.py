"""Fine-tuning jobs: the create request (OpenAI's shape plus `dora`/`lora` methods) and responses.

Static limits live here (pydantic: 400 naming the field); limits the operator configures
(rank range, epochs, known models) are checked in services/methods.py against Settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from api.schemas.common import StrictModel, find_nul

Auto = Literal["auto"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]  # dora_core's SCHEDULERS
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Output = Literal["adapter", "merged"]
MODULE_NAME = r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$"


class SupervisedHyperparameters(StrictModel):
    """OpenAI's knobs; mapped onto DoRA defaults (see services/methods.py)."""

    n_epochs: Auto | Annotated[int, Field(ge=1)] | None = None
    batch_size: Auto | Annotated[int, Field(ge=1)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] | None = None


class SupervisedMethod(StrictModel):
    hyperparameters: SupervisedHyperparameters | None = None


class TrainingHyperparameters(StrictModel):
    """The training run's settings ([train]); anything left out takes the service default."""

    n_epochs: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=1024)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    learning_rate_multiplier: float | None = Field(default=None, gt=0, le=100)
    lr_scheduler: Scheduler | None = None
    warmup_ratio: float | None = Field(default=None, ge=0, le=1)
    weight_decay: float | None = Field(default=None, ge=0, le=10)
    max_grad_norm: float | None = Field(default=None, gt=0)
    max_seq_len: int | None = Field(default=None, ge=8)
    packing: bool | None = None
    train_on_inputs: bool | None = None
    gradient_checkpointing: bool | None = None
    precision: Precision | None = None
    eval_interval: int | None = Field(default=None, ge=1)
    checkpoint_interval: int | None = Field(default=None, ge=1)
    keep_checkpoints: int | None = Field(default=None, ge=1, le=100)
    early_stopping_patience: int | None = Field(default=None, ge=1)
    validation_split: float | None = Field(default=None, ge=0, le=0.5)

    @model_validator(mode="after")
    def _one_learning_rate(self) -> "TrainingHyperparameters":
        if self.learning_rate is not None and self.learning_rate_multiplier is not None:
            raise ValueError("give learning_rate or learning_rate_multiplier, not both")
        return self


class AdapterMethod(StrictModel):
    rank: int | None = Field(default=None, ge=1)
    alpha: float | None = Field(default=None, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None
    use_rslora: bool | None = None
    hyperparameters: TrainingHyperparameters | None = None

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str] | str | None) -> list[str] | str | None:
        import re

        if isinstance(value, list):
            if not value:
                raise ValueError("target_modules must name at least one module (or be 'all-linear')")
            bad = [m for m in value if not re.match(MODULE_NAME, m)]
            if bad:
                raise ValueError(f"invalid module name(s): {bad}")
            if len(set(value)) != len(value):
                raise ValueError("target_modules has duplicates")
        return value


class Method(StrictModel):
    type: str
    supervised: SupervisedMethod | None = None
    dora: AdapterMethod | None = None
    lora: AdapterMethod | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _matching_block(self) -> "Method":
        if self.type not in ("supervised", "dora", "lora"):
            raise ValueError(f"method type '{self.type}' is not supported; use 'dora', 'lora' or 'supervised'")
        given = [name for name in ("supervised", "dora", "lora", "dpo", "reinforcement") if getattr(self, name)]
        others = [name for name in given if name != self.type]
        if others:
            raise ValueError(f"method type is '{self.type}' but settings were given under '{others[0]}'")
        return self


class JobCreate(StrictModel):
    model: str = Field(min_length=1, max_length=255)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, min_length=1, max_length=64)
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = None  # OpenAI's deprecated top-level form
    integrations: list[dict[str, Any]] | None = None
    outputs: list[Output] = Field(default_factory=lambda: ["adapter"], min_length=1)
    max_attempts: int | None = Field(default=None, ge=1, le=10)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """PostgreSQL text and JSON cannot hold NUL: refuse it here, naming where, not with a 500."""
        if (where := find_nul(value)) is not None:
            raise ValueError(f"'{where}' contains a NUL character (\\u0000), which is not allowed")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > 16:
                raise ValueError("at most 16 metadata keys")
            for key, item in value.items():
                if not key or len(key) > 64:
                    raise ValueError(f"metadata key '{key[:70]}' must be 1-64 characters")
                if len(item) > 512:
                    raise ValueError(f"metadata value for '{key}' is longer than 512 characters")
        return value

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value: list | None) -> list | None:
        if value:
            raise ValueError("integrations are not supported by this server")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("outputs has duplicates")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> "JobCreate":
        if self.hyperparameters is not None and self.method is not None:
            raise ValueError("give hyperparameters inside method, not both at the top level and in method")
        return self


class JobErrorOut(BaseModel):
    code: str
    message: str
    param: str | None = None


class Progress(BaseModel):
    step: int
    total_steps: int | None
    epoch: float | None
    percent: float | None
    eta_seconds: float | None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    # additions
    suffix: str | None = None
    outputs: list[str]
    progress: Progress
    attempt: int
    max_attempts: int
    resumed_from_step: int | None = None
    cancel_requested: bool = False


class JobEventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class CheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class MetricPointOut(BaseModel):
    object: Literal["fine_tuning.job.metric"] = "fine_tuning.job.metric"
    step: int
    epoch: float | None = None
    created_at: int
    values: dict[str, Any]


class MetricPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[MetricPointOut]
    has_more: bool
    next_after: int | None = None  # pass as `after` for the next page


class ArtifactFileOut(BaseModel):
    path: str
    bytes: int
    sha256: str | None = None


class ArtifactOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.artifact"] = "fine_tuning.job.artifact"
    name: str
    bytes: int
    sha256: str
    file_id: str | None
    created_at: int
    files: list[ArtifactFileOut]
    download_url: str  # the whole artifact as a tar stream
