"""The FastAPI app factory: `create_app(settings)`; `uvicorn --factory api.app:create_app`.

Everything a request needs (settings, session factory, storage, the publish function,
metrics) is built here once and hung on `app.state`; routes get it through api/deps.py.
Startup refuses an un-migrated or outdated database with a message saying to run
`dora migrate`, rather than failing later on a missing column; a database that cannot be reached
at start does not stop the API (it answers 503 and checks again, see api/schema_check.py).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker
from starlette.responses import RedirectResponse

from api.authentication import Authenticate
from api.body_limit import LimitBody
from api.errors import AnswerUnexpected, RejectNulInUrl, install_error_handlers
from api.observability import MetricsMiddleware, Observability
from api.openapi import install_openapi
from api.rate_limit import TokenBuckets
from api.routes import artifacts, checkpoint_files, completions, evals, files, health, jobs, models, webhooks
from api.routes.graders import router as graders_router
from api.schema_check import check_schema_until_reachable
from api.services.inference_routing import Inference
from api.streams import Streams
from api.ui import PREFIX as UI_PREFIX
from api.ui import mount_ui
from api.unavailable import database_error_handler
from store.db import get_engine
from store.queue import publish_eval_run, publish_job
from store.settings import Settings, get_settings
from store.storage import open_storage

log = logging.getLogger("api")


def _publisher(settings: Settings, observability: Observability):
    def publish(job_id: str, gpus: int = 1) -> bool:
        observability.jobs_created.inc()
        published = publish_job(job_id, broker_url=settings.broker_url, gpus=gpus)
        if not published:
            observability.publish_failures.inc()
        return published

    return publish


@asynccontextmanager
async def lifespan(app: FastAPI):
    waiting = None
    if app.state.settings.check_schema_on_startup:
        # SchemaOutdated stops the start ("... run `dora migrate`"); an unreachable database does
        # not: the API serves (503s until it is back) and checks again with backoff, logged.
        waiting = await check_schema_until_reachable(app.state.engine)
    app.state.inference.client()  # the HTTP client to the inference servers, on this loop
    yield
    await app.state.inference.aclose()
    await app.state.streams.aclose()  # the LISTEN connection of event streams
    if waiting is not None:
        waiting.cancel()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="dora-tuner", version="0.1.0", lifespan=lifespan,
                  description="Self-hosted DoRA fine-tuning, shaped like the OpenAI fine-tuning API.")
    app.state.settings = settings
    app.state.engine = get_engine(settings)
    app.state.sessionmaker = sessionmaker(bind=app.state.engine, expire_on_commit=False)
    # single-SELECT reads (api/deps.py read_owned_*): autocommit, so no BEGIN/ROLLBACK round trips
    read_engine = app.state.engine.execution_options(isolation_level="AUTOCOMMIT")
    app.state.read_sessionmaker = sessionmaker(bind=read_engine, expire_on_commit=False)
    app.state.streams = Streams(settings, app.state.read_sessionmaker)  # ?stream=true (api/streams.py)
    app.state.storage = open_storage(settings.storage_url, endpoint_url=settings.s3_endpoint_url,
                                     region=settings.s3_region)
    app.state.observability = Observability()
    app.state.observability.watch_jobs(app.state.sessionmaker)
    app.state.publish = _publisher(settings, app.state.observability)
    app.state.publish_eval_run = lambda run_id: publish_eval_run(run_id, broker_url=settings.broker_url)
    app.state.inference = Inference(settings, app.state.sessionmaker)  # completions (api/routes/completions.py)
    install_error_handlers(app)
    app.add_exception_handler(SQLAlchemyError, database_error_handler)  # unreachable: 503, Retry-After
    for router in (files.router, jobs.router, artifacts.router, models.router, health.router, webhooks.router,
                   completions.router, evals.router, checkpoint_files.router):
        app.include_router(router)
    app.include_router(graders_router)  # /v1/fine_tuning/alpha/graders/run|validate
    mount_ui(app)  # the dashboard at /ui: static files, no key (each API call it makes sends one)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> RedirectResponse:  # a browser opening the bare address lands on the dashboard
        return RedirectResponse(f"{UI_PREFIX}/", status_code=307)

    install_openapi(app)  # errors as answered (400, not 422), with the error body
    # innermost first: body limit, then authentication before it (no body is read for a bad key)
    app.add_middleware(LimitBody, max_json_bytes=settings.max_json_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    rate_limit = (TokenBuckets(per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst)
                  if settings.rate_limit_per_minute else None)
    app.add_middleware(Authenticate, read_sessionmaker=app.state.read_sessionmaker,
                       cache_seconds=settings.auth_cache_seconds, rate_limit=rate_limit)
    app.add_middleware(RejectNulInUrl)
    app.add_middleware(AnswerUnexpected)  # also around our own middleware: a 500 keeps the connection
    app.add_middleware(MetricsMiddleware, observability=app.state.observability)  # outermost: counts all
    return app
