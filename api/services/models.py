"""`/v1/models`: the base models the operator allows, and the caller's finished fine-tunes."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.present import ts
from api.schemas.models import ModelObject
from store.job_queries import fine_tuned_models
from store.settings import Settings


def list_models(*, session: Session, settings: Settings, tenant_id: str, tenant_name: str) -> list[ModelObject]:
    base = [ModelObject(id=name, created=0, owned_by="system") for name in sorted(settings.base_models)]
    tuned = [ModelObject(id=job.fine_tuned_model, created=ts(job.finished_at) or 0, owned_by=tenant_name)
             for job in fine_tuned_models(session, tenant_id=tenant_id)]
    return base + tuned
