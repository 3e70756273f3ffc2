"""The inference server's HTTP app: `POST GENERATE_PATH` for the API, `GET /healthz` for anyone.

Only the API may generate: every request to GENERATE_PATH must carry `authorization: Bearer
<DORA_INFERENCE_SECRET>` (compared in constant time), else 401; the app refuses to be built without
a secret. A request that cannot run is answered before any stream starts, with its HTTP status
(400, 401, 404, 503) and one NDJSON line, the `GenerationError`; one that runs is a 200 NDJSON
stream of events (serve/generation.py), which may still end with a GenerationError (500) should
the engine fail. Starlette watches for the client's disconnect while streaming (ASGI spec 2.3 under
uvicorn) and cancels the stream, which cancels every choice of that request.

At start (the lifespan) the base models are loaded and their engines started, then the heartbeat
registers this server; at shutdown the row is removed first, then the engines stop.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dora_contract.serving import GENERATE_PATH, SECRET_HEADER, GenerationError, GenerationRequest, encode_event
from serve.adapter_files import AdapterFiles, DeletedAdapterSweep
from serve.generation import (
    INVALID_REQUEST,
    MODEL_NOT_FOUND,
    UNAUTHORIZED,
    RejectedError,
    prepare,
    stream,
)
from serve.models import ServedModel, adapter_cache_dir, load_models, stop_models
from serve.registry import Heartbeat
from serve.settings import ServeSettings, get_serve_settings, require_secret
from store.storage import open_storage

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
MAX_BODY_BYTES = 8 * 1024 * 1024  # a request's messages; far beyond any context this server holds


def error_response(error: GenerationError) -> Response:
    return Response(encode_event(error), status_code=error.status, media_type=NDJSON)


def _validation_param(error: pydantic.ValidationError) -> str | None:
    first = error.errors()[0] if error.errors() else None
    return ".".join(str(part) for part in first["loc"]) if first and first["loc"] else None


def create_app(settings: ServeSettings | None = None, *, models: dict[str, ServedModel] | None = None,
               register: bool = True) -> Starlette:
    """The app; `models` already loaded (tests) or loaded at start from the settings."""
    settings = settings or get_serve_settings()
    expected = require_secret(settings)
    storage = open_storage(settings.storage_url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    adapter_files = AdapterFiles(storage, adapter_cache_dir(settings))
    served: dict[str, ServedModel] = dict(models or {})
    failed: dict[str, str] = {}  # models that could not be loaded, with the reason (shown by /healthz)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = models is None
        if owned:
            served.update(await anyio.to_thread.run_sync(load_models, settings, failed))
        heartbeat = Heartbeat(settings, base_models=list(served)) if register else None
        if heartbeat is not None:
            await anyio.to_thread.run_sync(heartbeat.start)
            log.info("inference server %s at %s serves %s", heartbeat.server_id, settings.advertised_url,
                     ", ".join(served) or "no model")
        sweep = DeletedAdapterSweep(adapter_files)  # local copies of deleted models' adapters go
        sweep.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(sweep.stop)
            if heartbeat is not None:
                await anyio.to_thread.run_sync(heartbeat.stop)
            if owned:
                await anyio.to_thread.run_sync(stop_models, served)

    async def generate(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            return error_response(GenerationError(status=401, code=UNAUTHORIZED, message=(
                f"this inference server answers only the API: `{SECRET_HEADER}: Bearer <DORA_INFERENCE_SECRET>`")))
        body = await _read_body(request)
        if body is None:
            return error_response(GenerationError(status=413, code=INVALID_REQUEST,
                                                  message=f"the body exceeds {MAX_BODY_BYTES} bytes"))
        try:
            generation_request = GenerationRequest.model_validate_json(body)
        except pydantic.ValidationError as error:
            return error_response(GenerationError(status=400, code=INVALID_REQUEST, param=_validation_param(error),
                                                  message=str(error.errors()[0]["msg"]) if error.errors() else
                                                  "not a generation request"))
        if (generation_request.messages is None) == (generation_request.prompt is None):
            return error_response(GenerationError(status=400, code=INVALID_REQUEST, param="messages",
                                                  message="send exactly one of messages and prompt"))
        model = served.get(generation_request.base_model)
        if model is None:
            return error_response(GenerationError(status=404, code=MODEL_NOT_FOUND, param="model", message=(
                f"this server does not serve base model {generation_request.base_model!r} "
                f"(it serves {sorted(served)})")))
        try:
            generation = await anyio.to_thread.run_sync(prepare, model, generation_request, adapter_files)
        except RejectedError as rejected:
            return error_response(rejected.error)
        return StreamingResponse(stream(generation), media_type=NDJSON)

    async def healthz(request: Request) -> Response:
        """Up once every model is loaded (uvicorn answers nothing before); each model's load, which is no
        secret: sequences in flight (running or queued) against the capacity that answers 503 beyond."""
        return JSONResponse({"status": "ok", "models": {name: {"sequences": model.in_flight,
                                                                "capacity": model.capacity}
                                                         for name, model in served.items()},
                             "not_loaded": failed})

    return Starlette(routes=[Route(GENERATE_PATH, generate, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None past MAX_BODY_BYTES (read no further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
