"""Webhooks: create (target checked, per-tenant cap), list, delete, and the deliveries with their attempts."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.errors import bad_request
from api.schemas.webhooks import WebhookCreate
from api.services.scope import owned, page
from store.ids import new_id
from store.models import Tenant, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from store.settings import Settings
from store.webhooks import TargetRefused, check_target, new_secret


def create_webhook(*, session: Session, settings: Settings, tenant_id: str, request: WebhookCreate) -> Webhook:
    """Check the target (its host resolves to allowed addresses, on an allowed port), then insert
    its normalised URL (IDNA host, percent-encoded path: store/webhooks.py parse_target) under the
    tenant's row lock so concurrent creates cannot pass the cap together; commits."""
    try:
        url = check_target(request.url, settings).url
    except TargetRefused as refused:
        raise bad_request(f"Invalid 'url': it {refused}", param="url", code="invalid_url") from None
    cap = settings.webhook_max_per_tenant
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    if cap and session.scalar(select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id)) >= cap:
        session.rollback()
        raise bad_request(f"This organization already has {cap} webhooks, the most allowed: delete one first",
                          code="webhook_limit_reached")
    webhook = Webhook(id=new_id("webhook"), tenant_id=tenant_id, url=url,
                      events=list(dict.fromkeys(request.events)), secret=new_secret(), created_at=utcnow())
    session.add(webhook)
    session.commit()
    return webhook


def list_webhooks(*, session: Session, tenant_id: str, after: str | None, limit: int) -> tuple[list[Webhook], bool]:
    return page(session, owned(Webhook, tenant_id=tenant_id), id_column=Webhook.id, after=after, limit=limit)


def delete_webhook(*, session: Session, webhook: Webhook) -> None:
    """The webhook, its deliveries (pending ones too: nothing more is sent) and their attempts; commits."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.webhook_id == webhook.id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id))
    session.execute(delete(Webhook).where(Webhook.id == webhook.id))
    session.commit()


def list_deliveries(*, session: Session, webhook: Webhook, after: str | None,
                    limit: int) -> tuple[list[tuple[WebhookDelivery, list[WebhookAttempt]]], bool]:
    """The webhook's deliveries, newest first, each with its attempts (oldest first)."""
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id)
    rows, has_more = page(session, query, id_column=WebhookDelivery.id, after=after, limit=limit)
    attempts: dict[str, list[WebhookAttempt]] = defaultdict(list)
    if rows:
        found = select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_([row.id for row in rows]))
        for attempt in session.scalars(found.order_by(WebhookAttempt.id)):
            attempts[attempt.delivery_id].append(attempt)
    return [(row, attempts[row.id]) for row in rows], has_more
