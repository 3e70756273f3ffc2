"""`/v1/models`: list, retrieve, and delete a fine-tuned model (api/services/models.py)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from api.errors import not_found
from api.schemas.errors import error_responses
from api.schemas.models import ModelDeleted, ModelList, ModelObject
from api.services.models import delete_model, list_models

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def get_models(caller: TenantDep, session: SessionDep, settings: SettingsDep) -> ModelList:
    return ModelList(data=list_models(session=session, settings=settings, tenant_id=caller.tenant_id,
                                      tenant_name=caller.tenant_name))


@router.get("/{model_id:path}", response_model=ModelObject)
def get_model(model_id: str, caller: TenantDep, session: SessionDep, settings: SettingsDep) -> ModelObject:
    models = list_models(session=session, settings=settings, tenant_id=caller.tenant_id,
                         tenant_name=caller.tenant_name)
    found = next((m for m in models if m.id == model_id), None)
    if found is None:
        raise not_found("model", model_id)
    return found


@router.delete("/{model_id:path}", response_model=ModelDeleted, responses=error_responses(
    409, d409="An active job continues from this model or one of its checkpoints (code `model_in_use`)"))
def remove_model(model_id: str, caller: TenantDep, session: SessionDep, settings: SettingsDep,
                 storage: StorageDep) -> ModelDeleted:
    """Delete a fine-tuned model: its outputs and checkpoints leave storage, the job stays (history)."""
    delete_model(session=session, storage=storage, settings=settings, tenant_id=caller.tenant_id, model=model_id)
    return ModelDeleted(id=model_id, deleted=True)
