"""Which inference server gets a generation, and the forwarding of it (`Inference`, one per API process).

Routing: the live servers of the base (store/inference_servers.py, read in a short session of its
own that is closed before anything is sent: a stream holds no database connection) are ordered by
rendezvous hashing on the adapter's key (or the base name), so requests for one adapter prefer the
same server, whose adapter cache then has it, and a server that leaves moves only its own share.
The first is tried; one that cannot be connected to (refused, timed out, died before its first
event) has its row dropped and the next is tried; a server that answers 503 (busy) is skipped,
not dropped. None left: 503 `no_inference_server` with Retry-After.

Forwarding: one `httpx.AsyncClient` per event loop (the lifespan's, made when the app starts),
`authorization: Bearer <DORA_INFERENCE_SECRET>` (unset: 503 saying the operator must set it). The
first event is awaited up to DORA_INFERENCE_FIRST_EVENT_TIMEOUT_SECONDS: `PromptAccepted`, or a
`GenerationError` answered as the same status (400 with its param, 404 model_not_found). Running
generations are bounded per tenant in each API process (DORA_MAX_GENERATIONS_PER_TENANT, each of
`n` choices counting), with the slots streams and downloads use (api/streams.py StreamSlots).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.streams import StreamSlots
from dora_contract.serving import (
    GENERATE_PATH,
    SECRET_HEADER,
    GenerationError,
    GenerationEvent,
    GenerationRequest,
    PromptAccepted,
    decode_event,
)
from store import inference_servers
from store.inference_servers import LiveServer
from store.settings import Settings

log = logging.getLogger("api.inference")

RETRY_AFTER_SECONDS = 5
# a server that died or vanished under us: the connection broke, or it never answered
LOST = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError,
        httpx.PoolTimeout)


def unavailable(message: str, *, code: str = "no_inference_server") -> ApiError:
    return ApiError(503, message, type="server_error", code=code, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def too_many_generations(limit: int) -> ApiError:
    return ApiError(429, f"Too many running completions: this tenant already has {limit} choices generating on this "
                         "server, the limit. Wait for one to finish, then try again.",
                    type="requests", code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def rendezvous(servers: list[LiveServer], key: str) -> list[LiveServer]:
    """Highest random weight first: each (server, key) pair has its own stable score."""
    def score(server: LiveServer) -> bytes:
        return hashlib.sha256(f"{server.id}\x00{key}".encode()).digest()

    return sorted(servers, key=score, reverse=True)


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

    # -- the registry, in short sessions of their own
    def _live(self, base_model: str) -> list[LiveServer]:
        with self.sessionmaker() as session:
            return inference_servers.live_servers(session, base_model=base_model,
                                                  ttl_seconds=self.settings.inference_server_ttl_seconds)

    def _drop(self, server: LiveServer) -> None:
        with self.sessionmaker() as session:
            inference_servers.drop(session, server_id=server.id)
            session.commit()

    async def drop(self, server: LiveServer, why: str) -> None:
        log.warning("inference server %s (%s) dropped: %s", server.id, server.url, why)
        try:
            await run_in_threadpool(self._drop, server)
        except Exception as error:  # noqa: BLE001 - the row ages out by itself; the request goes on
            log.warning("could not drop inference server %s: %s", server.id, error)

    # -- one generation
    async def start(self, request: GenerationRequest, *, route_key: str) -> Upstream:
        secret = self.settings.inference_secret
        if secret is None:
            raise unavailable("Completions are not configured on this server: the operator must set "
                              "DORA_INFERENCE_SECRET (shared with the inference servers, `dora serve`)",
                              code="inference_not_configured")
        servers = rendezvous(await run_in_threadpool(self._live, request.base_model), route_key)
        headers = {SECRET_HEADER: f"Bearer {secret.get_secret_value()}"}
        body = request.model_dump(mode="json")
        busy = False
        for server in servers:
            try:
                upstream = await self._try(server, body, headers)
            except _ServerBusyError:
                busy = True
                continue
            except _ServerLostError as lost:
                await self.drop(server, str(lost))
                continue
            if upstream is not None:
                return upstream
        what = "busy" if busy else "running"
        raise unavailable(f"No inference server for '{request.base_model}' is {what} now; try again shortly")

    async def _try(self, server: LiveServer, body: dict[str, Any], headers: dict[str, str]) -> Upstream | None:
        url = server.url.rstrip("/") + GENERATE_PATH
        client = self.client()
        try:
            response = await client.send(client.build_request("POST", url, json=body, headers=headers), stream=True)
        except LOST as error:
            raise _ServerLostError(f"{type(error).__name__}: {error}") from error
        lines = response.aiter_lines()
        try:
            first = await asyncio.wait_for(_first_line(lines), self.settings.inference_first_event_timeout_seconds)
            event = decode_event(first) if first is not None else None
        except (TimeoutError, httpx.ReadTimeout):
            await response.aclose()
            raise unavailable("The inference server did not start the generation in time "
                              f"({self.settings.inference_first_event_timeout_seconds:g} s); try again shortly",
                              code="inference_timeout") from None
        except LOST as error:
            await response.aclose()
            raise _ServerLostError(f"{type(error).__name__}: {error}") from error
        except ValidationError:
            event = None
        if isinstance(event, PromptAccepted) and response.status_code == 200:
            return Upstream(server=server, accepted=event, response=response, lines=lines)
        await response.aclose()
        if isinstance(event, GenerationError) and event.status not in (401, 403):  # those: the secret (below)
            if event.status == 503:
                raise _ServerBusyError()
            status = event.status if 400 <= event.status < 500 else 503
            raise ApiError(status, event.message, param=event.param, code=event.code,
                           type="invalid_request_error" if status < 500 else "server_error",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)} if status >= 500 else None)
        # a server that does not speak the contract (a wrong secret: 401, another service on the port)
        log.error("inference server %s (%s) answered %s without a generation event; is DORA_INFERENCE_SECRET the "
                  "same on the API and the server?", server.id, server.url, response.status_code)
        raise _ServerBusyError()


class _ServerBusyError(Exception):
    """Skip this server for this request (keep its row)."""


class _ServerLostError(Exception):
    """This server cannot be reached: drop its row."""


async def _first_line(lines: AsyncIterator[str]) -> str | None:
    async for line in lines:
        if line.strip():
            return line
    return None
