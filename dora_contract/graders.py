"""The graders of OpenAI's Evals and fine-tuning APIs, as specs in OpenAI's shapes, discriminated by `type`.

One spec answers `POST /v1/fine_tuning/alpha/graders/run|validate`, grades an eval's items and is the
reward function of reinforcement fine-tuning (dora_graders runs it). The shapes follow the official
`openai` client's `types/graders/*`; what this service cannot do (`cosine` without an embedding model,
image and audio inputs) is refused when the spec is checked, not when it runs. Bounds are written once here.

`multi.graders` is a mapping of name -> grader (OpenAI's documented shape: the formula refers to the
names); one grader alone (what the client's type says) is accepted and keyed by its `name`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from dora_contract.base import ContractModel, distinct

MAX_GRADER_NAME_CHARS = 256
MAX_TEMPLATE_CHARS = 64 * 1024  # one input/reference template or message content
MAX_PYTHON_SOURCE_CHARS = 256 * 1024  # OpenAI's documented limit for a python grader's source
MAX_LABELS = 64
MAX_GRADER_MESSAGES = 32
MAX_MULTI_GRADERS = 16
MAX_FORMULA_CHARS = 1024
DEFAULT_SCORE_RANGE = (0.0, 1.0)  # score_model's `range` when left out (OpenAI's default)
MAX_JUDGE_TEMPERATURE = 2.0

STRING_CHECK_OPERATIONS = ("eq", "ne", "like", "ilike")
ROUGE_METRICS = ("rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
SIMILARITY_METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", *ROUGE_METRICS)
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
# the functions a multi grader's `calculate_output` may call (OpenAI's documented list)
FORMULA_FUNCTIONS = ("min", "max", "abs", "floor", "ceil", "exp", "sqrt", "log")

Name = Annotated[str, Field(min_length=1, max_length=MAX_GRADER_NAME_CHARS)]
Template = Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)]


class StringCheckGrader(ContractModel):
    """1.0 when `input` and `reference` (both templates) compare as `operation` says, else 0.0."""

    type: Literal["string_check"]
    name: Name
    input: Template
    reference: Template
    operation: Literal[STRING_CHECK_OPERATIONS]


class TextSimilarityGrader(ContractModel):
    """A similarity in [0, 1] between the rendered `input` and `reference`."""

    type: Literal["text_similarity"]
    name: Name
    input: Template
    reference: Template
    evaluation_metric: Literal[SIMILARITY_METRICS]
    # an eval's testing criterion passes at or above it (OpenAI's Evals shape); unused by graders/run
    pass_threshold: float | None = None

    @field_validator("evaluation_metric")
    @classmethod
    def _no_cosine(cls, metric: str) -> str:
        if metric == "cosine":
            raise ValueError("'cosine' needs an embedding model, and none is configured on this service; "
                             "use fuzzy_match, bleu, gleu or a rouge metric")
        return metric


class InputText(ContractModel):
    type: Literal["input_text"]
    text: Template


class OutputText(ContractModel):
    type: Literal["output_text"]
    text: Template


# text parts only: the served models read no images nor audio, so those part types are refused
ContentPart = Annotated[InputText | OutputText, Field(discriminator="type")]


class GraderMessage(ContractModel):
    """One message of a model grader's prompt; its text may hold templates."""

    role: Literal[MESSAGE_ROLES]
    content: Template | ContentPart | list[Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)] | ContentPart]
    type: Literal["message"] | None = None


class JudgeSampling(ContractModel):
    """`sampling_params` of a model grader (OpenAI's names: `max_completions_tokens` is theirs)."""

    max_completions_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=MAX_JUDGE_TEMPERATURE)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    reasoning_effort: None = Field(None, description="no served model reasons: leave it out")


class ScoreModelGrader(ContractModel):
    """The judge `model` answers a number; the reward is it, which must lie in `range`."""

    type: Literal["score_model"]
    name: Name
    model: str = Field(min_length=1)
    input: list[GraderMessage] = Field(min_length=1, max_length=MAX_GRADER_MESSAGES)
    range: tuple[float, float] = DEFAULT_SCORE_RANGE
    sampling_params: JudgeSampling | None = None
    pass_threshold: float | None = None

    @field_validator("range")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not bounds[0] < bounds[1]:
            raise ValueError(f"must be two numbers [low, high] with low < high, got {list(bounds)}")
        return bounds


class LabelModelGrader(ContractModel):
    """The judge `model` answers one of `labels`; the reward is 1.0 for one of `passing_labels`."""

    type: Literal["label_model"]
    name: Name
    model: str = Field(min_length=1)
    input: list[GraderMessage] = Field(min_length=1, max_length=MAX_GRADER_MESSAGES)
    labels: tuple[Annotated[str, Field(min_length=1)], ...] = Field(max_length=MAX_LABELS)
    passing_labels: tuple[Annotated[str, Field(min_length=1)], ...] = Field(max_length=MAX_LABELS)
    sampling_params: JudgeSampling | None = None

    @field_validator("labels", "passing_labels")
    @classmethod
    def _distinct(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        return distinct(labels)

    @model_validator(mode="after")
    def _passing_among_labels(self) -> LabelModelGrader:
        unknown = [label for label in self.passing_labels if label not in self.labels]
        if unknown:
            raise ValueError(f"passing_labels must be a subset of labels; not in labels: {unknown}")
        return self


class PythonGrader(ContractModel):
    """`source` defines `grade(sample, item) -> float`; run only where the operator enables it."""

    type: Literal["python"]
    name: Name
    source: str = Field(min_length=1, max_length=MAX_PYTHON_SOURCE_CHARS)
    image_tag: str | None = Field(None, description="accepted and ignored: one sandbox runs every python grader")
    pass_threshold: float | None = None


SubGrader = Annotated[StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader,
                      Field(discriminator="type")]


class MultiGrader(ContractModel):
    """`calculate_output` combines the named sub-graders' rewards (arithmetic and FORMULA_FUNCTIONS)."""

    type: Literal["multi"]
    name: Name
    graders: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], SubGrader] = Field(
        min_length=1, max_length=MAX_MULTI_GRADERS)
    calculate_output: str = Field(min_length=1, max_length=MAX_FORMULA_CHARS)
    pass_threshold: float | None = None

    @field_validator("graders", mode="before")
    @classmethod
    def _one_grader_keyed_by_name(cls, graders: Any) -> Any:
        if isinstance(graders, dict) and "type" in graders and isinstance(graders.get("name"), str):
            return {graders["name"]: graders}  # the client's type: one grader, not a mapping
        return graders


Grader = Annotated[StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader
                   | MultiGrader, Field(discriminator="type")]
GRADER_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")


class GraderHolder(ContractModel):
    """`{"grader": ...}`: validates one grader with errors located under `grader.`."""

    grader: Grader
