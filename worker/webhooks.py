"""`dora webhooks`: the process that sends webhook deliveries. Not a GPU worker.

A Celery worker of its own on the `webhooks` queue (a thread pool: `DORA_WEBHOOK_CONCURRENCY`
attempts at once, each waiting on the network, none on a GPU), plus a sweeper thread. The
outbox rows are written by the job transitions themselves (store/webhooks.py) and published
right after their commit; the message is only a wake-up call, SQL holds the truth:

- the task `webhooks.deliver(delivery_id)` claims the delivery with one conditional UPDATE (a
  duplicate message, or one for a delivery not yet due, changes no row and is dropped),
  checks the target again (its host resolved now, every address allowed), POSTs the stored
  body with the Standard Webhooks headers to the address it checked (no redirects followed;
  `DORA_WEBHOOK_TIMEOUT_SECONDS` bounds the whole attempt), and records the attempt: a 2xx
  ends the delivery; anything else schedules the next try by `DORA_WEBHOOK_RETRY_SCHEDULE_SECONDS`
  (5 s, 30 s, 2 min, 10 min, 1 h, 3 h, 6 h, 12 h by default), after which it is failed;
- the sweeper, every `DORA_WEBHOOK_SWEEP_INTERVAL_SECONDS`, publishes the deliveries that are due
  and unpublished: retries whose time has come, deferred ones, and any whose message was lost
  (broker down at commit, Redis restarted, this process killed mid-attempt: a claimed attempt
  that is never recorded is due again after its time limit plus LOCK_MARGIN_SECONDS).

**Fairness.** No tenant can take every thread: before its claim, a delivery whose webhook has
`DORA_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT` attempts running here, or whose tenant has
`DORA_WEBHOOK_MAX_IN_FLIGHT_PER_TENANT`, is deferred (unpublished, no attempt counted, the thread
free at once) for a later sweep, and the sweeper keeps at most the per-endpoint number of one
webhook's deliveries published, so a slow tenant's backlog waits in SQL, not in the queue. A
delivery published long ago and never taken is published again only when the queue is empty
(`queued_messages`): a backlog is never duplicated.

**Circuit breaker.** `DORA_WEBHOOK_BREAKER_FAILURES` failed attempts in a row to one webhook
(counted in this process, `Limits`) open its breaker: its pending deliveries are failed, each
with an attempt row saying why, a warning is logged, and its new events are deferred until
`DORA_WEBHOOK_BREAKER_COOLDOWN_SECONDS` have passed; then they are tried again: a 2xx closes
the breaker, a failure opens it once more. Any exception of an attempt ends it as failed with
its reason (an attempt never leaves its delivery claimed and unrecorded).

Messages are acknowledged on receipt: a lost one costs at most a sweep (or
`DORA_WEBHOOK_REPUBLISH_AFTER_SECONDS` once published, and the queue empty), never a delivery.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from celery import Celery

from store import webhooks as webhook_store
from store.db import session_scope
from store.models import utcnow
from store.queue import WEBHOOK_QUEUE, WEBHOOK_TASK_NAME, publish_delivery
from worker.celery_apps import compact_embedded_broker, run_with_sweeper, thread_pool_app
from worker.settings import WebhookSenderSettings

log = logging.getLogger("worker.webhooks")

USER_AGENT = "dora-tuner-webhooks/0.1"
LOCK_MARGIN_SECONDS = 30.0  # a claimed attempt is due again this long after its time limit
MAX_RESPONSE_BYTES = 64 * 1024  # read (and dropped) of an answer's body
DEFERRED = "deferred"  # what `deliver` returns for a delivery it left for a later sweep


# -- one HTTP attempt -------------------------------------------------------------------------------
class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to `address` (already checked) while the request names the URL's host."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # certificate for the URL's host


def _cut(connection: http.client.HTTPConnection, done: threading.Event) -> None:
    """The attempt's time is up: unblock whatever read or write it is in."""
    done.set()
    if connection.sock is not None:
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def post(target: webhook_store.Target, *, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST to the target's checked addresses (the first that accepts the connection); the status code.

    `timeout` bounds the whole attempt, connecting to the last byte read, so a receiver that
    trickles its answer cannot hold a sender. Redirects are not followed (the caller counts a
    3xx as a failure). Raises OSError (TimeoutError once the time is up) or HTTPException."""
    deadline = time.monotonic() + timeout
    pinned = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    failure: OSError | None = None
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection = pinned(target.host, target.port, address=address, timeout=remaining)
        try:
            connection.connect()
        except OSError as error:  # refused or unreachable: the next address
            failure = error
            connection.close()
            continue
        cut = threading.Event()
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, args=(connection, cut))
        timer.start()
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            return response.status
        except (OSError, http.client.HTTPException) as error:
            if cut.is_set() or isinstance(error, TimeoutError):
                raise TimeoutError(f"no answer within {timeout:g}s") from error
            raise
        finally:
            timer.cancel()
            connection.close()
    if failure is not None:
        raise failure
    raise TimeoutError(f"no connection within {timeout:g}s")


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out" if str(error) in ("", "timed out") else f"timed out ({error})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    if isinstance(error, http.client.HTTPException):
        return f"invalid HTTP answer ({type(error).__name__}: {error})"
    return f"{type(error).__name__}: {error}"


def attempt(work: webhook_store.DeliveryWork, settings: WebhookSenderSettings) -> webhook_store.AttemptResult:
    """One signed POST of the delivery, whatever happens (never raises for the receiver's sake)."""
    attempted_at, started = utcnow(), time.monotonic()
    status, error = None, None
    try:
        timeout = settings.webhook_timeout_seconds  # the whole attempt: the lookup, connecting, the answer
        target = webhook_store.check_target(work.url, settings, resolve_timeout=timeout)  # every address checked
        headers = webhook_store.signed_headers(work.secret, message_id=work.event_id, timestamp=int(time.time()),
                                               body=work.body)
        status = post(target, body=work.body.encode(), headers=headers | {"user-agent": USER_AGENT},
                      timeout=max(0.1, timeout - (time.monotonic() - started)))
        if 300 <= status < 400:
            error = f"HTTP {status}: redirects are not followed"
    except webhook_store.TargetRefused as refused:
        error = f"refused: the URL {refused}"
    except (OSError, http.client.HTTPException) as failure:
        error = _describe(failure)
    except Exception as failure:  # whatever else it is, this attempt failed, and says why
        log.warning("delivery %s: unexpected error while sending", work.delivery_id, exc_info=True)
        status, error = None, f"could not send ({type(failure).__name__}: {failure})"
    duration_ms = int((time.monotonic() - started) * 1000)
    return webhook_store.AttemptResult(attempted_at=attempted_at, duration_ms=duration_ms, status_code=status,
                                       error=error)


class Limits:
    """This process's attempts in flight, per tenant and per webhook, and each webhook's circuit
    breaker (its failed attempts in a row, and until when it is open). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tenants: Counter[str] = Counter()
        self._webhooks: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._open_until: dict[str, datetime] = {}

    def acquire(self, tenant_id: str, webhook_id: str, settings: WebhookSenderSettings) -> bool:
        """A slot for one attempt, or False when the webhook or its tenant has all its slots busy."""
        with self._lock:
            if (self._webhooks[webhook_id] >= settings.webhook_max_in_flight_per_endpoint
                    or self._tenants[tenant_id] >= settings.webhook_max_in_flight_per_tenant):
                return False
            self._webhooks[webhook_id] += 1
            self._tenants[tenant_id] += 1
            return True

    def release(self, tenant_id: str, webhook_id: str) -> None:
        with self._lock:
            self._webhooks[webhook_id] -= 1
            self._tenants[tenant_id] -= 1
            self._webhooks, self._tenants = +self._webhooks, +self._tenants  # drop the zeros

    def open_until(self, webhook_id: str, now: datetime) -> datetime | None:
        """Until when the webhook's breaker holds its events (None: closed, or its cool-down is over)."""
        with self._lock:
            until = self._open_until.get(webhook_id)
            return until if until is not None and until > now else None

    def count(self, webhook_id: str, *, ok: bool, settings: WebhookSenderSettings,
              now: datetime) -> tuple[datetime | None, bool]:
        """Count an attempt's outcome: (until when the breaker is open, None when closed; whether
        this failure opened it). A 2xx closes it; a failure after the cool-down opens it again."""
        with self._lock:
            if ok:
                self._failures.pop(webhook_id, None)
                self._open_until.pop(webhook_id, None)
                return None, False
            self._failures[webhook_id] += 1
            if not settings.webhook_breaker_failures or self._failures[webhook_id] < settings.webhook_breaker_failures:
                return None, False
            until = self._open_until.get(webhook_id)
            if until is not None and until > now:  # already open (an attempt that was in flight)
                return until, False
            self._open_until[webhook_id] = now + timedelta(seconds=settings.webhook_breaker_cooldown_seconds)
            return self._open_until[webhook_id], True


LIMITS = Limits()  # this process's


def deliver(delivery_id: str, settings: WebhookSenderSettings,
            limits: Limits = LIMITS) -> webhook_store.DeliveryStatus | str | None:
    """Claim, attempt and record one delivery; its new status, DEFERRED when its webhook or tenant
    has its attempts in flight here or its breaker is open, or None when it was not due (dropped)."""
    with session_scope(settings) as session:
        owner = webhook_store.delivery_owner(session, delivery_id=delivery_id)
    if owner is None:
        return None
    webhook_id, tenant_id = owner
    held = limits.open_until(webhook_id, utcnow())
    if held is not None or not limits.acquire(tenant_id, webhook_id, settings):
        with session_scope(settings) as session:  # no attempt: for a later sweep, the thread free now
            webhook_store.defer_delivery(session, delivery_id=delivery_id, until=held)
        log.debug("delivery %s (webhook %s) deferred: %s", delivery_id, webhook_id,
                  f"its circuit breaker is open until {held:%H:%M:%S}" if held else "attempts in flight")
        return DEFERRED
    try:
        with session_scope(settings) as session:
            work = webhook_store.claim_delivery(session, delivery_id=delivery_id,
                                                lock_seconds=settings.webhook_timeout_seconds + LOCK_MARGIN_SECONDS)
        if work is None:
            return None
        result = attempt(work, settings)
        with session_scope(settings) as session:
            status = webhook_store.record_attempt(session, delivery_id=delivery_id, result=result,
                                                  schedule=settings.webhook_retry_schedule_seconds)
    finally:
        limits.release(tenant_id, webhook_id)
    outcome = f"HTTP {result.status_code}" if result.status_code is not None else result.error
    log.info("delivery %s (webhook %s, attempt %d): %s -> %s", delivery_id, work.webhook_id, work.attempt, outcome,
             status or "dropped (webhook deleted)")
    if status is not None:
        until, opened = limits.count(webhook_id, ok=result.ok, settings=settings, now=utcnow())
        if until is not None:
            status = _break(webhook_id, tenant_id, until=until, opened=opened, last=outcome, settings=settings,
                            status=status)
    return status


def _break(webhook_id: str, tenant_id: str, *, until: datetime, opened: bool, last: str | None,
           settings: WebhookSenderSettings, status: webhook_store.DeliveryStatus) -> webhook_store.DeliveryStatus:
    """The webhook's breaker is open: fail its pending deliveries (this one too), saying why."""
    failures = settings.webhook_breaker_failures
    reason = (f"circuit breaker open: {failures} attempts in a row to this webhook failed (the last: {last}), so "
              f"its pending deliveries are failed; its new events are tried again from {until:%Y-%m-%dT%H:%M:%SZ}")
    with session_scope(settings) as session:
        failed = webhook_store.fail_pending(session, webhook_id=webhook_id, reason=reason)
    if opened:
        log.warning("webhook %s (tenant %s): circuit breaker open after %d failed attempts in a row (the last: %s); "
                    "%d pending deliveries failed; new events held until %s", webhook_id, tenant_id, failures, last,
                    failed, f"{until:%Y-%m-%dT%H:%M:%SZ}")
    return webhook_store.DeliveryStatus.FAILED if status is webhook_store.DeliveryStatus.PENDING else status


def queued_messages(broker_url: str) -> int | None:
    """Messages waiting in the `webhooks` queue; None when the broker did not answer."""
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=2) as connection:
            return connection.default_channel.queue_declare(queue=WEBHOOK_QUEUE, durable=True,
                                                            auto_delete=False).message_count
    except Exception as error:  # noqa: BLE001 - unknown: lost messages are published again another time
        log.warning("could not count the messages in the %s queue: %s", WEBHOOK_QUEUE, error)
        return None


# -- the sweeper ------------------------------------------------------------------------------------
class Sweeper:
    """Publishes due deliveries nobody published (retries, deferred ones, lost messages), every
    sweep interval; `queued` counts the messages waiting in the queue (the broker's, by default)."""

    def __init__(self, settings: WebhookSenderSettings, publish: Callable[[str], bool] | None = None,
                 queued: Callable[[], int | None] | None = None) -> None:
        self.settings = settings
        self.publish = publish or (lambda delivery_id: publish_delivery(delivery_id, broker_url=settings.broker_url))
        self.queued = queued or (lambda: queued_messages(settings.broker_url))

    def run_once(self) -> list[str]:
        with session_scope(self.settings) as session:
            due = webhook_store.take_due(session, republish_after=self.settings.webhook_republish_after_seconds,
                                         per_webhook=self.settings.webhook_max_in_flight_per_endpoint,
                                         queued=self.queued)
        published = [delivery_id for delivery_id in due if self.publish(delivery_id)]
        compact_embedded_broker(self.settings.broker_url)
        return published


# -- the Celery app -------------------------------------------------------------------------------
def make_celery(settings: WebhookSenderSettings) -> Celery:
    app = thread_pool_app("dora-webhooks", broker_url=settings.broker_url, queue=WEBHOOK_QUEUE,
                          task_name=WEBHOOK_TASK_NAME, concurrency=settings.webhook_concurrency)

    @app.task(name=WEBHOOK_TASK_NAME)
    def deliver_task(delivery_id: str) -> str:
        return str(deliver(delivery_id, settings) or "dropped")

    return app


def run(settings: WebhookSenderSettings, *, hostname: str | None = None) -> int:
    """Consume the `webhooks` queue, with the sweeper beside it, until SIGTERM/Ctrl-C."""
    return run_with_sweeper(make_celery(settings), sweep=Sweeper(settings).run_once,
                            sweep_every_seconds=settings.webhook_sweep_interval_seconds, what="webhook",
                            hostname=hostname or "webhooks@%h", log_level=settings.log_level, log=log)
