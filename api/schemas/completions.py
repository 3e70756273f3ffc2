"""`/v1/chat/completions` and `/v1/completions`: OpenAI's request and response shapes.

What a request may say is typed here (a wrong type or a bound of OpenAI's own is a 400 naming the
field); the bounds of the operator (DORA_MAX_COMPLETION_TOKENS, DORA_MAX_COMPLETION_CHOICES) and
what we refuse on purpose are checked in api/services/completion_requests.py, which says why.
Fields OpenAI has and that change nothing here (`user`, `metadata`, `service_tier`, ...) are
accepted and ignored; fields that would change the result and that we do not implement
(`tools`, a non-zero `frequency_penalty`, ...) are declared so that they can be refused by name;
any other field is an "Unrecognized request argument" 400 (StrictModel), as OpenAI answers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import StrictModel
from dora_contract.serving import MAX_STOP_SEQUENCES, MAX_TEMPERATURE, MAX_TOP_LOGPROBS

# Longer than any model id: `ft:<base (255)>:<tenant name (128)>:<suffix (64)>:<8>:ckpt-step-<10>`
# is at most 471 characters; bounded so a model id never reaches SQL unbounded. (Not
# api/schemas/params.py MAX_ID_LENGTH: that bounds object ids, and an `ft:` name with a suffix
# is longer than 64.)
MAX_MODEL_ID_LENGTH = 512
MAX_LEGACY_LOGPROBS = 5  # OpenAI's bound for `logprobs` of /v1/completions (the legacy shape)
INT64 = 2**63  # `seed`: what a 64-bit generator seed holds

Stop = str | list[str] | None
Model = Field(min_length=1, max_length=MAX_MODEL_ID_LENGTH,
              description="A base model name, a fine-tuned model (`ft:...`) or a checkpoint (`ft:...:ckpt-step-N`)")


class TextPart(BaseModel):
    """One part of a message's content. Only `text` parts are served; another type (an image) is
    refused by name, so the part takes any other field of OpenAI's part types."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class MessageIn(StrictModel):
    role: str = Field(description="system, developer, user or assistant")
    content: str | list[TextPart] | None = Field(description="text, or a list of text parts (joined)")
    name: str | None = Field(None, description="accepted; the chat template does not use it")


class StreamOptions(StrictModel):
    include_usage: bool = False


class SamplingFields(StrictModel):
    """What both endpoints share."""

    model: str = Model
    max_tokens: int | None = Field(None, ge=1, description="at most DORA_MAX_COMPLETION_TOKENS")
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, description="at most DORA_MAX_COMPLETION_CHOICES")
    stop: Stop = Field(None, description=f"up to {MAX_STOP_SEQUENCES} sequences")
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # accepted, change nothing
    user: str | None = None
    # refused unless neutral (they would change the result)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="only 0 is supported")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="only 0 is supported")
    logit_bias: dict[str, int] | None = Field(None, description="not supported (only empty)")


class ChatCompletionRequest(SamplingFields):
    messages: list[MessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="same as max_tokens")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="needs logprobs: true")
    # accepted, change nothing
    metadata: dict[str, str] | None = None
    store: bool | None = Field(None, description="only false: completions are not stored")
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # refused unless neutral
    tools: list[dict[str, Any]] | None = Field(None, description="not supported")
    tool_choice: str | dict[str, Any] | None = Field(None, description="only none")
    functions: list[dict[str, Any]] | None = Field(None, description="not supported")
    function_call: str | dict[str, Any] | None = Field(None, description="only none")
    response_format: dict[str, Any] | None = Field(None, description="only {\"type\": \"text\"}")
    modalities: list[str] | None = Field(None, description="only [\"text\"]")


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="one text prompt")
    logprobs: int | None = Field(None, ge=0, le=MAX_LEGACY_LOGPROBS, description="top alternatives per token")
    echo: bool | None = Field(None, description="only false")
    best_of: int | None = Field(None, ge=1, description="only 1 (or n)")
    suffix: str | None = Field(None, description="not supported (only empty)")


# -- responses (the OpenAPI document; the routes build them as plain dicts, see completion_output.py)

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str = Field(description="chatcmpl-...")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="the model id as requested")
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: LegacyLogprobs | None = None


class Completion(BaseModel):
    id: str = Field(description="cmpl-...")
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
