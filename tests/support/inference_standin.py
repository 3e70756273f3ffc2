"""A stand-in inference server speaking dora_contract/serving.py, for the API's fast tests.

The real server (`dora serve`) needs a model and torch; the API's side of the wire (routing, the
OpenAI shapes, failover, a server dying mid-stream) is tested against this one, whose answers are
scripted by the last line of the prompt: `bad` (a 400 GenerationError naming `messages`), `busy`
(503), `die` (one delta, then the connection is cut), `slow` (a token every 50 ms until cancelled),
anything else: each choice i says "Hi", " there", "!" (tokens with logprobs). The end to end tests
(tests/e2e/test_serve_openai.py) run the real server.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import contextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from dora_contract.serving import (
    GENERATE_PATH,
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
from store import inference_servers
from store.db import session_scope
from tests.support.services import running_server

SECRET = "standin-inference-secret-0123456789"
TOKENS = ("Hi", " there", "!")
LOGPROB = math.log(0.5)


def _token(text: str, top: int) -> TokenInfo:
    alternatives = [TokenLogprob(token=f"{text}#{k}", logprob=LOGPROB - k - 1) for k in range(top)]
    return TokenInfo(token=text, logprob=LOGPROB, bytes=list(text.encode()), top_logprobs=alternatives)


def standin_app() -> Starlette:
    received: list[GenerationRequest] = []
    cancelled: list[str] = []

    async def generate(request: Request):
        if request.headers.get("authorization") != f"Bearer {SECRET}":
            return JSONResponse({"detail": "no"}, status_code=401)
        body = GenerationRequest.model_validate_json(await request.body())
        received.append(body)
        text = body.prompt if body.prompt is not None else body.messages[-1].content
        command = text.strip().splitlines()[-1] if text.strip() else ""
        if command == "bad":
            return StreamingResponse(iter([encode_event(GenerationError(
                status=400, code="context_length_exceeded", message="The prompt is too long", param="messages"))]))
        if command == "busy":
            return StreamingResponse(iter([encode_event(GenerationError(status=503, code="busy", message="busy"))]))
        sampling = body.sampling
        top = sampling.top_logprobs if sampling.logprobs else 0

        async def events():
            yield encode_event(PromptAccepted(prompt_tokens=len(text.split()), max_tokens=sampling.max_tokens or 2048))
            if command == "die":
                yield encode_event(TextDelta(index=0, text="Hi", tokens=[_token("Hi", top)] if top or
                                             sampling.logprobs else []))
                await asyncio.sleep(0.05)
                raise RuntimeError("the stand-in server dies mid-stream")
            if command == "slow":
                try:
                    for _ in range(400):
                        yield encode_event(TextDelta(index=0, text="x"))
                        await asyncio.sleep(0.05)
                except BaseException:
                    cancelled.append(text)
                    raise
                return
            for i in range(body.n):
                for token in TOKENS:
                    infos = [_token(token, top)] if sampling.logprobs else []
                    yield encode_event(TextDelta(index=i, text=token, tokens=infos))
                yield encode_event(ChoiceFinished(index=i, finish_reason="stop", completion_tokens=len(TOKENS)))
            yield encode_event(GenerationDone(prompt_tokens=len(text.split()), completion_tokens=body.n * len(TOKENS)))

        return StreamingResponse(events(), media_type="application/x-ndjson")

    app = Starlette(routes=[Route(GENERATE_PATH, generate, methods=["POST"])])
    app.state.received, app.state.cancelled = received, cancelled
    return app


def register(settings, *, server_id: str, url: str, base_models: list[str]) -> None:
    with session_scope(settings) as session:
        inference_servers.beat(session, server_id=server_id, url=url, base_models=base_models, max_batch=4,
                               ttl_seconds=settings.inference_server_ttl_seconds)
        session.commit()


def registered(settings) -> list[str]:
    with session_scope(settings) as session:
        return [s.id for s in inference_servers.live_servers(
            session, base_model="tiny-llama", ttl_seconds=settings.inference_server_ttl_seconds)]


@contextmanager
def standin_server():
    """(url, app) of a stand-in server on a free loopback port, in a thread."""
    app = standin_app()
    with running_server(app) as url:
        yield url, app
