"""Checking and running a grader for `/v1/fine_tuning/alpha/graders/run|validate` (dora_graders does the work).

The API lends the graders what it has: a python sandbox where the operator enabled it
(DORA_PYTHON_GRADER_ENABLED), and a judge for score_model / label_model that runs one non-streaming
chat completion through the inference routing (api/services/inference_routing.py, unchanged) as the
calling tenant, with the tenant's generation slot taken for it. A grader this server cannot run is a
400 naming `grader.<field>`; a template reference the item lacks is a 400 naming `item`.
"""

from __future__ import annotations

from typing import Any

import anyio.from_thread
from fastapi import Request
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from api.authentication import Caller
from api.errors import bad_request
from api.services.completion_output import Shape, collect
from api.services.inference_routing import Inference
from api.services.serving_models import resolve_model
from dora_contract.errors import error_field
from dora_contract.graders import GRADER_TYPES, Grader
from dora_contract.serving import ChatMessage, GenerationRequest, SamplingParams
from dora_graders import GraderSpecError, GradingContext, ItemError, PythonSandbox, check, grade

GRADER = TypeAdapter(Grader)


def parse_grader(data: Any, where: str = "grader") -> Any:
    """The grader spec; a 400 naming `<where>.<field>` (the union's type tags left out of the path)."""
    try:
        return GRADER.validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        loc = [part for part in first["loc"] if part not in GRADER_TYPES]
        field = error_field(first | {"loc": tuple(loc)}) if loc else "type"
        message = first["msg"].removeprefix("Value error, ")
        raise bad_request(f"{where}.{field}: {message}", param=f"{where}.{field}") from None


def grading_context(request: Request, caller: Caller) -> GradingContext:
    settings = request.app.state.settings
    python = PythonSandbox() if settings.python_grader_enabled else None
    return GradingContext(complete=_judge(request, caller), python=python)


def check_grader(grader: Any, context: GradingContext, where: str = "grader") -> None:
    """dora_graders.check as a 400 naming `<where>.<field>` (a python grader where none runs, a bad formula)."""
    try:
        check(grader, context)
    except GraderSpecError as error:
        raise bad_request(f"{where}.{error.field}: {error.message}", param=f"{where}.{error.field}") from None
    except ItemError as error:
        raise bad_request(error.message, param=where) from None


async def run_grader(grader: Any, *, model_sample: str, item: Any, context: GradingContext) -> dict[str, Any]:
    """The GraderRunResponse body; the grading runs in a worker thread (the sandbox and the judge block it)."""
    def run() -> dict[str, Any]:
        try:
            return grade(grader, output_text=model_sample, item=item, context=context).to_openai()
        except ItemError as error:
            raise bad_request(error.message, param="item") from None

    return await run_in_threadpool(run)


async def chat_once(request: Request, caller: Caller, model: str, messages: list[dict[str, str]],
                    sampling: dict[str, Any]) -> str:
    """One non-streaming chat completion of `model` for the caller's tenant, through the inference routing."""
    app = request.app
    settings = app.state.settings

    def resolve():
        with app.state.read_sessionmaker() as session:
            return resolve_model(session, app.state.storage, settings, model=model, tenant_id=caller.tenant_id,
                                 tenant_name=caller.tenant_name)

    served = await run_in_threadpool(resolve)
    max_tokens = min(sampling.get("max_tokens") or settings.max_completion_tokens, settings.max_completion_tokens)
    generation = GenerationRequest(
        base_model=served.base_model, adapter=served.adapter,
        messages=[ChatMessage(role=message["role"], content=message["content"]) for message in messages],
        sampling=SamplingParams(**(sampling | {"max_tokens": max_tokens})))
    inference: Inference = app.state.inference
    inference.take(caller.tenant_id, 1)
    try:
        upstream = await inference.start(generation, route_key=served.route_key)

        async def lost(why: str) -> None:
            await inference.drop(upstream.server, why)

        body = await collect(upstream, Shape(kind="chat", model=model, logprobs=False), n=1, on_lost=lost)
    finally:
        inference.give_back(caller.tenant_id, 1)
    return body["choices"][0]["message"]["content"] or ""


def _judge(request: Request, caller: Caller):
    """`complete` for dora_graders, called from the grading thread: it runs chat_once on the app's loop."""
    def complete(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        return anyio.from_thread.run(chat_once, request, caller, model, messages, sampling)

    return complete
