"""What the API and an inference server (`dora serve`) say to each other, typed on both sides.

The API resolves the caller's `model` (a base, an `ft:` id, a checkpoint id) to a base model and,
for a fine-tune, where its PEFT adapter lies in the artifact storage, checks the OpenAI request and
forwards a `GenerationRequest`; the server answers with newline-delimited JSON `GenerationEvent`s:
first `PromptAccepted` (or one `GenerationError` when the prompt cannot run), then `TextDelta`s and
one `ChoiceFinished` per choice, then `GenerationDone`. The API turns these into OpenAI's shapes
(streamed chunks or one object); the server knows nothing of OpenAI's response format.

Bounds every request must respect (the API checks them before forwarding, the server again) are
written once here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from dora_contract.base import ContractModel

GENERATE_PATH = "/internal/v1/generate"  # the inference server's one endpoint for the API
SECRET_HEADER = "authorization"  # `Bearer <DORA_INFERENCE_SECRET>`, never a tenant's key
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what a server downloads of an adapter

MAX_TOP_LOGPROBS = 20  # OpenAI's bound for `top_logprobs`
MAX_STOP_SEQUENCES = 4  # OpenAI's bound for `stop`
MAX_TEMPERATURE = 2.0
CHAT_ROLES = ("system", "developer", "user", "assistant")
FINISH_REASONS = ("stop", "length")


class ChatMessage(ContractModel):
    """A chat message with text content (parts already joined by the API)."""

    role: Literal[CHAT_ROLES]
    content: str


class AdapterRef(ContractModel):
    """The adapter to apply on the base: `key` names it in the server's cache (the public model
    id), `storage_prefix` is the folder of its PEFT files in the artifact storage."""

    key: str = Field(min_length=1)
    storage_prefix: str = Field(min_length=1)


class SamplingParams(ContractModel):
    """Per request; the API has applied OpenAI's defaults and the operator's bounds."""

    max_tokens: int | None = Field(None, ge=1, description="None: up to max_tokens_default, within the context")
    max_tokens_default: int | None = Field(None, ge=1, description=(
        "the operator's bound (DORA_MAX_COMPLETION_TOKENS) for a request that sets no max_tokens: the server "
        "generates up to this many or what the context leaves, the smaller; None: what the context leaves"))
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)


class GenerationRequest(ContractModel):
    """Exactly one of `messages` (rendered with the model's chat template) or `prompt` (raw text)."""

    base_model: str = Field(min_length=1)
    adapter: AdapterRef | None = None
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    n: int = Field(1, ge=1)
    sampling: SamplingParams = Field(default_factory=SamplingParams)


class TokenLogprob(ContractModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenInfo(TokenLogprob):
    """A generated token with its logprob and, when asked, the most likely alternatives."""

    top_logprobs: list[TokenLogprob] = Field(default_factory=list)


class PromptAccepted(ContractModel):
    type: Literal["prompt"] = "prompt"
    prompt_tokens: int
    max_tokens: int  # what the server will generate at most per choice (the request's or the context's)


class TextDelta(ContractModel):
    """New text of choice `index`; `tokens` are the tokens it accounts for (with logprobs when asked)."""

    type: Literal["delta"] = "delta"
    index: int
    text: str
    tokens: list[TokenInfo] = Field(default_factory=list)


class ChoiceFinished(ContractModel):
    type: Literal["finish"] = "finish"
    index: int
    finish_reason: Literal[FINISH_REASONS]
    completion_tokens: int


class GenerationDone(ContractModel):
    type: Literal["done"] = "done"
    prompt_tokens: int
    completion_tokens: int


class GenerationError(ContractModel):
    """`status` 400: the request cannot run (`param` names the field); 503: the server cannot take it now."""

    type: Literal["error"] = "error"
    status: int
    code: str
    message: str
    param: str | None = None


GenerationEvent = Annotated[PromptAccepted | TextDelta | ChoiceFinished | GenerationDone | GenerationError,
                            Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[GenerationEvent] = TypeAdapter(GenerationEvent)


def encode_event(event: GenerationEvent) -> bytes:
    """One NDJSON line."""
    return event.model_dump_json().encode() + b"\n"


def decode_event(line: bytes | str) -> GenerationEvent:
    return EVENT_ADAPTER.validate_json(line)
