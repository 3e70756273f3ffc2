"""`POST /v1/chat/completions` and `POST /v1/completions`, served by the inference servers (`dora serve`).

A request is checked (api/services/completion_requests.py), its model resolved for the caller's
tenant in a read session closed at once (api/services/serving_models.py), the tenant's generation
slots taken, and it is forwarded (api/services/inference_routing.py); the answer is one object or,
with `stream: true`, server-sent chunks (api/services/completion_output.py). No database session
is held while a server generates.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.authentication import Caller
from api.deps import SettingsDep, TenantDep
from api.schemas.completions import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from api.schemas.errors import error_responses
from api.services.completion_output import Shape, collect, stream
from api.services.completion_requests import Checked, check_chat, check_completion
from api.services.inference_routing import Inference
from api.services.serving_models import ServedModel, resolve_model
from api.streams import EventStream
from dora_contract.serving import GenerationRequest

router = APIRouter(prefix="/v1", tags=["completions"])

SSE_EXAMPLE = ('data: {"id": "chatcmpl-...", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": '
               '{"content": "Hi"}, ...}], ...}\n\ndata: [DONE]\n\n')
RESPONSES = {200: {"description": (
    "The completion; with `stream: true`, a `text/event-stream` of chunks (`data: {...}`), then `data: [DONE]`. A "
    "server lost mid-stream ends it with `data: {\"error\": {...}}`."),
    "content": {"text/event-stream": {"schema": {"type": "string"}, "example": SSE_EXAMPLE}}}} | error_responses(
    404, d404="No such model for this tenant (code `model_not_found`)")


def _resolve(request: Request, caller: Caller, model: str) -> ServedModel:
    with request.app.state.read_sessionmaker() as session:
        return resolve_model(session, request.app.state.storage, request.app.state.settings, model=model,
                             tenant_id=caller.tenant_id, tenant_name=caller.tenant_name)


async def _generate(request: Request, caller: Caller, *, model: str, checked: Checked, shape: Shape,
                    send_timeout: float) -> Response:
    served = await run_in_threadpool(_resolve, request, caller, model)
    inference: Inference = request.app.state.inference
    inference.take(caller.tenant_id, checked.n)
    given_back = False

    def give_back() -> None:
        nonlocal given_back
        if not given_back:
            given_back = True
            inference.give_back(caller.tenant_id, checked.n)

    try:
        generation = GenerationRequest(base_model=served.base_model, adapter=served.adapter, messages=checked.messages,
                                       prompt=checked.prompt, n=checked.n, sampling=checked.sampling)
        upstream = await inference.start(generation, route_key=served.route_key)

        async def lost(why: str) -> None:
            await inference.drop(upstream.server, why)

        if checked.stream:
            body = stream(upstream, shape, n=checked.n, include_usage=checked.include_usage, on_lost=lost)
            return EventStream(body, on_close=give_back, send_timeout=send_timeout)
        return JSONResponse(await collect(upstream, shape, n=checked.n, on_lost=lost))
    except BaseException:
        give_back()
        raise
    finally:
        if not checked.stream:
            give_back()


@router.post("/chat/completions", response_model=ChatCompletion, responses=RESPONSES)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, caller: TenantDep,
                                 settings: SettingsDep) -> Response:
    """A chat completion of a base model, a fine-tuned model (`ft:...`) or a checkpoint (`ft:...:ckpt-step-N`)."""
    checked = check_chat(body, settings)
    shape = Shape(kind="chat", model=body.model, logprobs=checked.sampling.logprobs)
    return await _generate(request, caller, model=body.model, checked=checked, shape=shape,
                           send_timeout=settings.stream_send_timeout_seconds)


@router.post("/completions", response_model=Completion, responses=RESPONSES)
async def create_completion(body: CompletionRequest, request: Request, caller: TenantDep,
                            settings: SettingsDep) -> Response:
    """A text completion of one prompt (OpenAI's legacy endpoint), with the same models."""
    checked = check_completion(body, settings)
    shape = Shape(kind="text", model=body.model, logprobs=checked.sampling.logprobs,
                  prompt_chars=len(checked.prompt or ""))
    return await _generate(request, caller, model=body.model, checked=checked, shape=shape,
                           send_timeout=settings.stream_send_timeout_seconds)
