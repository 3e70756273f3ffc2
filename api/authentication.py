"""Authentication before anything else: the caller is known (or refused) before a body is read.

A plain ASGI middleware, so that
- a request without a valid key is answered 401 before its body is read (FastAPI reads and
  parses a JSON body before it runs any dependency: a 100 MB body without a key used to be
  parsed first);
- the key lookup takes a connection from the pool and gives it back in the same thread-pool
  hop (an autocommit session, one SELECT), so no request holds a connection while it waits on
  anything else: not the thread pool, not the client's body, not the broker;
- a database that is down is a 503 with Retry-After here too.

A successful lookup is cached in this process for `auth_cache_seconds` (keyed by the key's
sha256, never the key), so a polling client costs no key query; the price is that a revoked key
keeps working until its entry expires, at most that many seconds. Unknown keys are never cached.
Routes read the caller from `request.state.caller` (api/deps.py).

Once the tenant is known, its request rate is checked here too (api/rate_limit.py): a tenant
over it gets a 429 before its body is read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from api.errors import error_body
from api.rate_limit import TokenBuckets
from api.unavailable import is_database_unavailable, unavailable_response
from store.tenants import hash_key, tenant_for_key

log = logging.getLogger("api.authentication")

PROTECTED_PREFIX = "/v1/"
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    tenant_name: str


def unauthorized(message: str) -> JSONResponse:
    return JSONResponse(error_body(message, type="invalid_request_error", code="invalid_api_key"),
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


def bearer_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" and key.strip() else None
    return None


def missing_key_message(headers: list[tuple[bytes, bytes]]) -> str:
    """Why `bearer_key` found no key, saying what the header must look like (never echoing a key)."""
    value = next((v.decode("latin-1").strip() for n, v in headers if n == b"authorization"), "")
    if not value:
        return "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return "The Authorization header has 'Bearer' but no key after it: send 'Authorization: Bearer <key>'."
    if not rest.strip():  # one word: most likely the key itself, without the scheme
        return ("The Authorization header must be 'Authorization: Bearer <key>': it holds a value without the "
                "'Bearer ' prefix (the key alone is not enough).")
    shown = f"'{scheme}'" if scheme.isascii() and scheme.isalnum() and len(scheme) <= 20 else "another"
    return f"The Authorization header must be 'Authorization: Bearer <key>', not the {shown} scheme."


class Authenticate:
    """Sets scope["state"]["caller"] for /v1/ requests, or answers 401/503 without calling the app."""

    def __init__(self, app, *, read_sessionmaker, cache_seconds: float, rate_limit: TokenBuckets | None = None) -> None:
        self.app, self.read_sessionmaker, self.cache_seconds = app, read_sessionmaker, cache_seconds
        self.rate_limit = rate_limit  # None: no request rate limit
        self.cache: dict[str, tuple[Caller, float]] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        key = bearer_key(scope["headers"])
        if key is None:
            response = unauthorized(missing_key_message(scope["headers"]))
            return await response(scope, receive, send)
        try:
            caller = await self.lookup(key)
        except SQLAlchemyError as error:
            if not is_database_unavailable(error):
                raise
            log.warning("database unavailable while authenticating: %s", str(error).splitlines()[0][:200])
            return await unavailable_response()(scope, receive, send)
        if caller is None:
            return await unauthorized(f"Incorrect API key provided: {key[:10]}***")(scope, receive, send)
        if self.rate_limit is not None and (refusal := self.rate_limit.take(caller.tenant_id)) is not None:
            response = self.rate_limit.refusal_response(refusal, tenant_name=caller.tenant_name)
            return await response(scope, receive, send)
        scope.setdefault("state", {})["caller"] = caller
        return await self.app(scope, receive, send)

    async def lookup(self, key: str) -> Caller | None:
        digest, now = hash_key(key), time.monotonic()
        cached = self.cache.get(digest)
        if cached and cached[1] > now:
            return cached[0]
        caller = await run_in_threadpool(self._query, key)
        if caller is not None and self.cache_seconds > 0:
            if len(self.cache) >= MAX_CACHED_KEYS:
                self.cache.clear()
            self.cache[digest] = (caller, now + self.cache_seconds)
        return caller

    def _query(self, key: str) -> Caller | None:
        """One SELECT on an autocommit connection, returned to the pool before this returns."""
        with self.read_sessionmaker() as session:
            tenant = tenant_for_key(session, key=key)
            return None if tenant is None else Caller(tenant_id=tenant.id, tenant_name=tenant.name)
