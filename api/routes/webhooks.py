"""`/v1/webhooks`: create (the signing secret is shown once), list, get, delete, deliveries.

Deliveries are signed per Standard Webhooks and sent by `dora webhooks` (worker/webhooks.py);
what an event holds and when it is written: store/webhooks.py.
"""

from __future__ import annotations

import json

from fastapi import APIRouter

from api.deps import OwnedWebhookDep, SessionDep, SettingsDep, TenantDep
from api.present import ts
from api.schemas.common import ListPage
from api.schemas.params import Cursor
from api.schemas.webhooks import (
    WebhookAttemptObject,
    WebhookCreate,
    WebhookCreated,
    WebhookDeleted,
    WebhookDeliveryObject,
    WebhookObject,
)
from api.services import webhooks as webhook_service
from store.models import Webhook, WebhookAttempt, WebhookDelivery

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _webhook_out(row: Webhook) -> WebhookObject:
    return WebhookObject(id=row.id, url=row.url, events=list(row.events or []), created_at=ts(row.created_at))


def _delivery_out(row: WebhookDelivery, attempts: list[WebhookAttempt]) -> WebhookDeliveryObject:
    return WebhookDeliveryObject(
        id=row.id, webhook_id=row.webhook_id, event_id=row.event_id, event_type=row.event_type, status=row.status,
        created_at=ts(row.created_at), next_attempt_at=ts(row.next_attempt_at), finished_at=ts(row.finished_at),
        attempts=[WebhookAttemptObject(attempted_at=ts(a.attempted_at), status_code=a.status_code, error=a.error,
                                       duration_ms=a.duration_ms) for a in attempts],
        payload=json.loads(row.body))


def _page(items: list, rows: list, has_more: bool) -> ListPage:
    return ListPage(data=items, has_more=has_more, first_id=rows[0].id if rows else None,
                    last_id=rows[-1].id if rows else None)


@router.post("", response_model=WebhookCreated)
def create_webhook(body: WebhookCreate, caller: TenantDep, session: SessionDep,
                   settings: SettingsDep) -> WebhookCreated:
    """The URL is stored and shown normalised: an international host name in its IDNA form, the path
    and query percent-encoded (UTF-8); a host that resolves to a non-public address, or a port the
    operator did not allow for it, is a 400 naming `url`."""
    row = webhook_service.create_webhook(session=session, settings=settings, tenant_id=caller.tenant_id,
                                         request=body)
    return WebhookCreated(**_webhook_out(row).model_dump(), secret=row.secret)


@router.get("", response_model=ListPage[WebhookObject])
def list_webhooks(caller: TenantDep, session: SessionDep, after: Cursor = None,
                  limit: int = 20) -> ListPage[WebhookObject]:
    rows, has_more = webhook_service.list_webhooks(session=session, tenant_id=caller.tenant_id, after=after,
                                                   limit=limit)
    return _page([_webhook_out(r) for r in rows], rows, has_more)


@router.get("/{webhook_id}", response_model=WebhookObject)
def get_webhook(webhook: OwnedWebhookDep) -> WebhookObject:
    return _webhook_out(webhook)


@router.delete("/{webhook_id}", response_model=WebhookDeleted)
def delete_webhook(webhook: OwnedWebhookDep, session: SessionDep) -> WebhookDeleted:
    webhook_id = webhook.id
    webhook_service.delete_webhook(session=session, webhook=webhook)
    return WebhookDeleted(id=webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=ListPage[WebhookDeliveryObject])
def list_deliveries(webhook: OwnedWebhookDep, session: SessionDep, after: Cursor = None,
                    limit: int = 20) -> ListPage[WebhookDeliveryObject]:
    """Newest first, each with every attempt so far (time, status code or error, duration)."""
    pairs, has_more = webhook_service.list_deliveries(session=session, webhook=webhook, after=after, limit=limit)
    return _page([_delivery_out(row, attempts) for row, attempts in pairs], [row for row, _ in pairs], has_more)
