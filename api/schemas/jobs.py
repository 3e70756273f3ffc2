"""Fine-tuning jobs: the create request (OpenAI's shape plus `dora`/`lora` methods) and responses.

The run's settings come from the run contract (dora_contract, via run_fields.py): the same
types, bounds and defaults as `dora train`. Limits the operator configures (rank range, epochs,
known models) are applied on top in services/limits.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from api.schemas.common import StrictModel, check_metadata
from api.schemas.run_fields import adapter_fields, contract_type, training_fields
from dora_contract import (
    DEFAULT_OUTPUTS,
    AdapterSettings,
    DpoSettings,
    ReinforcementSettings,
    RunSettings,
    TrainingSettings,
)
from dora_contract.integrations import MAX_INTEGRATIONS, Integration, check_integrations
from dora_contract.job_spec import MAX_JOB_EVALS
from store.job_status import JobStatus

Auto = Literal["auto"]
# learning_rate_multiplier (OpenAI's): the contract's default learning rate times this
Multiplier = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]


class SupervisedHyperparameters(StrictModel):
    """OpenAI's knobs for its `supervised` method, run as DoRA with the contract's defaults
    (see services/methods.py); bounds are the contract's."""

    n_epochs: Auto | contract_type(TrainingSettings, "epochs") | None = None
    batch_size: Auto | contract_type(TrainingSettings, "micro_batch_size") | None = None
    learning_rate_multiplier: Auto | Multiplier | None = None


class SupervisedMethod(StrictModel):
    hyperparameters: SupervisedHyperparameters | None = None


class _OneLearningRate(StrictModel):
    @model_validator(mode="after")
    def _one_learning_rate(self) -> _OneLearningRate:
        if self.learning_rate is not None and self.learning_rate_multiplier not in (None, "auto"):
            raise ValueError("give learning_rate or learning_rate_multiplier, not both")
        return self


# `method.<dora|lora>.hyperparameters`: every training setting and (OpenAI's convention for a
# method's own knobs) every adapter setting of the run contract; anything left out (null) takes
# the contract's default.
TrainingHyperparameters = create_model(
    "TrainingHyperparameters", __base__=_OneLearningRate, __module__=__name__,
    __doc__="The run's settings; anything left out takes the run contract's default.",
    **training_fields(), **adapter_fields(),
    learning_rate_multiplier=(Multiplier | None, Field(None, description="learning_rate = the default x this")),
)

# `method.<dora|lora>`: the adapter settings may also stand here, beside `hyperparameters`
# (giving one in both places is a 400 naming both).
AdapterMethod = create_model(
    "AdapterMethod", __base__=StrictModel, __module__=__name__,
    __doc__="A DoRA or LoRA job's settings: in `hyperparameters`, or the adapter's beside it.",
    **adapter_fields(),
    hyperparameters=(TrainingHyperparameters | None, None),
)
# `method.dpo` (OpenAI's shape): `hyperparameters` holds OpenAI's four DPO knobs (beta, n_epochs,
# batch_size, learning_rate_multiplier; each may be "auto", the contract's default) and, as for
# `dora`/`lora`, every training and adapter setting of the run contract; `adapter` picks the layer.
DpoHyperparameters = create_model(
    "DpoHyperparameters", __base__=_OneLearningRate, __module__=__name__,
    __doc__="OpenAI's DPO knobs ('auto' = the default) and the run's settings; left out: the contract's default.",
    **(training_fields() | adapter_fields() | {
        "n_epochs": (Auto | contract_type(TrainingSettings, "epochs") | None, training_fields()["n_epochs"][1]),
        "batch_size": (Auto | contract_type(TrainingSettings, "micro_batch_size") | None,
                       training_fields()["batch_size"][1]),
        "learning_rate_multiplier": (Auto | Multiplier | None,
                                     Field(None, description="learning_rate = the default x this"))}),
    beta=(Auto | contract_type(DpoSettings, "beta") | None,
          Field(None, description=f"{DpoSettings.model_fields['beta'].description}. Default ('auto'): "
                                  f"{DpoSettings.model_fields['beta'].default!r}")),
)
DpoMethod = create_model(
    "DpoMethod", __base__=StrictModel, __module__=__name__,
    __doc__="A DPO job: OpenAI's `hyperparameters` (plus the run's settings) and the adapter it trains.",
    **adapter_fields(),
    adapter=(contract_type(AdapterSettings, "method") | None,
             Field(None, description="the adapter DPO trains: dora (the default) or lora")),
    hyperparameters=(DpoHyperparameters | None, None),
)
# `method.reinforcement` (OpenAI's shape): `grader` (any grader of dora_contract.graders, parsed in
# services/methods.py so that its errors name `method.reinforcement.grader.<field>`) and OpenAI's
# RFT knobs ("auto" = the contract's default), plus every training and adapter setting as for `dpo`.
ReinforcementHyperparameters = create_model(
    "ReinforcementHyperparameters", __base__=_OneLearningRate, __module__=__name__,
    __doc__="OpenAI's RFT knobs ('auto' = the default) and the run's settings; left out: the contract's default.",
    **(training_fields() | adapter_fields() | {
        "n_epochs": (Auto | contract_type(TrainingSettings, "epochs") | None, training_fields()["n_epochs"][1]),
        "batch_size": (Auto | contract_type(TrainingSettings, "micro_batch_size") | None,
                       training_fields()["batch_size"][1]),
        "learning_rate_multiplier": (Auto | Multiplier | None,
                                     Field(None, description="learning_rate = the default x this")),
        "eval_interval": (Auto | contract_type(TrainingSettings, "eval_interval") | None,
                          training_fields()["eval_interval"][1])}),
    eval_samples=(Auto | contract_type(ReinforcementSettings, "eval_samples") | None,
                  Field(None, description=ReinforcementSettings.model_fields["eval_samples"].description)),
    # OpenAI types it a number; here it is the whole count of answers sampled per prompt (4.0 is 4)
    compute_multiplier=(Auto | float | None,
                        Field(None, description=ReinforcementSettings.model_fields["samples_per_prompt"].description)),
    reasoning_effort=(str | None, Field(None, description="accepted only as 'default': no model here reasons")),
    beta=(Auto | contract_type(ReinforcementSettings, "beta") | None,
          Field(None, description=ReinforcementSettings.model_fields["beta"].description)),
    max_completion_tokens=(contract_type(ReinforcementSettings, "max_completion_tokens") | None,
                           Field(None, description=ReinforcementSettings.model_fields["max_completion_tokens"]
                                 .description)),
)
ReinforcementMethod = create_model(
    "ReinforcementMethod", __base__=StrictModel, __module__=__name__,
    __doc__="A reinforcement job: its grader, OpenAI's `hyperparameters` (plus the run's settings), the adapter.",
    **adapter_fields(),
    grader=(dict[str, Any], Field(description="the reward: any grader (string_check, text_similarity, "
                                              "python where enabled, multi of those)")),
    adapter=(contract_type(AdapterSettings, "method") | None,
             Field(None, description="the adapter trained: dora (the default) or lora")),
    hyperparameters=(ReinforcementHyperparameters | None, None),
)
# the method types a job may be created with
METHOD_TYPES = ("supervised", "dora", "lora", "dpo", "reinforcement")
Output = contract_type(RunSettings, "outputs")
GgufType = contract_type(RunSettings, "gguf_type")
GGUF_TYPE_FIELD = RunSettings.model_fields["gguf_type"]


class Method(StrictModel):
    type: str
    supervised: SupervisedMethod | None = None
    dora: AdapterMethod | None = None
    lora: AdapterMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None

    @model_validator(mode="after")
    def _matching_block(self) -> Method:
        if self.type not in METHOD_TYPES:
            raise ValueError(f"method type '{self.type}' is not supported; use 'dora', 'lora', 'supervised', 'dpo' or "
                             "'reinforcement'")
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
    seed: contract_type(TrainingSettings, "seed") | None = None  # drawn at random when left out (OpenAI)
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = None  # OpenAI's deprecated top-level form
    integrations: list[Integration] | None = Field(None, max_length=MAX_INTEGRATIONS, description=(
        "experiment tracking: OpenAI's {type: wandb, wandb: {project, name, entity, tags}}, and {type: mlflow, "
        "mlflow: {experiment, run_name}}; to the operator's server (DORA_WANDB_*, DORA_MLFLOW_TRACKING_URI)"))
    outputs: Output = DEFAULT_OUTPUTS
    gguf_type: GgufType | None = Field(None, description=f"{GGUF_TYPE_FIELD.description}. Default: "
                                                         f"{GGUF_TYPE_FIELD.default!r}")
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    gpus: int = Field(1, ge=1, description="GPUs of one worker the job runs on, as one torch.distributed run "
                                           "(training.parallelism: DDP or FSDP2); at most DORA_MAX_JOB_GPUS")
    evals: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=MAX_JOB_EVALS, description=(
            "an addition: ids of the caller's evals to run on each checkpoint and on the fine-tuned model, with the "
            "completions data source of each eval's most recent completions run (its model replaced)"))

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value: list[Integration] | None) -> list[Integration] | None:
        return value if value is None else list(check_integrations(tuple(value)))

    @model_validator(mode="after")
    def _one_form(self) -> JobCreate:
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
    status: JobStatus
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
    gpus: int = 1
    resumed_from_step: int | None = None
    cancel_requested: bool = False
    pause_requested: bool = False  # POST .../pause on a running job: it pauses at its next step boundary
    evals: list[str] = Field(default_factory=list)  # the evals run on each checkpoint (GET .../eval_scores)


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


class JobSampleOut(BaseModel):
    """The model's greedy answer to a validation prompt at an evaluation (run setting `sample_prompts`)."""

    id: str
    object: Literal["fine_tuning.job.sample"] = "fine_tuning.job.sample"
    created_at: int
    step: int
    index: int  # 0-based among the evaluation's samples: the same prompt at every step
    prompt: str  # as the model saw it, chat template included (its last characters when long)
    expected: str  # the validation row's answer
    answer: str  # what the model generated (greedy)


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


class EvalScoreCriterion(BaseModel):
    testing_criteria: str
    passed: int
    failed: int
    pass_rate: float | None  # passed / (passed + failed); null before any item is graded


class JobEvalScore(BaseModel):
    """One eval run the job made: of a checkpoint at `step`, or of its fine-tuned model (the last step)."""

    object: Literal["fine_tuning.job.eval_score"] = "fine_tuning.job.eval_score"
    run_id: str
    eval_id: str
    eval_name: str | None = None
    step: int
    evaluated: str  # "checkpoint" or "fine_tuned_model"
    model: str
    status: str  # the run's: queued, in_progress, completed, failed, canceled
    result_counts: dict[str, int]
    pass_rate: float | None  # passed / total items (an errored item is no pass); null while none is graded
    per_testing_criteria_results: list[EvalScoreCriterion]


class JobEvalScorePage(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvalScore]
    has_more: bool


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
