"""Evals (issue #24) in OpenAI's shapes: the request bodies of /v1/evals and its runs, and the objects
answered (the official client's `openai/types/eval_*.py`, `evals/*.py`, `evals/runs/*.py`).

Only what this service can run is accepted: a `custom` data source config; run data sources
`completions` (a model served here samples each item) and `jsonl` (the items carry their `sample`),
each from a `file_id` (purpose `evals`) or inline `file_content`. Testing criteria are the graders of
dora_contract/graders.py. A tagged union's error names the field without the tag pydantic puts in
the location (`data_source.model`, not `data_source.completions.model`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from api.schemas.common import StrictModel, check_metadata
from api.schemas.completions import INT64
from dora_contract.graders import Grader
from dora_contract.serving import MAX_TEMPERATURE

MAX_TESTING_CRITERIA = 32
MAX_TEMPLATE_MESSAGES = 64
MAX_NAME_CHARS = 255  # evals.name, eval_runs.name (store/models.py String(255))
Metadata = Annotated[dict[str, str] | None, AfterValidator(check_metadata)]
# location parts under which pydantic names the union member it tried (a tag); dropped from `param`
_UNION_FIELDS = ("data_source", "source", "input_messages", "graders")


def _param(field: str, loc: tuple) -> str:
    """The dotted field of an error inside a tagged union, without the tags."""
    parts = [field, *(str(p) for p in loc)]
    kept = [p for i, p in enumerate(parts)
            if not (i and (parts[i - 1] in _UNION_FIELDS
                           or (i >= 2 and parts[i - 2] in ("testing_criteria", "graders") and parts[i - 1].isdigit())))]
    return ".".join(kept)


def name_the_field(field: str, validate: Any, value: Any) -> Any:
    """Run `validate(value)`; its first error becomes one naming `field.<path>` (api/errors.py reads
    the path from the error's context)."""
    try:
        return validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        shown = _param(field, tuple(first.get("loc", ())))
        if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            shown += ".type"  # the tag that chose no member: name it
        where = shown[len(field) + 1:]
        if first.get("type") == "missing":
            message = f"Missing required parameter: '{shown}'"
        elif first.get("type") == "extra_forbidden":
            message = f"Unrecognized request argument supplied: '{shown}'"
        else:
            message = f"Invalid value for '{shown}': {first.get('msg', 'invalid value')}"
        raise PydanticCustomError("invalid_value", message, {"param": where or "body"}) from None


# -- an eval ------------------------------------------------------------------------------------------
class CustomDataSourceConfig(StrictModel):
    """What each item looks like (a JSON schema, checked to be one), and whether the `sample`
    namespace (a model's output) is in the eval's schema too."""

    type: Literal["custom"]
    item_schema: dict[str, Any]
    include_sample_schema: bool = False


class EvalCreate(StrictModel):
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    metadata: Metadata = None
    data_source_config: CustomDataSourceConfig
    testing_criteria: list[Grader] = Field(min_length=1, max_length=MAX_TESTING_CRITERIA)

    @field_validator("testing_criteria", mode="wrap")
    @classmethod
    def _criteria(cls, value: Any, handler: Any) -> Any:
        return name_the_field("testing_criteria", handler, value)


class EvalUpdate(StrictModel):
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    metadata: Metadata = None


# -- a run's data source ----------------------------------------------------------------------------
class TextPart(StrictModel):
    type: Literal["input_text", "output_text"]
    text: str


class TemplateMessage(StrictModel):
    """One message of the prompt; its text may hold `{{item.field}}` references."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | TextPart
    type: Literal["message"] | None = None


class TemplateInput(StrictModel):
    type: Literal["template"]
    template: list[TemplateMessage] = Field(min_length=1, max_length=MAX_TEMPLATE_MESSAGES)


class ItemReferenceInput(StrictModel):
    """The item's own list of messages: `item.<field>`."""

    type: Literal["item_reference"]
    item_reference: str = Field(min_length=6, max_length=255, pattern=r"^item\.[A-Za-z_][A-Za-z0-9_.]*$")


class SamplingParams(StrictModel):
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE)
    max_completion_tokens: int | None = Field(None, ge=1)  # at most DORA_MAX_COMPLETION_TOKENS (checked on create)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)


class ContentRow(StrictModel):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(StrictModel):
    type: Literal["file_content"]
    content: list[ContentRow] = Field(min_length=1)  # at most DORA_MAX_EVAL_ITEMS (checked on create)


class FileIdSource(StrictModel):
    type: Literal["file_id"]
    id: str = Field(min_length=1, max_length=64)


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]
InputMessages = Annotated[TemplateInput | ItemReferenceInput, Field(discriminator="type")]


class CompletionsDataSource(StrictModel):
    """A model served here answers each item's prompt; the graders see its answer as `sample`."""

    type: Literal["completions"]
    model: str = Field(min_length=1, max_length=255)
    input_messages: InputMessages
    sampling_params: SamplingParams | None = None
    source: Source


class JsonlDataSource(StrictModel):
    """Items that carry their own `sample` (an answer made elsewhere) are graded as they are."""

    type: Literal["jsonl"]
    source: Source


DataSource = Annotated[CompletionsDataSource | JsonlDataSource, Field(discriminator="type")]


class RunCreate(StrictModel):
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    metadata: Metadata = None
    data_source: DataSource

    @field_validator("data_source", mode="wrap")
    @classmethod
    def _data_source(cls, value: Any, handler: Any) -> Any:
        return name_the_field("data_source", handler, value)


# -- answers ----------------------------------------------------------------------------------------
class EvalObject(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    created_at: int
    name: str
    metadata: dict[str, str] | None = None
    data_source_config: dict[str, Any]  # {type: custom, schema: {type: object, properties: {item, sample?}}}
    testing_criteria: list[dict[str, Any]]


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class EvalApiError(BaseModel):
    code: str
    message: str


class ResultCounts(BaseModel):
    total: int
    passed: int
    failed: int
    errored: int


class PerTestingCriteriaResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class PerModelUsage(BaseModel):
    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int


class EvalRunObject(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    created_at: int
    name: str
    status: Literal["queued", "in_progress", "completed", "failed", "canceled"]
    model: str
    data_source: dict[str, Any]
    error: EvalApiError  # OpenAI's shape has one always: empty code and message when none
    metadata: dict[str, str] | None = None
    report_url: str
    result_counts: ResultCounts
    per_testing_criteria_results: list[PerTestingCriteriaResult]
    per_model_usage: list[PerModelUsage]
    # additions
    cancel_requested: bool = False
    started_at: int | None = None
    finished_at: int | None = None


class EvalRunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class SampleMessage(BaseModel):
    role: str
    content: str


class SampleUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class OutputItemSample(BaseModel):
    input: list[SampleMessage]
    output: list[SampleMessage]
    finish_reason: str
    model: str
    usage: SampleUsage
    error: EvalApiError
    temperature: float
    max_completion_tokens: int
    top_p: float
    seed: int


class OutputItemResult(BaseModel):
    model_config = {"extra": "allow"}
    name: str
    type: str | None = None
    score: float
    passed: bool
    sample: dict[str, Any] | None = None


class OutputItemObject(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    eval_id: str
    run_id: str
    created_at: int
    status: Literal["pass", "fail", "error"]
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[OutputItemResult]
    sample: OutputItemSample
