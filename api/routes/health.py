"""Liveness, readiness (database and broker reachable) and Prometheus metrics for the operator.

/metrics shows counts over every tenant (requests by route, jobs by status), so it is not for
tenants: it answers only `Authorization: Bearer <DORA_METRICS_TOKEN>`, compared in constant
time; a tenant's API key is not that token and gets a 401. With no token configured (the
default) it is refused (403) on every address: the secure default, rather than metrics open to
whoever reaches the API's port. `dora up --demo` (`make run`) makes a token for the demo.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import text

from api.authentication import bearer_key
from api.deps import SessionDep, SettingsDep
from api.errors import ApiError
from api.schemas.errors import error_responses
from store.queue import broker_reachable
from store.settings import Settings

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: str  # "ok" or "unreachable: <error type>"
    broker: str  # "ok" or "unreachable"


class PrometheusText(Response):
    media_type = "text/plain"


@router.get("/healthz", response_model=Liveness)
async def healthz() -> dict:
    """Liveness: the process answers. Never touches the database or the thread pool, so it stays
    fast when they are exhausted or hung (readiness is /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "The database or the broker is unreachable"}})
def readyz(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    checks = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - report, don't raise: this endpoint is for probes
        checks["database"] = f"unreachable: {type(error).__name__}"
    checks["broker"] = "ok" if broker_reachable(settings.broker_url, timeout=1.0) else "unreachable"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def check_operator(request: Request, settings: Settings) -> None:
    """The request carries the operator's metrics token, or this raises the 403/401."""
    if settings.metrics_token is None:
        raise ApiError(403, "Metrics are turned off on this server: the operator sets DORA_METRICS_TOKEN and sends "
                       "it as 'Authorization: Bearer <token>'", code="metrics_disabled")
    presented = bearer_key(request.scope["headers"])
    # digests of equal length, compared in constant time: neither the token nor its length leaks
    if presented is None or not hmac.compare_digest(_digest(presented),
                                                    _digest(settings.metrics_token.get_secret_value())):
        raise ApiError(401, "/metrics needs the operator's metrics token (DORA_METRICS_TOKEN) as "
                       "'Authorization: Bearer <token>'; API keys do not open it", code="invalid_metrics_token",
                       headers={"WWW-Authenticate": "Bearer"})


@router.get("/metrics", response_class=PrometheusText, openapi_extra={"security": [{"metricsToken": []}]},
            responses={200: {"description": "Prometheus' text format"}}
            | error_responses(401, 403, d401="Missing or wrong metrics token (an API key is not one)",
                              d403="Metrics are turned off: no DORA_METRICS_TOKEN is configured"))
def metrics(request: Request, settings: SettingsDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    check_operator(request, settings)
    return Response(generate_latest(request.app.state.observability.registry), media_type=CONTENT_TYPE_LATEST)
