"""One generation request, from the checked `GenerationRequest` to the NDJSON events it streams.

`prepare` (blocking: run it in a worker thread) renders and tokenizes the prompt, checks the
context, reserves room in the model's engine, takes an adapter slot per choice (downloading the
adapter on first use) and submits the `n` choices; what cannot run raises `RejectedError` carrying the
`GenerationError` to answer with. `stream` then turns the engine's events into the wire's:
PromptAccepted, TextDelta / ChoiceFinished per choice as they come, GenerationDone. The engine's
blocking iterators are read by one thread per choice that hands each event to the event loop
(`call_soon_threadsafe`), so the loop never blocks. Whenever the stream ends early (the client went
away, a failure) every choice is cancelled; each choice's slot and reservation are given back by
the engine's `on_done` once its row left the batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dora_contract.serving import (
    FINISH_REASONS,
    ChoiceFinished,
    GenerationDone,
    GenerationError,
    GenerationRequest,
    PromptAccepted,
    TextDelta,
    TokenInfo,
    TokenLogprob,
    encode_event,
)
from dora_core.serving import (
    AdapterFormatError,
    AllSlotsBusyError,
    GenerationHandle,
    GenerationParams,
    RequestError,
    render_chat,
    render_text,
)
from dora_core.serving import Failed as EngineFailed
from dora_core.serving import Finished as EngineFinished
from dora_core.serving import TextDelta as EngineDelta
from dora_core.serving import TokenLogprob as EngineToken
from serve.adapter_files import AdapterFiles, AdapterNotFoundError
from serve.models import ServedModel

# the error codes this server sends (GenerationError.code), for the API to map
MODEL_NOT_FOUND = "model_not_found"  # 404: a base model this server does not hold, or an adapter storage lacks
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # 400: param messages / prompt / max_tokens
INVALID_REQUEST = "invalid_request"  # 400: a body that is no GenerationRequest, or a prompt that cannot render
INVALID_ADAPTER = "invalid_adapter"  # 400, param model: stored adapter files that do not fit this base
SERVER_BUSY = "server_busy"  # 503: every adapter slot in use, or the engine's queue full; retry elsewhere
SERVER_ERROR = "server_error"  # 500: the engine failed mid-generation
UNAUTHORIZED = "unauthorized"  # 401: no or a wrong shared secret


class RejectedError(Exception):
    """The request cannot run here; `error` is the answer."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = GenerationError(status=status, code=code, message=message, param=param)


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice 0 uses the request's seed as given, choice i > 0 a seed derived from (seed, i): every
    choice draws its own numbers, and the same request gives the same choices again."""
    if seed is None or index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1


@dataclass
class Generation:
    """The submitted choices of one request."""

    prompt_tokens: int
    max_tokens: int
    handles: list[GenerationHandle]

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


def prompt_ids(served: ServedModel, request: GenerationRequest) -> list[int]:
    """The prompt's token ids; RejectedError (400) when it cannot render or leaves no room to generate."""
    param = "messages" if request.messages is not None else "prompt"
    try:
        if request.messages is not None:
            ids = render_chat(served.tokenizer, [m.model_dump() for m in request.messages], max_length=sys.maxsize)
        else:
            ids = render_text(served.tokenizer, request.prompt or "", max_length=sys.maxsize)
    except RequestError as error:
        raise RejectedError(400, INVALID_REQUEST, str(error), param=error.param) from None
    if len(ids) >= served.context_length:
        raise RejectedError(400, CONTEXT_LENGTH_EXCEEDED,
                       f"the {param} are {len(ids)} tokens; this model's context holds {served.context_length} "
                       "tokens, prompt and completion together", param=param)
    return ids


def completion_budget(served: ServedModel, prompt_tokens: int, max_tokens: int | None,
                      default: int | None = None) -> int:
    """max_tokens; unset, the operator's default or all the context the prompt leaves, the smaller;
    RejectedError (400, max_tokens) when a given max_tokens does not fit."""
    room = served.context_length - prompt_tokens
    if max_tokens is None:
        return room if default is None else min(room, default)
    if max_tokens > room:
        raise RejectedError(400, CONTEXT_LENGTH_EXCEEDED,
                       f"max_tokens is {max_tokens}, but the prompt's {prompt_tokens} tokens leave {room} of this "
                       f"model's {served.context_length}-token context", param="max_tokens")
    return max_tokens


def prepare(served: ServedModel, request: GenerationRequest, adapter_files: AdapterFiles) -> Generation:
    """Check, reserve and submit every choice (blocking: a first use of an adapter downloads it)."""
    ids = prompt_ids(served, request)
    max_tokens = completion_budget(served, len(ids), request.sampling.max_tokens, request.sampling.max_tokens_default)
    sampling = request.sampling
    try:
        params = [GenerationParams(max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                                   seed=choice_seed(sampling.seed, i), stop=tuple(sampling.stop),
                                   logprobs=sampling.logprobs, top_logprobs=sampling.top_logprobs)
                  for i in range(request.n)]
    except RequestError as error:
        raise RejectedError(400, INVALID_REQUEST, str(error), param=error.param) from None
    if request.n > served.capacity:
        raise RejectedError(400, INVALID_REQUEST, f"n is {request.n}; this server runs at most {served.capacity} "
                                             "sequences of a model at once", param="n")
    if not served.reserve(request.n):
        raise RejectedError(503, SERVER_BUSY, f"this server's queue for {served.name} is full "
                                         f"({served.in_flight} of {served.capacity} sequences); try again")
    submitted: list[GenerationHandle] = []
    slots_taken = 0
    key = None
    try:
        slot = 0
        if request.adapter is not None:
            key = f"{request.adapter.key}@{request.adapter.storage_prefix}"
            adapter = request.adapter
            slot = served.adapters.acquire(key, lambda: adapter_files.local_dir(adapter))
            slots_taken = 1
            for _ in range(request.n - 1):  # one user per choice: each choice releases its own
                served.adapters.acquire(key, lambda: adapter_files.local_dir(adapter))
                slots_taken += 1
        for choice in params:
            handle = served.engine.submit(ids, slot, choice, on_done=_releaser(served, key))
            submitted.append(handle)
    except BaseException as error:
        for handle in submitted:
            handle.cancel()  # their on_done gives their slot and reservation back
        for _ in range(slots_taken - len(submitted)):
            served.adapters.release(key)
        served.release(request.n - len(submitted))
        rejection = _rejection(error, request)
        if rejection is error:
            raise
        raise rejection from None
    return Generation(prompt_tokens=len(ids), max_tokens=max_tokens, handles=submitted)


def _releaser(served: ServedModel, key: str | None):
    def release() -> None:  # on the engine thread, once the choice's row left the batch
        if key is not None:
            served.adapters.release(key)
        served.release(1)

    return release


def _rejection(error: BaseException, request: GenerationRequest) -> BaseException:
    """What an error while submitting is answered with (anything unexpected stays itself: a 500)."""
    key = request.adapter.key if request.adapter else None
    if isinstance(error, AdapterNotFoundError):
        return RejectedError(404, MODEL_NOT_FOUND, f"the model {key!r} has no adapter in storage", param="model")
    if isinstance(error, AllSlotsBusyError):
        return RejectedError(503, SERVER_BUSY, str(error))
    if isinstance(error, AdapterFormatError):  # also AdapterMismatchError: rank above the slots', other layers
        return RejectedError(400, INVALID_ADAPTER, f"the adapter of {key!r} cannot run on this server: {error}",
                        param="model")
    if isinstance(error, RequestError):
        return RejectedError(400, INVALID_REQUEST, str(error), param=error.param)
    return error


def _token(token: EngineToken) -> TokenInfo:
    return TokenInfo(token=token.token, logprob=token.logprob, bytes=list(token.token_bytes),
                     top_logprobs=[TokenLogprob(token=top.token, logprob=top.logprob, bytes=list(top.token_bytes))
                                   for top in token.top_logprobs])


async def stream(generation: Generation) -> AsyncIterator[bytes]:
    """The NDJSON lines of a submitted generation; cancels every choice when it ends early."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def pump(index: int, handle: GenerationHandle) -> None:
        try:
            for event in handle.events():
                loop.call_soon_threadsafe(events.put_nowait, (index, event))
        except RuntimeError:  # the loop closed (shutdown): nobody reads any more
            handle.cancel()

    for index, handle in enumerate(generation.handles):
        threading.Thread(target=pump, args=(index, handle), name=f"serve-choice-{index}", daemon=True).start()
    open_choices = set(range(len(generation.handles)))
    completion_tokens = 0
    try:
        yield encode_event(PromptAccepted(prompt_tokens=generation.prompt_tokens, max_tokens=generation.max_tokens))
        while open_choices:
            index, event = await events.get()
            if isinstance(event, EngineDelta):
                tokens = [_token(t) for t in event.tokens if t.logprob is not None]
                if event.text or tokens:
                    yield encode_event(TextDelta(index=index, text=event.text, tokens=tokens))
            elif isinstance(event, EngineFinished) and event.finish_reason in FINISH_REASONS:
                open_choices.discard(index)
                completion_tokens += event.completion_tokens
                yield encode_event(ChoiceFinished(index=index, finish_reason=event.finish_reason,
                                                  completion_tokens=event.completion_tokens))
            else:  # Failed, or a choice cancelled by the engine's stop
                message = event.message if isinstance(event, EngineFailed) else "the engine stopped"
                yield encode_event(GenerationError(status=500, code=SERVER_ERROR, message=message))
                return
        yield encode_event(GenerationDone(prompt_tokens=generation.prompt_tokens,
                                          completion_tokens=completion_tokens))
    finally:
        if open_choices:
            generation.cancel()
