"""A completion's `model` resolved for the caller's tenant, as the API answers it.

The lookup itself is store/served_models.py (the eval executor resolves a judge's model with it
too); here its errors become the API's: a missing or another tenant's model is the same 404
(`model_not_found`, as every object: api/services/scope.py), a malformed `ft:` id a 400 naming
`model`, a model that cannot be served (no `adapter` output, its base unregistered) a 400
`model_not_servable`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request
from store import served_models
from store.served_models import ServedModel
from store.settings import Settings
from store.storage import Storage

__all__ = ["ServedModel", "model_not_found", "resolve_model"]


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")


def resolve_model(session: Session, storage: Storage, settings: Settings, *, model: str, tenant_id: str,
                  tenant_name: str) -> ServedModel:
    """The base and adapter that `model` names for this tenant, or the 400/404 it gets."""
    try:
        return served_models.resolve_model(session, storage, base_models=settings.base_models, model=model,
                                           tenant_id=tenant_id, tenant_name=tenant_name)
    except served_models.ModelNotFoundError:
        raise model_not_found(model) from None
    except served_models.MalformedModelIdError as error:
        raise bad_request(f"Invalid value for 'model': {error}; a fine-tuned model is "
                          "ft:<base>:<organization>:<suffix>:<id>, a checkpoint adds :ckpt-step-<step>",
                          param="model", code="invalid_value") from None
    except served_models.ModelNotServableError as error:
        raise ApiError(400, str(error), param="model", code="model_not_servable") from None
