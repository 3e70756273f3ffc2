"""A server's generation events (dora_contract/serving.py) in OpenAI's shapes: streamed or collected.

Chat (`chat.completion`, `chat.completion.chunk`) and legacy text (`text_completion`) differ only
in how a choice's new text and its logprobs are written, so one `Shape` says which and the stream
and the collector are shared. Streaming follows OpenAI: the first chunk gives each choice
`delta.role`, then content deltas (with logprobs when asked), one chunk per choice with its
`finish_reason`, then, with `stream_options.include_usage`, a chunk with no choices and the usage
(every chunk before it has `usage: null`), then `data: [DONE]`. A server lost mid-stream (or an
error event after the prompt was accepted) ends the stream with `data: {"error": {...}}` and no
[DONE]: the openai client raises APIError on it.

Legacy logprobs: `text_offset` of a token is the prompt's length plus the characters of the
tokens before it (OpenAI counts from the start of prompt + completion).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from api.errors import ApiError, error_body
from api.services.inference_routing import RETRY_AFTER_SECONDS, Upstream, UpstreamLostError, unavailable
from dora_contract.serving import ChoiceFinished, GenerationDone, GenerationError, TextDelta, TokenInfo

DONE = b"data: [DONE]\n\n"


@dataclass
class Shape:
    kind: Literal["chat", "text"]
    model: str  # as the client named it
    logprobs: bool
    prompt_chars: int = 0  # text: where legacy text offsets start
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"

    def head(self, choices: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                "system_fingerprint": None, **more}


def _legacy_logprobs(tokens: list[TokenInfo], start: int) -> dict[str, Any]:
    offsets, at = [], start
    for token in tokens:
        offsets.append(at)
        at += len(token.token)
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{top.token: top.logprob for top in t.top_logprobs} for t in tokens],
            "text_offset": offsets}


def _chat_logprobs(tokens: list[TokenInfo]) -> dict[str, Any]:
    return {"content": [t.model_dump(mode="json") for t in tokens], "refusal": None}


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _event_error(event: GenerationError) -> ApiError:
    if 400 <= event.status < 500:
        return ApiError(event.status, event.message, param=event.param, code=event.code)
    return unavailable(event.message, code=event.code)


async def stream(upstream: Upstream, shape: Shape, *, n: int, include_usage: bool,
                 on_lost: Callable[[str], Awaitable[None]]) -> AsyncIterator[bytes]:
    """The SSE body. Closing it (the client left: api/streams.py EventStream) closes the upstream
    response, which tells the server to cancel the generation."""
    usage: dict[str, Any] = {"usage": None} if include_usage else {}
    offsets = [shape.prompt_chars] * n
    try:
        if shape.kind == "chat":
            yield _sse(shape.head([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None} for i in range(n)], object="chat.completion.chunk",
                                  **usage))
        async for event in upstream.events():
            if isinstance(event, TextDelta):
                yield _sse(shape.head([_delta(shape, event, offsets)], **_chunk(shape), **usage))
            elif isinstance(event, ChoiceFinished):
                end = ({"delta": {}} if shape.kind == "chat" else {"text": ""})
                yield _sse(shape.head([{"index": event.index, **end, "logprobs": None,
                                        "finish_reason": event.finish_reason}], **_chunk(shape), **usage))
            elif isinstance(event, GenerationDone):
                if include_usage:
                    yield _sse(shape.head([], **_chunk(shape),
                                          usage=_usage(event.prompt_tokens, event.completion_tokens)))
                yield DONE
                return
            elif isinstance(event, GenerationError):
                yield _sse(error_body(event.message, type="server_error", code=event.code, param=event.param))
                return
    except UpstreamLostError as lost:
        await on_lost(str(lost))
        yield _sse(error_body("The inference server stopped while generating; the completion is incomplete. "
                              "Try again.", type="server_error", code="inference_server_lost"))
    finally:
        await upstream.aclose()


def _chunk(shape: Shape) -> dict[str, Any]:
    return {"object": "chat.completion.chunk"} if shape.kind == "chat" else {}


def _delta(shape: Shape, event: TextDelta, offsets: list[int]) -> dict[str, Any]:
    if shape.kind == "chat":
        logprobs = _chat_logprobs(event.tokens) if shape.logprobs else None
        return {"index": event.index, "delta": {"content": event.text}, "logprobs": logprobs, "finish_reason": None}
    logprobs = _legacy_logprobs(event.tokens, offsets[event.index]) if shape.logprobs else None
    offsets[event.index] += sum(len(t.token) for t in event.tokens)
    return {"index": event.index, "text": event.text, "logprobs": logprobs, "finish_reason": None}


async def collect(upstream: Upstream, shape: Shape, *, n: int,
                  on_lost: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
    """The whole completion as one object; a server lost before the end is a 503 (nothing was sent)."""
    texts, tokens = [[] for _ in range(n)], [[] for _ in range(n)]
    finish: list[str] = ["length"] * n
    try:
        async for event in upstream.events():
            if isinstance(event, TextDelta):
                texts[event.index].append(event.text)
                tokens[event.index].extend(event.tokens)
            elif isinstance(event, ChoiceFinished):
                finish[event.index] = event.finish_reason
            elif isinstance(event, GenerationError):
                raise _event_error(event)
            elif isinstance(event, GenerationDone):
                return shape.head([_choice(shape, i, "".join(texts[i]), tokens[i], finish[i]) for i in range(n)],
                                  usage=_usage(event.prompt_tokens, event.completion_tokens))
    except UpstreamLostError as lost:
        await on_lost(str(lost))
        raise ApiError(503, "The inference server stopped while generating; try again.", type="server_error",
                       code="inference_server_lost", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    finally:
        await upstream.aclose()
    raise AssertionError("unreachable: events() ends with GenerationDone or UpstreamLostError")


def _choice(shape: Shape, index: int, text: str, tokens: list[TokenInfo], finish_reason: str) -> dict[str, Any]:
    if shape.kind == "chat":
        logprobs = _chat_logprobs(tokens) if shape.logprobs else None
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": logprobs, "finish_reason": finish_reason}
    logprobs = _legacy_logprobs(tokens, shape.prompt_chars) if shape.logprobs else None
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
