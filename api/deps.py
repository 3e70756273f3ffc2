"""Typed dependencies: the request's settings, DB session, storage, caller and owned objects.

Tenant scoping happens HERE and in services/scope.py only: a route that needs a job takes
`OwnedJobDep`, which loads it for the caller's tenant or answers 404, so no route can forget
the check and another tenant's objects are indistinguishable from missing ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.authentication import Caller
from api.schemas.params import FileIdPath, JobIdPath, WebhookIdPath
from api.services import scope
from store.models import File, Job, Webhook
from store.settings import Settings
from store.storage import Storage

# Dependencies that do no I/O are `async def`: FastAPI runs them inline instead of hopping to
# the thread pool (each hop costs more than the work here, and GET latency is a target).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request. Opening one does no I/O; closing it (returning the connection) may,
    so it goes to the thread pool only when the session did use a connection.

    Scoped to the route function (`SessionDep` below): it is closed, its transaction ended and its
    connection returned, once the route has built its response and BEFORE the response is sent. A
    yield dependency of the default (request) scope lives until the last byte is sent, so a download
    to a client reading 1 KB/s held a pooled connection `idle in transaction` for as long as it
    streamed, and 40 of them took the whole pool. What a response needs after that (a download's
    rows) is read before it returns; its rows are detached, with their columns loaded."""
    # the broker: webhook deliveries written by a transition (a cancel) are published after the commit
    session = request.app.state.sessionmaker(info={"broker_url": request.app.state.settings.broker_url})
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_publisher(request: Request) -> Callable[[str], bool]:
    return request.app.state.publish


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StorageDep = Annotated[Storage, Depends(get_storage)]
PublisherDep = Annotated[Callable[[str, int], bool], Depends(get_publisher)]


async def get_caller(request: Request) -> Caller:
    """The tenant behind `Authorization: Bearer <key>`, found by api/authentication.py before the
    request reached the app (a request without a valid key never gets here)."""
    caller = getattr(request.state, "caller", None)
    if caller is None:  # a /v1/ route is always behind the middleware: this is a wiring bug
        raise RuntimeError("route needs a caller but the request was not authenticated")
    return caller


TenantDep = Annotated[Caller, Depends(get_caller)]


def get_owned_job(job_id: JobIdPath, session: SessionDep, caller: TenantDep) -> Job:
    return scope.get_owned(session, Job, tenant_id=caller.tenant_id, object_id=job_id, what="job")


def get_owned_file(file_id: FileIdPath, session: SessionDep, caller: TenantDep) -> File:
    return scope.get_owned(session, File, tenant_id=caller.tenant_id, object_id=file_id, what="file")


def get_owned_webhook(webhook_id: WebhookIdPath, session: SessionDep, caller: TenantDep) -> Webhook:
    return scope.get_owned(session, Webhook, tenant_id=caller.tenant_id, object_id=webhook_id, what="webhook")


OwnedJobDep = Annotated[Job, Depends(get_owned_job)]
OwnedFileDep = Annotated[File, Depends(get_owned_file)]
OwnedWebhookDep = Annotated[Webhook, Depends(get_owned_webhook)]


def _read_owned(request: Request, model: type, *, tenant_id: str, object_id: str, what: str):
    with request.app.state.read_sessionmaker() as session:
        return scope.get_owned(session, model, tenant_id=tenant_id, object_id=object_id, what=what)


async def read_owned_job(job_id: JobIdPath, request: Request, caller: TenantDep) -> Job:
    """The caller's job for a route that only shows it (the polled GET): loaded on an autocommit
    connection that is returned in the same thread-pool hop, so the request costs one hop and
    one round trip instead of BEGIN, SELECT, ROLLBACK and a second hop. The row is detached:
    routes that change a job take OwnedJobDep."""
    return await run_in_threadpool(_read_owned, request, Job, tenant_id=caller.tenant_id, object_id=job_id,
                                   what="job")


async def read_owned_file(file_id: FileIdPath, request: Request, caller: TenantDep) -> File:
    """The caller's file for a route that only shows it; see read_owned_job."""
    return await run_in_threadpool(_read_owned, request, File, tenant_id=caller.tenant_id, object_id=file_id,
                                   what="file")


JobViewDep = Annotated[Job, Depends(read_owned_job)]
FileViewDep = Annotated[File, Depends(read_owned_file)]


async def download_slot(request: Request, caller: TenantDep) -> AsyncIterator[None]:
    """One of the tenant's download slots in this API process (`max_downloads_per_tenant`), or a 429.
    Request-scoped on purpose: held until the last byte is sent (or the client is gone), then given
    back. It holds no database connection: the routes read what they stream before they return."""
    slots = request.app.state.streams.downloads
    slots.take(caller.tenant_id)
    try:
        yield
    finally:
        slots.give_back(caller.tenant_id)


DownloadSlotDep = Annotated[None, Depends(download_slot)]
