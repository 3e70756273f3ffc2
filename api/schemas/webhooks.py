"""Webhooks: the create request, the webhook (its secret shown once), deliveries and their attempts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import StrictModel

# the event types, as store/webhooks.py EVENT_TYPES spells them (tests/api/test_webhooks.py checks both agree)
EventType = Literal["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
                    "fine_tuning.job.running", "fine_tuning.job.checkpoint.created"]


class WebhookCreate(StrictModel):
    url: str = Field(min_length=1, max_length=2048, description="an http(s) URL on a public address")
    events: list[EventType] = Field(min_length=1, max_length=16, description="the event types to receive")


class WebhookObject(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    created_at: int


class WebhookCreated(WebhookObject):
    secret: str = Field(description="`whsec_<base64>`: verifies the `webhook-signature` header (Standard "
                                    "Webhooks). Shown only in this response")


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    deleted: bool = True


class WebhookAttemptObject(BaseModel):
    attempted_at: int
    status_code: int | None = None  # the receiver's answer
    error: str | None = None  # why there was no answer, or why it did not count (a redirect)
    duration_ms: int


class WebhookDeliveryObject(BaseModel):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_id: str
    event_id: str  # the `webhook-id` header, the same on every attempt
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    created_at: int
    next_attempt_at: int | None = None
    finished_at: int | None = None
    attempts: list[WebhookAttemptObject]
    payload: dict[str, Any]  # the event as sent
