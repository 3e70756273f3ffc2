"""Sending a generation to an inference server (`dora serve`): what the API and the worker share.

The API forwards completions (api/services/inference_routing.py, async, streamed to its client);
the eval executor (worker/evals.py) collects whole completions (sync, `InferenceClient`). Both:
- read the live servers of the base (store/inference_servers.py) in a short session of their own,
  closed before anything is sent, and order them by rendezvous hashing on the adapter's key (or the
  base name), so one adapter's requests prefer the server whose cache has it, and a server that
  leaves moves only its own share;
- send `authorization: Bearer <DORA_INFERENCE_SECRET>` (`auth_headers`);
- judge the first event alike (`accept`): `PromptAccepted` goes on; a `GenerationError` 503 (busy)
  or an answer outside the contract (a wrong secret's 401/403, another service on the port: logged)
  skips that server, keeping its row; any other `GenerationError` is `GenerationRefusedError` (its status,
  code and `param`); a server that cannot be connected to (or dies before its first event) has its
  row dropped and the next is tried. None left: `NoInferenceServerError`.
A server lost after it accepted the prompt is `ServerLostError` (its row dropped): nothing is retried
there, since the caller may already have shown part of the answer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr, ValidationError
from sqlalchemy.orm import Session

from dora_contract.serving import (
    GENERATE_PATH,
    SECRET_HEADER,
    ChoiceFinished,
    GenerationDone,
    GenerationError,
    GenerationEvent,
    GenerationRequest,
    PromptAccepted,
    TextDelta,
    decode_event,
)
from store import inference_servers
from store.inference_servers import LiveServer
from store.settings import InferenceSettings

log = logging.getLogger("store.inference_client")

# a server that died or vanished under us: the connection broke, or it never answered
LOST = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError,
        httpx.PoolTimeout)
# refusals that mean "not this server's caller" (the secret), never the request's fault
SECRET_REFUSALS = (401, 403)
BUSY = 503

Sessionmaker = Callable[[], AbstractContextManager[Session]]


# -- what a generation can end with, besides its text ----------------------------------------------
class InferenceError(Exception):
    """A generation that did not run (or did not finish); `code` as OpenAI's error bodies name it."""

    code = "inference_error"


class InferenceNotConfiguredError(InferenceError):
    code = "inference_not_configured"

    def __init__(self) -> None:
        super().__init__("Completions are not configured on this server: the operator must set "
                         "DORA_INFERENCE_SECRET (shared with the inference servers, `dora serve`)")


class NoInferenceServerError(InferenceError):
    code = "no_inference_server"

    def __init__(self, base_model: str, *, busy: bool) -> None:
        self.base_model, self.busy = base_model, busy
        super().__init__(f"No inference server for '{base_model}' is {'busy' if busy else 'running'} now; "
                         "try again shortly")


class FirstEventTimeoutError(InferenceError):
    code = "inference_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The inference server did not start the generation in time ({seconds:g} s); try again "
                         "shortly")


class GenerationRefusedError(InferenceError):
    """The server answered the request with an error: `status` 4xx is the request's fault (`param`
    names the field), any other is the server's."""

    def __init__(self, event: GenerationError) -> None:
        self.status, self.code, self.param = event.status, event.code, event.param
        super().__init__(event.message)

    @property
    def message(self) -> str:
        return str(self)

    @property
    def client_error(self) -> bool:
        return 400 <= self.status < 500


class ServerLostError(InferenceError):
    """The server stopped answering after it accepted the prompt (it died, or the connection broke)."""

    code = "inference_server_lost"


class ServerBusyError(Exception):
    """Skip this server for this request (keep its row)."""


class ServerUnreachableError(Exception):
    """This server cannot be reached: drop its row, try the next."""


# -- routing -------------------------------------------------------------------------------------------
def rendezvous(servers: list[LiveServer], key: str) -> list[LiveServer]:
    """Highest random weight first: each (server, key) pair has its own stable score."""
    def score(server: LiveServer) -> bytes:
        return hashlib.sha256(f"{server.id}\x00{key}".encode()).digest()

    return sorted(servers, key=score, reverse=True)


def auth_headers(secret: SecretStr | None) -> dict[str, str]:
    if secret is None:
        raise InferenceNotConfiguredError()
    return {SECRET_HEADER: f"Bearer {secret.get_secret_value()}"}


def live(sessionmaker: Sessionmaker, settings: InferenceSettings, base_model: str, route_key: str) -> list[LiveServer]:
    """The live servers of `base_model`, best first for `route_key` (a short session of its own)."""
    with sessionmaker() as session:
        servers = inference_servers.live_servers(session, base_model=base_model,
                                                 ttl_seconds=settings.inference_server_ttl_seconds)
    return rendezvous(servers, route_key)


def drop(sessionmaker: Sessionmaker, server: LiveServer, why: str) -> None:
    """Forget a server that could not be reached; never raises (its row ages out by itself anyway)."""
    log.warning("inference server %s (%s) dropped: %s", server.id, server.url, why)
    try:
        with sessionmaker() as session:
            inference_servers.drop(session, server_id=server.id)
            session.commit()
    except Exception as error:  # noqa: BLE001 - the row ages out by itself; the request goes on
        log.warning("could not drop inference server %s: %s", server.id, error)


def generate_url(server: LiveServer) -> str:
    return server.url.rstrip("/") + GENERATE_PATH


def accept(server: LiveServer, status_code: int, event: GenerationEvent | None) -> PromptAccepted:
    """The first event judged: accepted, or ServerBusyError (skip the server) or GenerationRefusedError."""
    if isinstance(event, PromptAccepted) and status_code == 200:
        return event
    if isinstance(event, GenerationError) and event.status not in SECRET_REFUSALS:
        if event.status == BUSY:
            raise ServerBusyError()
        raise GenerationRefusedError(event)
    # a server that does not speak the contract (a wrong secret: 401, another service on the port)
    log.error("inference server %s (%s) answered %s without a generation event; is DORA_INFERENCE_SECRET the "
              "same on the API and the server?", server.id, server.url, status_code)
    raise ServerBusyError()


def lost_why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# -- a whole generation, collected (the worker's, synchronous) -----------------------------------------
@dataclass
class Collected:
    """Every choice of one generation: text[i], finish_reasons[i] ("stop" | "length"), and usage."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    server_id: str = ""
    choice_tokens: list[int] = field(default_factory=list)  # completion tokens per choice

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class InferenceClient:
    """Synchronous generations for callers in threads (the eval executor): one `httpx.Client`,
    thread-safe, with a connection pool as large as the threads that share it."""

    def __init__(self, settings: InferenceSettings, sessionmaker: Sessionmaker, *, connections: int = 8) -> None:
        self.settings, self.sessionmaker = settings, sessionmaker
        timeout = httpx.Timeout(settings.inference_first_event_timeout_seconds,
                                connect=settings.inference_connect_timeout_seconds)
        # no proxy from the environment: servers are on the operator's network
        self.http = httpx.Client(timeout=timeout, trust_env=False,
                                 limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, request: GenerationRequest, *, route_key: str) -> Collected:
        """Send `request` to the best live server and collect every choice; raises InferenceError."""
        headers = auth_headers(self.settings.inference_secret)
        body = request.model_dump(mode="json")
        busy = False
        for server in live(self.sessionmaker, self.settings, request.base_model, route_key):
            try:
                return self._try(server, body, headers, n=request.n)
            except ServerBusyError:
                busy = True
            except ServerUnreachableError as unreachable:
                drop(self.sessionmaker, server, str(unreachable))
        raise NoInferenceServerError(request.base_model, busy=busy)

    def _try(self, server: LiveServer, body: dict, headers: dict[str, str], *, n: int) -> Collected:
        try:
            with self.http.stream("POST", generate_url(server), json=body, headers=headers) as response:
                lines = response.iter_lines()
                try:
                    first = next(_events(lines), None)
                except httpx.ReadTimeout:
                    raise FirstEventTimeoutError(self.settings.inference_first_event_timeout_seconds) from None
                except ValidationError:
                    first = None
                accept(server, response.status_code, first)
                try:
                    return _collect(_events(lines), n=n, server_id=server.id)
                except (*LOST, httpx.ReadTimeout, ValidationError) as error:
                    drop(self.sessionmaker, server, lost_why(error))
                    raise ServerLostError("The inference server stopped while generating; the completion is "
                                     "incomplete") from error
        except LOST as error:  # before the first event
            raise ServerUnreachableError(lost_why(error)) from error


def _events(lines: Iterator[str]) -> Iterator[GenerationEvent]:
    for line in lines:
        if line.strip():
            yield decode_event(line)


def _collect(events: Iterator[GenerationEvent], *, n: int, server_id: str) -> Collected:
    texts: list[list[str]] = [[] for _ in range(n)]
    finish, tokens = ["length"] * n, [0] * n
    for event in events:
        if isinstance(event, TextDelta):
            texts[event.index].append(event.text)
        elif isinstance(event, ChoiceFinished):
            finish[event.index], tokens[event.index] = event.finish_reason, event.completion_tokens
        elif isinstance(event, GenerationError):
            raise GenerationRefusedError(event)
        elif isinstance(event, GenerationDone):
            return Collected(texts=["".join(parts) for parts in texts], finish_reasons=finish,
                             prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                             server_id=server_id, choice_tokens=tokens)
    raise httpx.RemoteProtocolError("the server ended the response before its last event")
