"""A job's `evals` (issue #24): checked when the job is created, and its scores over steps.

Each named eval must be the caller's and have a `completions` run to copy: an eval holds no run
data source of its own, so the job runs each checkpoint with the data source of the eval's most
recent completions run (its prompt template, sampling params and items; typically the run on the
base model, which is the curve's baseline), its model replaced by the checkpoint's. The copy is
taken now and stored in the job's JobSpec, so later runs of the eval do not change what the job
measures. Another tenant's eval and a missing one are the same 400 naming `evals.<i>`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request
from api.schemas.jobs import EvalScoreCriterion, JobEvalScore
from api.services.scope import get_owned
from dora_contract.job_spec import JobEval
from store.eval_execution import RESOLVED_KEY
from store.job_evals import FINE_TUNED_MODEL, KIND_KEY, STEP_KEY, job_runs
from store.models import Eval, EvalRun, Job

COMPLETIONS = "completions"


def resolve(session: Session, *, tenant_id: str, eval_ids: list[str] | None) -> tuple[JobEval, ...]:
    """The JobSpec's evals for the request's `evals`, each with its copied data source."""
    resolved: list[JobEval] = []
    for index, eval_id in enumerate(eval_ids or []):
        param = f"evals.{index}"
        if eval_id in eval_ids[:index]:
            raise bad_request(f"Eval '{eval_id}' is named twice in evals", param=param)
        try:
            eval_row = get_owned(session, Eval, tenant_id=tenant_id, object_id=eval_id, what="eval", param=param)
        except ApiError as error:  # a field of the body: 400, not the path's 404
            raise bad_request(error.message, param=param, code=error.code) from None
        template = session.scalars(
            select(EvalRun).where(EvalRun.eval_id == eval_row.id, EvalRun.tenant_id == tenant_id,
                                  EvalRun.data_source["type"].as_string() == COMPLETIONS)
            .order_by(EvalRun.created_at.desc(), EvalRun.id.desc()).limit(1)).first()
        if template is None:
            raise bad_request(f"Eval '{eval_id}' has no completions run to take its prompt and items from: run it "
                              f"once (e.g. on the base model: POST /v1/evals/{eval_id}/runs with a completions data "
                              "source), then name it here", param=param, code="eval_without_completions_run")
        source = {k: v for k, v in template.data_source.items() if k not in ("model", RESOLVED_KEY)}
        resolved.append(JobEval(eval_id=eval_row.id, template_run_id=template.id, data_source=source))
    return tuple(resolved)


def _pass_rate(passed: int, failed: int) -> float | None:
    return passed / (passed + failed) if passed + failed else None


def scores(session: Session, *, job: Job, limit: int) -> tuple[list[JobEvalScore], bool]:
    """The job's eval runs (at most `limit`), ordered by step, each grader's pass rate with it."""
    runs = job_runs(session, tenant_id=job.tenant_id, job_id=job.id, limit=limit + 1)
    names = dict(session.execute(select(Eval.id, Eval.name).where(Eval.id.in_({r.eval_id for r in runs}))).all())
    out = [_score(run, names.get(run.eval_id)) for run in runs[:limit]]
    out.sort(key=lambda s: (s.step, s.evaluated == FINE_TUNED_MODEL, s.eval_id, s.run_id))
    return out, len(runs) > limit


def _score(run: EvalRun, eval_name: str | None) -> JobEvalScore:
    meta: dict[str, Any] = run.meta or {}
    criteria = [EvalScoreCriterion(testing_criteria=c.get("testing_criteria", ""), passed=c.get("passed", 0),
                                   failed=c.get("failed", 0), pass_rate=_pass_rate(c.get("passed", 0),
                                                                                   c.get("failed", 0)))
                for c in run.per_testing_criteria_results or []]
    counts = run.result_counts or {}
    return JobEvalScore(run_id=run.id, eval_id=run.eval_id, eval_name=eval_name, step=int(meta.get(STEP_KEY, 0)),
                        evaluated=meta.get(KIND_KEY, ""), model=run.model or "", status=run.status,
                        result_counts=counts, pass_rate=(counts.get("passed", 0) / counts["total"]
                                                         if counts.get("total") else None),
                        per_testing_criteria_results=criteria)
