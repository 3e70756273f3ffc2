"""Which inference server gets a generation, and the forwarding of it (`Inference`, one per API process).

Routing and the first event's judgement are shared with the worker (store/inference_client.py):
the live servers of the base, read in a short session closed before anything is sent (a stream
holds no database connection), ordered by rendezvous hashing on the adapter's key (or the base
name). The first is tried; one that cannot be connected to (refused, timed out, died before its
first event) has its row dropped and the next is tried; a server that answers 503 (busy) is
skipped, not dropped. None left: 503 `no_inference_server` with Retry-After.

Forwarding: one `httpx.AsyncClient` per event loop (the lifespan's, made when the app starts),
`authorization: Bearer <DORA_INFERENCE_SECRET>` (unset: 503 saying the operator must set it). The
first event is awaited up to DORA_INFERENCE_FIRST_EVENT_TIMEOUT_SECONDS: `PromptAccepted`, or a
`GenerationError` answered as the same status (400 with its param, 404 model_not_found). Running
generations are bounded per tenant in each API process (DORA_MAX_GENERATIONS_PER_TENANT, each of
`n` choices counting), with the slots streams and downloads use (api/streams.py StreamSlots).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.streams import StreamSlots
from dora_contract.serving import GenerationEvent, GenerationRequest, PromptAccepted, decode_event
from store import inference_client
from store.inference_client import (
    LOST,
    FirstEventTimeoutError,
    GenerationRefusedError,
    InferenceError,
    NoInferenceServerError,
    ServerBusyError,
    ServerUnreachableError,
    accept,
    auth_headers,
    generate_url,
    lost_why,
    rendezvous,
)
from store.inference_servers import LiveServer
from store.settings import Settings

__all__ = ["Inference", "Upstream", "UpstreamLostError", "rendezvous", "unavailable"]

log = logging.getLogger("api.inference")

RETRY_AFTER_SECONDS = 5


def unavailable(message: str, *, code: str = "no_inference_server") -> ApiError:
    return ApiError(503, message, type="server_error", code=code, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def too_many_generations(limit: int) -> ApiError:
    return ApiError(429, f"Too many running completions: this tenant already has {limit} choices generating on this "
                         "server, the limit. Wait for one to finish, then try again.",
                    type="requests", code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def api_error(error: InferenceError) -> ApiError:
    """A generation that did not start, as the API answers it: the server's 4xx as its own (with
    `param`), anything else a 503 with Retry-After."""
    if isinstance(error, GenerationRefusedError) and error.client_error:
        return ApiError(error.status, error.message, param=error.param, code=error.code)
    if isinstance(error, GenerationRefusedError):
        return ApiError(503, error.message, param=error.param, code=error.code, type="server_error",
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return unavailable(str(error), code=error.code)


class UpstreamLostError(Exception):
    """The server stopped answering mid-generation (it died, or the connection broke)."""


@dataclass
class Upstream:
    """A generation a server accepted: its first event, the rest to read, and how to end it."""

    server: LiveServer
    accepted: PromptAccepted
    response: httpx.Response
    lines: AsyncIterator[str]

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """The events after `accepted`; UpstreamLostError when the server goes away first."""
        try:
            async for line in self.lines:
                if line.strip():
                    yield decode_event(line)
        except (*LOST, httpx.ReadTimeout, ValidationError) as error:
            raise UpstreamLostError(f"{type(error).__name__}: {error}") from error
        raise UpstreamLostError("the server ended the response before its last event")

    async def aclose(self) -> None:
        """Closing the response closes the connection, which tells the server to cancel the generation."""
        await self.response.aclose()


class Inference:
    def __init__(self, settings: Settings, sessionmaker) -> None:
        self.settings, self.sessionmaker = settings, sessionmaker
        self.slots = StreamSlots(settings.max_generations_per_tenant, refuse=too_many_generations)
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    # -- the tenant's running generations: each of `n` choices takes a slot
    def take(self, tenant_id: str, n: int) -> None:
        taken = 0
        try:
            for _ in range(n):
                self.slots.take(tenant_id)
                taken += 1
        except ApiError:
            self.give_back(tenant_id, taken)
            raise

    def give_back(self, tenant_id: str, n: int) -> None:
        for _ in range(n):
            self.slots.give_back(tenant_id)

    # -- the HTTP client: one per event loop (an app served by two servers in tests has two loops)
    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            s = self.settings
            timeout = httpx.Timeout(s.inference_first_event_timeout_seconds,
                                    connect=s.inference_connect_timeout_seconds)
            # no proxy from the environment: servers are on the operator's network
            client = self._clients[loop] = httpx.AsyncClient(timeout=timeout, trust_env=False,
                                                             limits=httpx.Limits(max_keepalive_connections=32))
        return client

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- the registry, in short sessions of their own (store/inference_client.py)
    async def drop(self, server: LiveServer, why: str) -> None:
        await run_in_threadpool(inference_client.drop, self.sessionmaker, server, why)

    # -- one generation
    async def start(self, request: GenerationRequest, *, route_key: str) -> Upstream:
        try:
            headers = auth_headers(self.settings.inference_secret)
            servers = await run_in_threadpool(inference_client.live, self.sessionmaker, self.settings,
                                              request.base_model, route_key)
            body = request.model_dump(mode="json")
            busy = False
            for server in servers:
                try:
                    return await self._try(server, body, headers)
                except ServerBusyError:
                    busy = True
                except ServerUnreachableError as lost:
                    await self.drop(server, str(lost))
            raise NoInferenceServerError(request.base_model, busy=busy)
        except InferenceError as error:
            raise api_error(error) from None

    async def _try(self, server: LiveServer, body: dict[str, Any], headers: dict[str, str]) -> Upstream:
        client = self.client()
        try:
            response = await client.send(client.build_request("POST", generate_url(server), json=body,
                                                              headers=headers), stream=True)
        except LOST as error:
            raise ServerUnreachableError(lost_why(error)) from error
        lines = response.aiter_lines()
        try:
            first = await asyncio.wait_for(_first_line(lines), self.settings.inference_first_event_timeout_seconds)
            event = decode_event(first) if first is not None else None
        except (TimeoutError, httpx.ReadTimeout):
            await response.aclose()
            raise FirstEventTimeoutError(self.settings.inference_first_event_timeout_seconds) from None
        except LOST as error:
            await response.aclose()
            raise ServerUnreachableError(lost_why(error)) from error
        except ValidationError:
            event = None
        try:
            accepted = accept(server, response.status_code, event)
        except BaseException:
            await response.aclose()
            raise
        return Upstream(server=server, accepted=accepted, response=response, lines=lines)


async def _first_line(lines: AsyncIterator[str]) -> str | None:
    async for line in lines:
        if line.strip():
            return line
    return None
