"""The request rate per tenant: a token bucket per tenant, in this API process.

Each tenant's bucket holds up to `rate_limit_burst` requests and refills at
`rate_limit_per_minute` / 60 per second; a request takes one, and one that finds the bucket
empty is answered 429 (OpenAI's rate-limit error: `type` "requests", code
"rate_limit_exceeded") with Retry-After and OpenAI's `x-ratelimit-*` headers. The check runs in
the authentication middleware, once the tenant is known and before any body is read.

Why per process, not shared (e.g. in Redis): what the rate protects is the capacity of the
process that serves the request (its thread pool, its database connections), which is per
process too; a shared bucket would cost a network round trip on every request and make every
request fail (or the limit vanish) while Redis is away. What must hold across all processes is
enforced in SQL instead (queued+running jobs and stored bytes, api/quotas.py). The price: with
P API processes (`dora api --workers P`, or several hosts behind a load balancer) a tenant can
send up to P times the configured rate in all, so set it to the share of one process.

Buckets live in a dict used only from the event loop (no lock). A full bucket is the same as no
bucket, so when the dict grows past `MAX_TENANTS` the full ones are dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse

from api.errors import error_body

MAX_TENANTS = 100_000


@dataclass(frozen=True)
class Refusal:
    wait_seconds: float  # until the bucket holds one request again


class TokenBuckets:
    def __init__(self, *, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.burst, self.clock = per_minute, burst, clock
        self.rate = per_minute / 60.0  # tokens per second
        self.buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, when counted)

    def take(self, tenant_id: str) -> Refusal | None:
        """Take one request from the tenant's bucket: None if allowed, else how long to wait."""
        now = self.clock()
        tokens, at = self.buckets.get(tenant_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self.buckets[tenant_id] = (tokens, now)
            return Refusal(wait_seconds=(1.0 - tokens) / self.rate)
        if tenant_id not in self.buckets and len(self.buckets) >= MAX_TENANTS:
            self._forget_full(now)
        self.buckets[tenant_id] = (tokens - 1.0, now)
        return None

    def _forget_full(self, now: float) -> None:
        full = [t for t, (tokens, at) in self.buckets.items() if tokens + (now - at) * self.rate >= self.burst]
        for tenant_id in full:
            del self.buckets[tenant_id]
        if len(self.buckets) >= MAX_TENANTS:  # all of them busy: start over rather than grow without bound
            self.buckets.clear()

    def refusal_response(self, refusal: Refusal, *, tenant_name: str) -> JSONResponse:
        wait = refusal.wait_seconds
        message = (f"Rate limit reached for tenant '{tenant_name}' on requests per min (RPM): limit "
                   f"{self.per_minute}, bursts of up to {self.burst}. Please try again in {wait:.2f}s.")
        headers = {"Retry-After": str(max(1, math.ceil(wait))),
                   "x-ratelimit-limit-requests": str(self.per_minute),
                   "x-ratelimit-remaining-requests": "0",
                   "x-ratelimit-reset-requests": f"{wait:.2f}s"}
        return JSONResponse(error_body(message, type="requests", code="rate_limit_exceeded"), status_code=429,
                            headers=headers)
