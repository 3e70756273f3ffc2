"""Server-sent event streams of a job: `GET .../events?stream=true` and `GET .../metrics?stream=true`.

Each answers `text/event-stream`: one `id:` + `data:` message per event or metric point (`data`
is the list endpoint's item, JobEventOut or MetricPointOut, as one line of JSON), oldest first;
a `: ping` comment after `stream_heartbeat_seconds` without a message; and once the job is
terminal and everything stored was sent, `data: [DONE]` (OpenAI's end of stream), then the
response ends.

Ids and resuming. A metric point's id is its step. An event's id is its row id (the `id` of its
JSON), but streams do not order by it: ids are time-ordered, and two processes' ids are not in
commit order (their clocks differ, and an id is made before its transaction commits), so a
stream resuming "after the newest id it sent" could skip an event that committed later with a
smaller id. Events carry `seq` instead, 1, 2, ... per job, assigned under the job row's lock
(store/jobs.py `_add_events`), which is commit order. A reconnect names the last id it got in
`Last-Event-ID` (what EventSource sends by itself) or, on a first connect from a client that
cannot set headers, in `?after=`; the stream looks up that event's `seq` and goes on after it:
no loss, no duplicate. (Metric points are written in step order by the one attempt holding the
lease; the steps a resumed attempt re-runs replace stored points but are not sent again.)

Waking up. The rows come from SQL, so any API process can serve any stream. What tells a
stream to read again:
- PostgreSQL: LISTEN/NOTIFY. Whoever writes a job's events or metric points (a worker, the
  reconciler, an API process) sends `NOTIFY dora_job_changes, '<job id>'` in that transaction
  (store/notify.py). Chosen over Redis pub/sub because a NOTIFY is transactional: delivered at
  commit, when the rows are visible, never for a rollback, from the store that holds the
  rows, so it needs nothing that a PostgreSQL deployment does not already have, and it cannot
  be lost between a commit and a publish (the broker may also be the embedded SQLite one, or
  down while the database is up). One `Listener` per API process holds one dedicated
  connection (not from the pool) and wakes that process's streams of the notified job. While
  it is not listening (connecting, or reconnecting after an error, with backoff) streams poll;
  when it starts listening it wakes every stream, for what was missed meanwhile.
- SQLite (embedded mode, one host): no notifications; streams re-read every
  `stream_poll_seconds`.
- Either way a stream also re-reads each time it sends a heartbeat, so a write that no NOTIFY
  announced (a listener connection silently cut) is seen within a heartbeat.

Resources. A stream holds no database connection while it waits: each read checks one out of
the pool on the autocommit engine, runs two SELECTs (job status, then rows after the cursor) in
one thread-pool hop and returns it. Waiting is an asyncio wait (no thread), and the response
listens for the client's disconnect and then stops at once. Open streams are bounded per tenant
in each API process (`max_streams_per_tenant`): one more is a 429 (`type` requests, code
`rate_limit_exceeded`, Retry-After), like the request rate (api/rate_limit.py), and per process
for the same reason: what a stream costs is that process's memory and reads. A client that
takes none of the next message within `stream_send_timeout_seconds` (it stopped reading, and
the server's buffers are full) is cut, as a stalled download is (api/downloads.py), and its
slot given back. The same object keeps the per-tenant download slots (`downloads`, api/deps.py).

Positions. `after` and `Last-Event-ID` reach SQL, so they are bounded first: a metric step past
SQL INTEGER (`Last-Event-ID: 2147483648`) is a 400 naming the parameter, as the same value in
`?after=` is; it was a stream cut by PostgreSQL's `NumericValueOutOfRange` after its 200.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.downloads import StalledClientError, send_within, too_many_downloads
from api.errors import ApiError, bad_request
from api.present import event_out, metric_out
from api.schemas.params import MAX_ID_LENGTH, MAX_STEP
from api.unavailable import is_database_unavailable
from store.job_status import TERMINAL
from store.models import Job, JobEvent, MetricPoint
from store.notify import CHANNEL
from store.settings import Settings

log = logging.getLogger("api.streams")

BATCH = 500  # rows per read; a stream that is behind reads again at once
RETRY_AFTER_SECONDS = 5
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
MAX_LISTEN_BACKOFF_SECONDS = 5.0
UNKNOWN = "unknown"  # the status while the database cannot be read

# the OpenAPI document: stream=true answers text/event-stream instead of JSON
STREAM_EXAMPLES = {
    "events": 'id: ftevent-01jb...\ndata: {"id": "ftevent-01jb...", "object": "fine_tuning.job.event", ...}\n\n'
              ": ping\n\ndata: [DONE]\n\n",
    "metrics": 'id: 12\ndata: {"object": "fine_tuning.job.metric", "step": 12, "values": {"loss": 1.9}, ...}\n\n'
               "data: [DONE]\n\n",
}

# one message of the stream (OpenAPI 3.1: a text/event-stream's `schema` describes each message)
SSE_MESSAGE = {"type": "object", "required": ["data"], "properties": {
    "id": {"type": "string", "description": "the event id, or the metric's step"},
    "event": {"type": "string", "enum": ["message"], "description": "never sent: the default type"},
    "data": {"type": "string", "description": "one item as JSON, or [DONE] once the job is terminal"},
    "retry": {"type": "integer"}}}


def stream_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a list route that streams with `stream=true`."""
    return {200: {"description": (
        f"The {what} as JSON; with `stream=true`, a `text/event-stream` of them, oldest first: `id:` "
        f"({'the event id' if what == 'events' else 'the step'}) and `data:` (one item as JSON) per message, "
        "`: ping` comments while quiet, and `data: [DONE]` once the job is terminal and all were sent. Resume "
        "with `Last-Event-ID` (or `after`). Over the tenant's open streams: 429, code `rate_limit_exceeded`."),
        "content": {"text/event-stream": {"schema": SSE_MESSAGE, "example": STREAM_EXAMPLES[what]}}}}


def too_many_streams(limit: int) -> ApiError:
    return ApiError(429, f"Too many open streams: this tenant already has {limit} open on this server, the limit. "
                         "Close one (or poll the list endpoint), then try again.",
                    type="requests", code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def message(event_id: object, data: str) -> bytes:
    return f"id: {event_id}\ndata: {data}\n\n".encode()


class StreamSlots:
    """Open streams (or downloads) per tenant in this process (`limit` 0: no bound); `refuse(limit)`
    is the error one more gets. Taken in a thread-pool thread (the route), given back on the event
    loop (the response): hence the lock."""

    def __init__(self, limit: int, refuse: Callable[[int], ApiError] = too_many_streams) -> None:
        self.limit, self.refuse, self.open, self.lock = limit, refuse, {}, threading.Lock()

    def take(self, tenant_id: str) -> None:
        with self.lock:
            if self.limit and self.open.get(tenant_id, 0) >= self.limit:
                raise self.refuse(self.limit)
            self.open[tenant_id] = self.open.get(tenant_id, 0) + 1

    def give_back(self, tenant_id: str) -> None:
        with self.lock:
            left = self.open.get(tenant_id, 0) - 1
            if left > 0:
                self.open[tenant_id] = left
            else:
                self.open.pop(tenant_id, None)

    def count(self, tenant_id: str | None = None) -> int:
        with self.lock:
            return self.open.get(tenant_id, 0) if tenant_id is not None else sum(self.open.values())


class Listener:
    """One LISTEN connection per API process (started by the first stream), waking the streams
    of each notified job; reconnects with backoff, and wakes every stream whenever it (re)starts
    or stops listening. `live` is True only while LISTEN is in effect.

    It runs on the event loop of the first stream; a stream on another loop (one app served by
    two servers, as tests do) is woken thread-safely, and a closed loop's listener is replaced."""

    def __init__(self, conninfo: str, *, connect_timeout: int = 5) -> None:
        self.conninfo, self.connect_timeout = conninfo, connect_timeout
        self.waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self.live = False
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.loop is None or self.loop.is_closed():
            self.loop, self.live = loop, False
            self.task = loop.create_task(self._listen(), name="dora-streams-listen")
        waiter = (loop, asyncio.Event())
        self.waiters.setdefault(job_id, set()).add(waiter)
        try:
            yield waiter[1]
        finally:
            waiting = self.waiters.get(job_id)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self.waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for loop, woken in list(self.waiters.get(job_id, ())):
            self._set(loop, woken)

    def _wake_all(self) -> None:
        for waiting in list(self.waiters.values()):
            for loop, woken in list(waiting):
                self._set(loop, woken)

    def _set(self, loop: asyncio.AbstractEventLoop, woken: asyncio.Event) -> None:
        if loop is self.loop:
            woken.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(woken.set)

    async def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        delay = 0.1
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=self.connect_timeout,
                    keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
                async with connection:
                    await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self.live, delay = True, 0.1
                    self._wake_all()  # what was written before LISTEN took effect
                    async for notification in connection.notifies():
                        self._wake(notification.payload)
            except (psycopg.Error, OSError) as error:
                log.warning("stream notifications unavailable (streams poll until back): %s",
                            str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
            finally:
                if self.live:
                    self.live = False
                    self._wake_all()  # from now on they poll
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_LISTEN_BACKOFF_SECONDS)

    async def aclose(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with suppress(asyncio.CancelledError, RuntimeError):  # RuntimeError: its loop is gone
                await self.task
        self.task = None


class EventStream(Response):
    """`text/event-stream` from `messages`, stopped when the client disconnects (whatever ASGI
    version the server speaks), calling `on_close` once whatever happened."""

    media_type = "text/event-stream"

    def __init__(self, messages: AsyncIterator[bytes], *, on_close: Callable[[], None],
                 send_timeout: float | None = None) -> None:
        self.messages, self.on_close = messages, on_close  # not `body`: Response's would be measured
        self.send_timeout = send_timeout  # a client that takes no message for this long is cut
        self.status_code, self.background = 200, None
        # no-cache: never stored; X-Accel-Buffering: nginx passes each message on at once
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stalled: list[StalledClientError] = []
        path = scope.get("path", "")
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                    try:
                        async for chunk in self.messages:
                            await send_within(send, {"type": "http.response.body", "body": chunk, "more_body": True},
                                              seconds=self.send_timeout, path=path)
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except StalledClientError as error:
                        stalled.append(error)  # raised below, out of the task group (not as a group)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()
            if stalled:
                raise stalled[0]  # the server closes the connection
        finally:
            with suppress(Exception):
                await self.messages.aclose()  # type: ignore[attr-defined]
            self.on_close()


class Streams:
    """What one API process's streams share: settings, reads, the slots and the wake-ups."""

    def __init__(self, settings: Settings, read_sessionmaker) -> None:
        self.settings, self.read_sessionmaker = settings, read_sessionmaker
        self.slots = StreamSlots(settings.max_streams_per_tenant)
        # downloads (api/deps.py download_slot): bounded the same way, with their own limit
        self.downloads = StreamSlots(settings.max_downloads_per_tenant, refuse=too_many_downloads)
        url = make_url(settings.database_url)
        self.listener = None
        if url.get_backend_name() == "postgresql":
            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.listener = Listener(conninfo, connect_timeout=settings.db_connect_timeout_seconds)

    async def aclose(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()

    # -- the two streams: called by the routes (in a thread-pool thread), before any byte is sent
    def events(self, *, job: Job, tenant_id: str, after: str | None, param: str) -> EventStream:
        """The job's events after the event `after` (an id of this job's), or from its first."""
        seq = 0
        if after and len(after) > MAX_ID_LENGTH:  # the header says so too; `after` may come from elsewhere
            raise bad_request(f"'{after[:64]}...' is not an event id (longer than {MAX_ID_LENGTH} characters)",
                              param=param, code="invalid_value")
        if after:
            with self.read_sessionmaker() as session:
                found = session.scalar(select(JobEvent.seq).where(JobEvent.job_id == job.id, JobEvent.id == after))
            if found is None:
                raise bad_request(f"No event '{after[:64]}' in job {job.id} to resume after", param=param,
                                  code="invalid_value")
            seq = found
        return self._open(job_id=job.id, tenant_id=tenant_id, cursor=seq, read=self._read_events)

    def metrics(self, *, job: Job, tenant_id: str, after: str | int | None, param: str) -> EventStream:
        """The job's metric points after step `after`, or from its first."""
        step = -1
        if after is not None and after != "":
            try:
                step = int(after)
            except ValueError:
                raise bad_request(f"'{str(after)[:64]}' is not a step to resume after (an integer)", param=param,
                                  code="invalid_value") from None
            if not 0 <= step <= MAX_STEP:
                raise bad_request(f"'{str(after)[:64]}' is not a step to resume after (0 to {MAX_STEP})", param=param,
                                  code="invalid_value")
        return self._open(job_id=job.id, tenant_id=tenant_id, cursor=step, read=self._read_metrics)

    def _open(self, *, job_id: str, tenant_id: str, cursor: int, read) -> EventStream:
        self.slots.take(tenant_id)
        return EventStream(self._run(job_id=job_id, cursor=cursor, read=read),
                           on_close=lambda: self.slots.give_back(tenant_id),
                           send_timeout=self.settings.stream_send_timeout_seconds)

    # -- reads: one thread-pool hop each, the connection back in the pool before it returns
    def _read_events(self, job_id: str, after_seq: int) -> tuple[str | None, list[bytes], int]:
        with self.read_sessionmaker() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))  # first: see _run
            query = (select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
                     .order_by(JobEvent.seq).limit(BATCH))
            rows = list(session.scalars(query))
        return status, [message(r.id, event_out(r).model_dump_json()) for r in rows], \
            rows[-1].seq if rows else after_seq

    def _read_metrics(self, job_id: str, after_step: int) -> tuple[str | None, list[bytes], int]:
        with self.read_sessionmaker() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            query = (select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > after_step)
                     .order_by(MetricPoint.step).limit(BATCH))
            rows = list(session.scalars(query))
        return status, [message(r.step, metric_out(r).model_dump_json()) for r in rows], \
            rows[-1].step if rows else after_step

    @contextmanager
    def _wakeups(self, job_id: str) -> Iterator[asyncio.Event]:
        if self.listener is None:
            yield asyncio.Event()  # never set: poll
            return
        with self.listener.watch(job_id) as woken:
            yield woken

    async def _run(self, *, job_id: str, cursor: int, read) -> AsyncIterator[bytes]:
        heartbeat, poll = self.settings.stream_heartbeat_seconds, self.settings.stream_poll_seconds
        # watching starts before the first read, so a change committed after a read wakes the wait after it
        with self._wakeups(job_id) as woken:
            sent = time.monotonic()
            while True:
                woken.clear()
                # the status is read before the rows: when it is terminal, the rows read next
                # include every event the job's last transaction wrote
                try:
                    status, messages, cursor = await run_in_threadpool(read, job_id, cursor)
                except SQLAlchemyError as error:
                    if not is_database_unavailable(error):
                        raise
                    # keep the client (heartbeats go on) and read again at the next poll
                    log.warning("stream of job %s: database unavailable: %s", job_id, str(error).splitlines()[0][:200])
                    status, messages = UNKNOWN, []
                if status is None:  # the job is gone
                    return
                if messages:
                    yield b"".join(messages)
                    sent = time.monotonic()
                    if len(messages) == BATCH:
                        continue  # more are waiting
                if status in TERMINAL:
                    yield DONE
                    return
                live = self.listener is not None and self.listener.live and status is not UNKNOWN
                timeout = sent + heartbeat - time.monotonic()
                if not live:
                    timeout = min(timeout, poll)
                if timeout > 0:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), timeout)
                if time.monotonic() - sent >= heartbeat:
                    yield PING
                    sent = time.monotonic()
