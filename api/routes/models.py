"""`/v1/models`."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import not_found
from api.schemas.models import ModelList, ModelObject
from api.services.models import list_models

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
