"""The eval runs a job makes of its checkpoints and its fine-tuned model (issue #24), in SQL.

A job that names `evals` (dora_contract/job_spec.py JobEval) gets one run of each at every
checkpoint it registers, and one for its fine-tuned model when it succeeds. Each is an ordinary
eval run (listed under its eval, executed by `dora evals`, under the tenant's cap on active
runs), marked in its metadata with the job, the step and what was evaluated: metadata rather
than columns, so the openai client shows the marks too and no migration is needed. The job's
scores over steps are read back by those marks (`job_runs`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dora_contract.job_spec import JobEval
from store.eval_execution import RESOLVED_KEY
from store.eval_status import ACTIVE
from store.evals import create_run, lock_for_new_run
from store.jobs import _add_events, _event  # the private helpers: one event numbered as every other
from store.models import Eval, EvalRun

JOB_KEY, STEP_KEY, KIND_KEY = "fine_tuning_job_id", "step", "evaluated"  # the run's metadata keys
CHECKPOINT, FINE_TUNED_MODEL = "checkpoint", "fine_tuned_model"  # KIND_KEY's values


class RunRefused(Exception):  # noqa: N818 - read as "the run was refused: <reason>"
    """The run was not created, for a reason the job's events should tell (deleted eval, the cap)."""


def job_runs(session: Session, *, tenant_id: str, job_id: str, limit: int) -> list[EvalRun]:
    """The runs made for the job (at most `limit`), in creation order."""
    query = (select(EvalRun).where(EvalRun.tenant_id == tenant_id, EvalRun.meta[JOB_KEY].as_string() == job_id)
             .order_by(EvalRun.id).limit(limit))
    return list(session.scalars(query))


def busy_storage_keys(session: Session, *, tenant_id: str, job_id: str) -> set[str]:
    """The storage prefixes (checkpoints) the job's queued and in_progress runs still sample: the
    worker's pruning of old checkpoints leaves them for a later checkpoint's pruning."""
    query = select(EvalRun.data_source).where(EvalRun.tenant_id == tenant_id, EvalRun.status.in_(ACTIVE),
                                              EvalRun.meta[JOB_KEY].as_string() == job_id)
    return {((source.get(RESOLVED_KEY) or {}).get("adapter") or {}).get("storage_prefix")
            for source in session.scalars(query)} - {None}


def create_job_run(session: Session, *, tenant_id: str, job_id: str, job_eval: JobEval, model: str, base_model: str,
                   adapter: dict[str, Any] | None, step: int, kind: str, cap: int) -> EvalRun | None:
    """Insert the run of `job_eval` on `model` queued and commit (publish after); None when the job
    already has that run (a replay). RunRefused when the eval is gone or the tenant is at its cap."""
    eval_row = session.get(Eval, job_eval.eval_id)
    if eval_row is None or eval_row.tenant_id != tenant_id:
        raise RunRefused("the eval was deleted")
    active = lock_for_new_run(session, tenant_id=tenant_id)  # held until the commit
    marks = {JOB_KEY: job_id, STEP_KEY: str(step), KIND_KEY: kind}
    same = select(EvalRun.id).where(EvalRun.tenant_id == tenant_id, EvalRun.eval_id == eval_row.id,
                                    *(EvalRun.meta[key].as_string() == value for key, value in marks.items()))
    if session.scalars(same.limit(1)).first() is not None:
        session.rollback()
        return None
    if cap and active >= cap:
        session.rollback()
        raise RunRefused(f"the tenant already has {active} queued or in_progress eval runs, its limit "
                         "(DORA_MAX_ACTIVE_EVAL_RUNS_PER_TENANT)")
    template = dict(job_eval.data_source)
    data_source = {"type": template.pop("type", "completions"), "model": model, **template,
                   RESOLVED_KEY: {"base_model": base_model, "adapter": adapter}}
    return create_run(session, eval_row=eval_row, name=f"{model} (step {step})"[:255], data_source=data_source,
                      model=model, metadata=marks)


def add_job_event(session: Session, *, job_id: str, message: str, level: str = "info",
                  data: dict[str, Any] | None = None) -> None:
    """An event of a job that has finished (the runs of its fine-tuned model), numbered like the rest."""
    _add_events(session, job_id, _event(job_id, message, level=level, data=data))
    session.commit()
