"""`POST /v1/fine_tuning/alpha/graders/run` and `/validate`, in OpenAI's shapes (the openai client's
`client.fine_tuning.alpha.graders`). The graders themselves are dora_graders; see api/services/graders.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import TenantDep
from api.schemas.errors import error_responses
from api.services.graders import check_grader, grading_context, parse_grader, run_grader

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", tags=["graders"])


class GraderValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict[str, Any] = Field(description="a grader in OpenAI's shape (string_check, text_similarity, "
                                               "score_model, label_model, python, multi)")


class GraderRunRequest(GraderValidateRequest):
    model_sample: str
    item: Any = None


@router.post("/validate", responses=error_responses())
async def validate_grader(body: GraderValidateRequest, request: Request, caller: TenantDep) -> dict[str, Any]:
    """The grader as this server will run it, or a 400 naming what it cannot run."""
    grader = parse_grader(body.grader)
    check_grader(grader, grading_context(request, caller))
    return {"grader": grader.model_dump(mode="json", exclude_none=True)}


@router.post("/run", responses=error_responses())
async def run_a_grader(body: GraderRunRequest, request: Request, caller: TenantDep) -> dict[str, Any]:
    """Grade `model_sample` for `item`: the reward, each sub-grader's and the error flags (GraderRunResponse)."""
    grader, context = parse_grader(body.grader), grading_context(request, caller)
    check_grader(grader, context)
    return await run_grader(grader, model_sample=body.model_sample, item=body.item, context=context)
