"""`/v1/evals`: evals, their runs and the runs' output items, in OpenAI's shapes (the official client's
`client.evals`, `client.evals.runs`, `client.evals.runs.output_items`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import WithJsonSchema

from api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from api.present_evals import eval_out, output_item_out, run_out
from api.schemas.common import ListPage
from api.schemas.errors import error_responses
from api.schemas.evals import (
    EvalCreate,
    EvalDeleted,
    EvalObject,
    EvalRunDeleted,
    EvalRunObject,
    EvalUpdate,
    OutputItemObject,
    RunCreate,
)
from api.schemas.params import Cursor, Limit, id_path
from api.services import evals as eval_service
from api.services.scope import get_owned
from store import evals as eval_store
from store.eval_status import ITEM_STATUSES, EvalRunStatus
from store.models import Eval, EvalRun

router = APIRouter(prefix="/v1/evals", tags=["evals"])
EvalIdPath = id_path("eval")
RunIdPath = id_path("eval run")
OutputItemIdPath = id_path("output item")
Order = Annotated[Literal["asc", "desc"], Query(description="By creation time")]
# documented as enums; checked by the service, whose 400 names the wrong value
RunStatusFilter = Annotated[str | None, WithJsonSchema({"type": "string", "enum": [s.value for s in EvalRunStatus]})]
ItemStatusFilter = Annotated[str | None, WithJsonSchema({"type": "string", "enum": list(ITEM_STATUSES)})]
OrderBy = Annotated[str, WithJsonSchema({"type": "string", "enum": ["created_at"]})]
D413 = "The body is over this server's limit (DORA_MAX_JSON_BODY_BYTES)"


def _page(items: list, rows: list, has_more: bool) -> ListPage:
    return ListPage(data=items, has_more=has_more, first_id=rows[0].id if rows else None,
                    last_id=rows[-1].id if rows else None)


def owned_eval(eval_id: EvalIdPath, session: SessionDep, caller: TenantDep) -> Eval:
    return get_owned(session, Eval, tenant_id=caller.tenant_id, object_id=eval_id, what="eval")


OwnedEvalDep = Annotated[Eval, Depends(owned_eval)]


def owned_run(eval_row: OwnedEvalDep, run_id: RunIdPath, session: SessionDep) -> EvalRun:
    return eval_service.get_run(session=session, eval_row=eval_row, run_id=run_id)


OwnedRunDep = Annotated[EvalRun, Depends(owned_run)]


@router.post("", response_model=EvalObject, responses=error_responses(413, d413=D413))
def create_eval(body: EvalCreate, caller: TenantDep, session: SessionDep, settings: SettingsDep) -> EvalObject:
    return eval_out(eval_service.create_eval(session=session, settings=settings, tenant_id=caller.tenant_id,
                                             request=body))


@router.get("", response_model=ListPage[EvalObject])
def list_evals(caller: TenantDep, session: SessionDep, after: Cursor = None, limit: Limit = 20,
               order: Order = "asc", order_by: OrderBy = "created_at") -> ListPage[EvalObject]:
    rows, has_more = eval_service.list_evals(session=session, tenant_id=caller.tenant_id, after=after, limit=limit,
                                             order=order, order_by=order_by)
    return _page([eval_out(r) for r in rows], rows, has_more)


@router.get("/{eval_id}", response_model=EvalObject)
def get_eval(eval_row: OwnedEvalDep) -> EvalObject:
    return eval_out(eval_row)


@router.post("/{eval_id}", response_model=EvalObject, responses=error_responses(413, d413=D413))
def update_eval(body: EvalUpdate, eval_row: OwnedEvalDep, session: SessionDep) -> EvalObject:
    return eval_out(eval_service.update_eval(session=session, eval_row=eval_row, request=body))


@router.delete("/{eval_id}", response_model=EvalDeleted)
def delete_eval(eval_row: OwnedEvalDep, session: SessionDep) -> EvalDeleted:
    """The eval, its runs and their output items; a running run stops (its executor finds it gone)."""
    eval_store.delete_eval(session, eval_id=eval_row.id)
    return EvalDeleted(eval_id=eval_row.id)


@router.post("/{eval_id}/runs", response_model=EvalRunObject, responses=error_responses(
    413, 429, d413=D413, d429="At the tenant's cap on queued+in_progress eval runs (type `insufficient_quota`, code "
              "`quota_exceeded`) or its rate"))
def create_run(request: Request, body: RunCreate, eval_row: OwnedEvalDep, caller: TenantDep, session: SessionDep,
               settings: SettingsDep, storage: StorageDep) -> EvalRunObject:
    run = eval_service.create_run(session=session, storage=storage, settings=settings, eval_row=eval_row,
                                  request=body, tenant_name=caller.tenant_name)
    request.app.state.publish_eval_run(run.id)  # after the commit; a broker failure leaves it queued
    return run_out(run)


@router.get("/{eval_id}/runs", response_model=ListPage[EvalRunObject])
def list_runs(eval_row: OwnedEvalDep, session: SessionDep, after: Cursor = None, limit: Limit = 20,
              order: Order = "asc", status: RunStatusFilter = None) -> ListPage[EvalRunObject]:
    rows, has_more = eval_service.list_runs(session=session, eval_row=eval_row, after=after, limit=limit, order=order,
                                            status=status)
    return _page([run_out(r) for r in rows], rows, has_more)


@router.get("/{eval_id}/runs/{run_id}", response_model=EvalRunObject)
def get_run(run: OwnedRunDep) -> EvalRunObject:
    return run_out(run)


@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=EvalRunObject,
             responses=error_responses(409, d409="The run has already completed or failed"))
@router.post("/{eval_id}/runs/{run_id}", response_model=EvalRunObject,  # OpenAI's reference documents this path
             responses=error_responses(409, d409="The run has already completed or failed"))
def cancel_run(run: OwnedRunDep, session: SessionDep) -> EvalRunObject:
    """queued: canceled at once; in_progress: cancel_requested, and its executor stops between items."""
    return run_out(eval_service.cancel_run(session=session, run=run))


@router.delete("/{eval_id}/runs/{run_id}", response_model=EvalRunDeleted)
def delete_run(run: OwnedRunDep, session: SessionDep) -> EvalRunDeleted:
    eval_store.delete_run(session, run_id=run.id)
    return EvalRunDeleted(run_id=run.id)


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=ListPage[OutputItemObject])
def list_output_items(run: OwnedRunDep, session: SessionDep, after: Cursor = None, limit: Limit = 20,
                      order: Order = "asc", status: ItemStatusFilter = None) -> ListPage[OutputItemObject]:
    rows, has_more = eval_service.list_output_items(session=session, run=run, after=after, limit=limit, order=order,
                                                    status=status)
    return _page([output_item_out(r) for r in rows], rows, has_more)


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=OutputItemObject)
def get_output_item(run: OwnedRunDep, output_item_id: OutputItemIdPath, session: SessionDep) -> OutputItemObject:
    return output_item_out(eval_service.get_output_item(session=session, run=run, item_id=output_item_id))
