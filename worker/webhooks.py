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
  and unpublished: retries whose time has come, and any whose message was lost (broker down at
  commit, Redis restarted, this process killed mid-attempt: a claimed attempt that is never
  recorded is due again after its time limit plus LOCK_MARGIN_SECONDS).

Messages are acknowledged on receipt: a lost one costs at most a sweep (or
`DORA_WEBHOOK_REPUBLISH_AFTER_SECONDS` once published), never a delivery.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

from celery import Celery
from kombu import Queue

from store import webhooks as webhook_store
from store.broker import BrokerKind, broker_kind
from store.db import session_scope
from store.models import utcnow
from store.queue import WEBHOOK_QUEUE, WEBHOOK_TASK_NAME, publish_delivery
from worker.settings import WebhookSenderSettings

log = logging.getLogger("worker.webhooks")

USER_AGENT = "dora-tuner-webhooks/0.1"
LOCK_MARGIN_SECONDS = 30.0  # a claimed attempt is due again this long after its time limit
MAX_RESPONSE_BYTES = 64 * 1024  # read (and dropped) of an answer's body


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
    duration_ms = int((time.monotonic() - started) * 1000)
    return webhook_store.AttemptResult(attempted_at=attempted_at, duration_ms=duration_ms, status_code=status,
                                       error=error)


def deliver(delivery_id: str, settings: WebhookSenderSettings) -> webhook_store.DeliveryStatus | None:
    """Claim, attempt and record one delivery; its new status, or None when it was not due (dropped)."""
    with session_scope(settings) as session:
        work = webhook_store.claim_delivery(session, delivery_id=delivery_id,
                                            lock_seconds=settings.webhook_timeout_seconds + LOCK_MARGIN_SECONDS)
    if work is None:
        return None
    result = attempt(work, settings)
    with session_scope(settings) as session:
        status = webhook_store.record_attempt(session, delivery_id=delivery_id, result=result,
                                              schedule=settings.webhook_retry_schedule_seconds)
    outcome = f"HTTP {result.status_code}" if result.status_code is not None else result.error
    log.info("delivery %s (webhook %s, attempt %d): %s -> %s", delivery_id, work.webhook_id, work.attempt, outcome,
             status or "dropped (webhook deleted)")
    return status


# -- the sweeper ------------------------------------------------------------------------------------
class Sweeper:
    """Publishes due deliveries nobody published (retries, lost messages), every sweep interval."""

    def __init__(self, settings: WebhookSenderSettings, publish: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.publish = publish or (lambda delivery_id: publish_delivery(delivery_id, broker_url=settings.broker_url))

    def run_once(self) -> list[str]:
        with session_scope(self.settings) as session:
            due = webhook_store.take_due(session, republish_after=self.settings.webhook_republish_after_seconds)
        published = [delivery_id for delivery_id in due if self.publish(delivery_id)]
        if broker_kind(self.settings.broker_url) is BrokerKind.SQLALCHEMY:
            from worker.reconciler import compact_sql_broker

            compact_sql_broker(self.settings.broker_url)  # also when no GPU worker (and its reconciler) runs
        return published

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as error:  # noqa: BLE001 - a database blip: try again next sweep
                log.warning("webhook sweep failed: %s", error)
            stop.wait(self.settings.webhook_sweep_interval_seconds)


# -- the Celery app -------------------------------------------------------------------------------
def make_celery(settings: WebhookSenderSettings) -> Celery:
    app = Celery("dora-webhooks", broker=settings.broker_url, set_as_current=False)
    embedded = broker_kind(settings.broker_url) is BrokerKind.SQLALCHEMY
    app.conf.update(
        task_default_queue=WEBHOOK_QUEUE,
        task_queues=(Queue(WEBHOOK_QUEUE, routing_key=WEBHOOK_QUEUE),),
        task_routes={WEBHOOK_TASK_NAME: {"queue": WEBHOOK_QUEUE}},
        task_acks_late=False,  # SQL holds the delivery: a message lost with this process is swept again
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.webhook_concurrency,
        worker_pool="threads",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, never fatal
        worker_enable_remote_control=not embedded,  # the SQL transport has no fanout exchanges
        worker_send_task_events=False,
    )

    @app.task(name=WEBHOOK_TASK_NAME)
    def deliver_task(delivery_id: str) -> str:
        return str(deliver(delivery_id, settings) or "dropped")

    return app


def run(settings: WebhookSenderSettings, *, hostname: str | None = None) -> int:
    """Consume the `webhooks` queue, with the sweeper beside it, until SIGTERM/Ctrl-C."""
    stop = threading.Event()
    sweeper = threading.Thread(target=Sweeper(settings).run_forever, args=(stop,), name="webhook-sweeper",
                               daemon=True)
    sweeper.start()
    argv = ["worker", "--queues", WEBHOOK_QUEUE, "--pool", "threads", "--concurrency",
            str(settings.webhook_concurrency), "--loglevel", settings.log_level.upper(), "--hostname",
            hostname or "webhooks@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    try:
        make_celery(settings).worker_main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        stop.set()
        sweeper.join(timeout=10)
    return 0
