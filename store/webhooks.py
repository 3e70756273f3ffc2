"""Signed webhooks: the outbox of job events, Standard Webhooks signatures, and allowed targets.

**Outbox.** The job transitions in store/jobs.py (claim -> running; finish, cancel and settle ->
succeeded, failed or cancelled; add_checkpoint) call `job_event` or `checkpoint_event` before
they commit: one `webhook_deliveries` row per webhook of the job's tenant subscribed to that
event type, in the SAME transaction as the transition. The event exists exactly when the
transition does, so it is delivered at least once. Right after the commit, the new deliveries
are published to the `webhooks` queue (when the session knows the broker:
`session.info["broker_url"]`, set by store/db.py and api/deps.py), and marked published in the
row itself (cleared again when the broker refused it); the sweeper of `dora webhooks` publishes
whatever is due and was not (broker down, a crash, a retry's time, a delivery deferred).

**Delivery.** `claim_delivery` takes a due delivery with one conditional UPDATE that moves its
`next_attempt_at` past the attempt's time limit (a duplicate message, or a second sender, then
changes no row and drops it); the sender (worker/webhooks.py) POSTs the stored body with the
Standard Webhooks headers, and `record_attempt` stores the attempt and ends the delivery (2xx:
delivered; the retry schedule used up: failed) or schedules the next try. A deleted webhook's
deliveries are deleted with it, so nothing more is sent to it. A delivery the sender cannot take
now (its webhook or tenant has its attempts in flight, or its circuit breaker is open) is
deferred (`defer_delivery`), and a breaker that opens fails the webhook's pending deliveries
(`fail_pending`).

**Publishing, fairly.** `take_due` publishes what is due and unpublished, at most
`per_webhook` of one webhook published at once (what is queued and in flight counts), so one
tenant's backlog never fills the queue; a claim that was never recorded (a sender killed
mid-attempt) is published again when its lock expires; a delivery published long ago and still
not taken is published again only when the queue is empty, since until then its message is
waiting its turn, not lost.

**Targets.** `parse_target` normalises a URL (an international host name to its IDNA form, the
path and query percent-encoded as UTF-8), and the API stores it so. `check_target` refuses a URL
whose host resolves to any address that is not public (`is_public`: private, loopback,
link-local, shared, reserved, multicast, site-local, IPv4-compatible, local-use NAT64, or an IPv6
address whose embedded IPv4 one (mapped, NAT64, 6to4, Teredo) is not public) unless the operator
allows it: `DORA_WEBHOOK_ALLOW_PRIVATE` (everything) or `DORA_WEBHOOK_ALLOWED_CIDRS` (networks
with ports: `127.0.0.1/32:8719`; a bare network opens ports 80 and 443 only). The API checks at
creation, the sender before every attempt, and the sender connects to the very addresses it
checked (no second lookup, no redirects).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as ResolveTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import idna
from sqlalchemy import ColumnElement, and_, event, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from store.ids import new_id
from store.job_status import JobStatus
from store.models import Checkpoint, Job, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from store.queue import publish_delivery
from store.settings import Network, WebhookTargetSettings, parse_allowed_target

log = logging.getLogger(__name__)

JOB_EVENTS = {
    JobStatus.RUNNING: "fine_tuning.job.running",
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
}
CHECKPOINT_CREATED = "fine_tuning.job.checkpoint.created"
EVENT_TYPES = (*JOB_EVENTS.values(), CHECKPOINT_CREATED)

MAX_URL_LENGTH = 2048  # the column's size, once normalised
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# session.info keys: the broker to publish to after a commit, and what this transaction wrote
BROKER_URL = "broker_url"
_WRITTEN = "webhook_deliveries_written"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # every attempt of the retry schedule failed


class TargetRefused(ValueError):  # noqa: N818 - read as a sentence: the target was refused
    """The URL cannot be a webhook target (its message says why, naming the address)."""


# -- signatures (https://www.standardwebhooks.com) ---------------------------------------------
def new_secret() -> str:
    """A signing secret in Standard Webhooks' form, `whsec_<base64 of 32 random bytes>`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, *, message_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the secret's decoded bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, *, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id=message_id, timestamp=timestamp, body=body),
            "content-type": "application/json"}


# -- targets -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    url: str
    scheme: str  # http | https
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...] = ()  # every address the host resolved to, all of them allowed


Resolver = Callable[[str, int], Iterable[str]]
# getaddrinfo cannot be given a timeout: lookups run here, and whoever asked waits a bounded time
_lookups = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


# what RFC 3986 lets a path (and a query) hold as is; quote() keeps letters, digits and -._~ too, and
# `%` so that a URL already percent-encoded stays as it is
_PATH_SAFE = "/%:@!$&'()*+,;="
_QUERY_SAFE = _PATH_SAFE + "?"


def parse_target(url: str) -> Target:
    """The parts of an http(s) URL, normalised: `url` with an international host name in its IDNA
    (punycode) form and the path, query and fragment percent-encoded as UTF-8 (urllib's quote),
    so what is sent is ASCII; TargetRefused says what is wrong with it."""
    if any(ord(c) <= 0x20 or c == "\x7f" for c in url):
        raise TargetRefused("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise TargetRefused(f"is not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TargetRefused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise TargetRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("must not carry credentials (user:password@)")
    host = parts.hostname
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as error:
            raise TargetRefused(f"has a host name that is not a valid international domain name ({error})") from None
    path, query = quote(parts.path, safe=_PATH_SAFE), quote(parts.query, safe=_QUERY_SAFE)
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    normalised = urlunsplit((scheme, netloc, path, query, quote(parts.fragment, safe=_QUERY_SAFE)))
    if len(normalised) > MAX_URL_LENGTH:
        raise TargetRefused(f"is longer than {MAX_URL_LENGTH} characters once percent-encoded")
    return Target(url=normalised, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80),
                  path=(path or "/") + (f"?{query}" if query else ""))


_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated (RFC 4291); also :: and ::1
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known NAT64 prefix: the last 32 bits are the IPv4 address
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): a translator of this site


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is public: global by Python's `ipaddress` and in no special class
    (private, reserved, multicast, loopback, link-local, unspecified, site-local), and for IPv6,
    not IPv4-compatible nor local-use NAT64, with any IPv4 address it stands for or tunnels to
    (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d, 6to4, Teredo) public too."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:  # the very IPv4 address, reached over IPv4
            return is_public(ip.ipv4_mapped)
        if ip in _NAT64:  # the IPv4 address a NAT64 gateway reaches
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _IPV4_COMPATIBLE or ip in _NAT64_LOCAL or ip.is_site_local:
            return False
        embedded = ([ip.sixtofour] if ip.sixtofour else []) + list(ip.teredo or ())
        if not all(is_public(inner) for inner in embedded):
            return False
    return ip.is_global and not (ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_loopback
                                 or ip.is_link_local or ip.is_unspecified)


@lru_cache(maxsize=32)
def _allowed_targets(entries: tuple[str, ...]) -> tuple[tuple[Network, tuple[tuple[int, int], ...]], ...]:
    return tuple(parse_allowed_target(entry) for entry in entries)


def address_allowed(address: str, port: int, settings: WebhookTargetSettings) -> bool:
    """A public address (any port), or one of the operator's networks on one of its ports
    (DORA_WEBHOOK_ALLOWED_CIDRS); everything when webhook_allow_private."""
    if settings.webhook_allow_private:
        return True
    ip = ipaddress.ip_address(address)
    if is_public(ip):
        return True
    candidates = [ip] + ([ip.ipv4_mapped] if ip.version == 6 and ip.ipv4_mapped is not None else [])
    entries = _allowed_targets(tuple(str(entry) for entry in settings.webhook_allowed_cidrs))
    return any(candidate.version == network.version and candidate in network and any(
        low <= port <= high for low, high in ranges) for network, ranges in entries for candidate in candidates)


def check_target(url: str, settings: WebhookTargetSettings, *, resolve: Resolver = _resolve,
                 resolve_timeout: float = 5.0) -> Target:
    """The target with the addresses its host resolves to (within `resolve_timeout` seconds),
    every one of them allowed; else TargetRefused."""
    target = parse_target(url)
    try:
        addresses = list(_lookups.submit(resolve, target.host, target.port).result(timeout=resolve_timeout))
    except ResolveTimeout:
        raise TargetRefused(f"has a host that did not resolve within {resolve_timeout:g}s: {target.host}") from None
    except (OSError, UnicodeError) as error:
        raise TargetRefused(f"has a host that does not resolve: {target.host} ({error})") from None
    if not addresses:
        raise TargetRefused(f"has a host that does not resolve: {target.host}")
    for address in addresses:
        if not address_allowed(address, target.port, settings):
            shown = address if address == target.host else f"{address} ({target.host})"
            raise TargetRefused(f"points at {shown} port {target.port}, which is not a public address; the operator "
                                "can allow it (DORA_WEBHOOK_ALLOW_PRIVATE, or DORA_WEBHOOK_ALLOWED_CIDRS with the "
                                "port)")
    return Target(url=target.url, scheme=target.scheme, host=target.host, port=target.port, path=target.path,
                  addresses=tuple(addresses))


# -- the outbox --------------------------------------------------------------------------------
def event_body(*, event_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> str:
    """The event as sent (and signed), in OpenAI's shape."""
    payload = {"object": "event", "id": event_id, "type": event_type, "created_at": int(created_at.timestamp()),
               "data": data}
    return json.dumps(payload, separators=(",", ":"))


def job_event(session: Session, job: Job, *, now: datetime | None = None) -> list[str]:
    """The job's new status as an event for the tenant's webhooks, in the caller's transaction.

    Called by store/jobs.py right after a transition, before its commit; `job` is the row as
    the transition left it. Returns the ids of the deliveries written (none for a status with
    no event, or no webhook subscribed)."""
    event_type = JOB_EVENTS.get(job.status)
    if event_type is None:
        return []
    error = {key: job.error.get(key) for key in ("code", "message", "param")} if job.error else None
    data = {"id": job.id, "object": "fine_tuning.job", "status": str(job.status),
            "fine_tuned_model": job.fine_tuned_model, "error": error}
    return _write(session, tenant_id=job.tenant_id, job_id=job.id, event_type=event_type, data=data, now=now)


def checkpoint_event(session: Session, checkpoint: Checkpoint, *, now: datetime | None = None) -> list[str]:
    """`fine_tuning.job.checkpoint.created` for a checkpoint just registered, in the caller's transaction."""
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == checkpoint.job_id))
    data = {"id": checkpoint.job_id, "object": "fine_tuning.job.checkpoint", "checkpoint_id": checkpoint.id,
            "step": checkpoint.step, "metrics": checkpoint.metrics or {}}
    return _write(session, tenant_id=tenant_id, job_id=checkpoint.job_id, event_type=CHECKPOINT_CREATED, data=data,
                  now=now)


def _write(session: Session, *, tenant_id: str | None, job_id: str, event_type: str, data: dict[str, Any],
           now: datetime | None) -> list[str]:
    hooks = session.execute(select(Webhook.id, Webhook.events).where(Webhook.tenant_id == tenant_id)).all()
    subscribed = [webhook_id for webhook_id, events in hooks if event_type in (events or ())]
    if not subscribed:
        return []
    now = now or utcnow()
    event_id = new_id("webhook_event")
    body = event_body(event_id=event_id, event_type=event_type, created_at=now, data=data)
    published = now if session.info.get(BROKER_URL) else None  # published right after the commit
    rows = [WebhookDelivery(id=new_id("webhook_delivery"), webhook_id=webhook_id, event_id=event_id,
                            event_type=event_type, job_id=job_id, body=body, status=DeliveryStatus.PENDING,
                            attempts=0, next_attempt_at=now, published_at=published, created_at=now)
            for webhook_id in subscribed]
    session.add_all(rows)
    session.info.setdefault(_WRITTEN, []).extend(row.id for row in rows)
    return [row.id for row in rows]


@event.listens_for(Session, "after_commit")
def _publish_written(session: Session) -> None:
    """The deliveries this transaction wrote are committed: wake the sender now (when the session
    knows the broker; otherwise, or when the broker fails, the sweeper publishes them)."""
    written, broker_url = session.info.pop(_WRITTEN, None), session.info.get(BROKER_URL)
    if not written or not broker_url:
        return
    refused = [delivery_id for delivery_id in written if not publish_delivery(delivery_id, broker_url=broker_url)]
    if refused:  # not published after all: for the next sweep to publish
        try:
            with session.get_bind().begin() as connection:
                connection.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(refused),
                                                                 WebhookDelivery.attempts == 0)
                                   .values(published_at=None))
        except Exception as error:  # noqa: BLE001 - then they are published once the republish delay is over
            log.warning("could not mark %d webhook deliveries unpublished: %s", len(refused), error)


@event.listens_for(Session, "after_rollback")
def _forget_written(session: Session) -> None:
    session.info.pop(_WRITTEN, None)


# -- delivery (used by worker/webhooks.py) --------------------------------------------------------
@dataclass(frozen=True)
class DeliveryWork:
    """What one attempt needs: where, the secret, the exact body, the message id."""

    delivery_id: str
    webhook_id: str
    event_id: str
    url: str
    secret: str
    body: str
    attempt: int  # the number of this attempt, from 1


@dataclass(frozen=True)
class AttemptResult:
    attempted_at: datetime
    duration_ms: int
    status_code: int | None = None  # the receiver's answer, when there was one
    error: str | None = None  # why there was no (acceptable) answer

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def _due(now: datetime) -> ColumnElement[bool]:
    return and_(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now)


def delivery_owner(session: Session, *, delivery_id: str, now: datetime | None = None) -> tuple[str, str] | None:
    """(webhook id, tenant id) of a delivery that is due; None when it is not (a duplicate message,
    already delivered or failed, or gone). Read before a claim, to check the sender's limits."""
    row = session.execute(select(Webhook.id, Webhook.tenant_id).join(WebhookDelivery, WebhookDelivery.webhook_id ==
                                                                     Webhook.id)
                          .where(WebhookDelivery.id == delivery_id, _due(now or utcnow()))).first()
    session.commit()
    return (row[0], row[1]) if row is not None else None


def defer_delivery(session: Session, *, delivery_id: str, until: datetime | None = None,
                   now: datetime | None = None) -> bool:
    """Not now, without an attempt (commits): unpublished, for a later sweep to publish once due
    (at `until` when given, e.g. when an open circuit breaker closes). False: it was not due."""
    values: dict[str, Any] = {"published_at": None} | ({"next_attempt_at": until} if until is not None else {})
    deferred = session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, _due(now or utcnow()))
                               .values(**values), execution_options={"synchronize_session": False}).rowcount
    session.commit()
    return deferred == 1


def fail_pending(session: Session, *, webhook_id: str, reason: str, now: datetime | None = None) -> int:
    """Fail every pending delivery of the webhook, each with an attempt row saying why (its circuit
    breaker opened); commits. How many were failed."""
    now = now or utcnow()
    failed = list(session.scalars(
        update(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id,
                                      WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.FAILED, finished_at=now, next_attempt_at=None).returning(WebhookDelivery.id),
        execution_options={"synchronize_session": False}))
    if failed:
        session.execute(insert(WebhookAttempt), [
            {"id": new_id("webhook_attempt"), "delivery_id": delivery_id, "attempted_at": now, "status_code": None,
             "error": reason[:2000], "duration_ms": 0} for delivery_id in failed])
    session.commit()
    return len(failed)


def claim_delivery(session: Session, *, delivery_id: str, lock_seconds: float,
                   now: datetime | None = None) -> DeliveryWork | None:
    """Take a due delivery for one attempt (one conditional UPDATE; commits). None: not due (a
    duplicate message, another sender has it, already delivered or failed) or gone (its webhook
    was deleted). It is due again after `lock_seconds` if this attempt is never recorded."""
    now = now or utcnow()
    claim = (update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, _due(now))
             .values(next_attempt_at=now + timedelta(seconds=lock_seconds)))
    if session.execute(claim, execution_options={"synchronize_session": False}).rowcount != 1:
        session.rollback()
        return None
    row = session.execute(
        select(WebhookDelivery.event_id, WebhookDelivery.body, WebhookDelivery.attempts, Webhook.id, Webhook.url,
               Webhook.secret)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id).where(WebhookDelivery.id == delivery_id)).first()
    session.commit()
    if row is None:
        return None
    event_id, body, attempts, webhook_id, url, secret = row
    return DeliveryWork(delivery_id=delivery_id, webhook_id=webhook_id, event_id=event_id, url=url, secret=secret,
                        body=body, attempt=attempts + 1)


def record_attempt(session: Session, *, delivery_id: str, result: AttemptResult, schedule: list[float],
                   now: datetime | None = None) -> DeliveryStatus | None:
    """Store the attempt and what follows (commits): delivered on a 2xx; otherwise the next try
    `schedule[n - 1]` seconds after the n-th failed attempt, or failed once the schedule is used
    up. Returns the delivery's status, or None when it is gone (its webhook was deleted). A
    delivery ended meanwhile (its webhook's circuit breaker failed it) keeps its status; the
    attempt is stored all the same."""
    now = now or utcnow()
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if delivery is None:
        session.rollback()
        return None
    delivery.attempts += 1
    if delivery.status != DeliveryStatus.PENDING:  # ended meanwhile (a breaker): it stays so
        pass
    elif result.ok:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.DELIVERED, now, None
    elif delivery.attempts <= len(schedule):
        delivery.next_attempt_at = now + timedelta(seconds=float(schedule[delivery.attempts - 1]))
        delivery.published_at = None  # for the sweeper to publish when it is due
    else:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.FAILED, now, None
    session.add(WebhookAttempt(id=new_id("webhook_attempt"), delivery_id=delivery_id,
                               attempted_at=result.attempted_at, status_code=result.status_code,
                               error=result.error[:2000] if result.error else None, duration_ms=result.duration_ms))
    try:
        session.commit()
    except (IntegrityError, StaleDataError):  # the webhook was deleted meanwhile, its deliveries with it
        session.rollback()
        return None
    return DeliveryStatus(delivery.status)


def take_due(session: Session, *, republish_after: float, per_webhook: int | None = None,
             queued: Callable[[], int | None] = lambda: 0, now: datetime | None = None,
             limit: int = 500) -> list[str]:
    """Due deliveries to publish (commits), each marked published in one conditional UPDATE, so
    several sweepers publish it once:

    - unpublished ones (new, retries, deferred), oldest first, but no more than `per_webhook`
      of one webhook published at once (those already published and not done count);
    - claimed ones whose attempt was never recorded (a sender killed mid-attempt): the claim
      moved `next_attempt_at` past `published_at`, and that lock has expired;
    - published more than `republish_after` seconds ago and never taken: the message was lost,
      but only when `queued()` (messages waiting in the `webhooks` queue) says 0; while there is
      a backlog the message is waiting its turn, and publishing it again would only grow it."""
    now = now or utcnow()
    d, due = WebhookDelivery, _due(now)
    fresh = d.published_at.is_(None)
    claimed = and_(d.published_at.is_not(None), d.published_at < d.next_attempt_at)
    stale = and_(d.published_at.is_not(None), d.published_at >= d.next_attempt_at,
                 d.published_at < now - timedelta(seconds=republish_after))
    again = [claimed]
    if session.scalar(select(d.id).where(due, stale).limit(1)) is not None and queued() == 0:
        again.append(stale)
    candidates = list(session.scalars(select(d.id).where(due, or_(*again)).order_by(d.next_attempt_at).limit(limit)))
    if per_webhook:
        busy = (select(d.webhook_id, func.count().label("busy"))
                .where(d.status == DeliveryStatus.PENDING, d.published_at.is_not(None)).group_by(d.webhook_id)
                .subquery())
        ranked = (select(d.id, d.webhook_id, d.next_attempt_at,
                         func.row_number().over(partition_by=d.webhook_id, order_by=(d.next_attempt_at, d.id))
                         .label("rank")).where(due, fresh).subquery())
        query = (select(ranked.c.id).outerjoin(busy, busy.c.webhook_id == ranked.c.webhook_id)
                 .where(ranked.c.rank + func.coalesce(busy.c.busy, 0) <= per_webhook)
                 .order_by(ranked.c.next_attempt_at))
    else:
        query = select(d.id).where(due, fresh).order_by(d.next_attempt_at)
    candidates += list(session.scalars(query.limit(max(0, limit - len(candidates)))))
    if not candidates:
        session.commit()
        return []
    mark = (update(d).where(d.id.in_(candidates), due, or_(fresh, *again))
            .values(published_at=now).returning(d.id))
    taken = list(session.execute(mark, execution_options={"synchronize_session": False}).scalars())
    session.commit()
    return taken
