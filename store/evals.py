"""Evals, eval runs and their output items in SQL: what the API writes and the counts it reads.

The API inserts a run `queued` and commits before it publishes the run's message (store/queue.py
publish_eval_run), as jobs are: SQL holds the truth, the message only wakes an executor. The
status moves are store/eval_status.py's table; each function here names the event it makes and
takes its `WHERE status IN (...)` from there. Deleting an eval or a run deletes its rows at once
(output items, runs): an executor still working on a deleted run finds its fenced writes change
no row and stops, which is how a running run of a deleted eval is cancelled.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from store.eval_status import ACTIVE, TERMINAL, EvalEvent, EvalRunStatus, sources, targets
from store.ids import new_id
from store.models import Eval, EvalOutputItem, EvalRun, utcnow
from store.quotas import lock_tenant


class InvalidEvalTransition(Exception):  # noqa: N818 - named for the refused state change, like store/jobs.py's
    """The run is in a status the asked event may not leave."""


def empty_result_counts() -> dict[str, int]:
    return {"total": 0, "passed": 0, "failed": 0, "errored": 0}


def create_eval(session: Session, *, tenant_id: str, name: str | None, data_source_config: dict[str, Any],
                testing_criteria: list[dict[str, Any]], metadata: dict[str, str] | None) -> Eval:
    row = Eval(id=new_id("eval"), tenant_id=tenant_id, name=name, data_source_config=data_source_config,
               testing_criteria=testing_criteria, meta=metadata)
    session.add(row)
    session.commit()
    return row


def delete_eval(session: Session, *, eval_id: str) -> None:
    """The eval, its runs (a running one included: its executor stops) and their output items."""
    session.execute(delete(EvalOutputItem).where(EvalOutputItem.eval_id == eval_id))
    session.execute(delete(EvalRun).where(EvalRun.eval_id == eval_id))
    session.execute(delete(Eval).where(Eval.id == eval_id))
    session.commit()


def active_eval_runs(session: Session, *, tenant_id: str) -> int:
    """The tenant's queued and in_progress eval runs (what DORA_MAX_ACTIVE_EVAL_RUNS_PER_TENANT caps)."""
    query = select(func.count()).select_from(EvalRun).where(EvalRun.tenant_id == tenant_id,
                                                            EvalRun.status.in_(ACTIVE))
    return int(session.scalar(query) or 0)


def lock_for_new_run(session: Session, *, tenant_id: str) -> int:
    """Lock the tenant's row (store/quotas.py) and count its active runs: the caller checks its cap
    and inserts in this transaction, so concurrent creates cannot pass the cap together."""
    lock_tenant(session, tenant_id=tenant_id)
    return active_eval_runs(session, tenant_id=tenant_id)


def create_run(session: Session, *, eval_row: Eval, name: str | None, data_source: dict[str, Any],
               model: str | None, metadata: dict[str, str] | None, max_attempts: int = 3) -> EvalRun:
    """Insert the run `queued` (store/eval_status.py INITIAL) and commit; publish after this returns."""
    now = utcnow()
    run = EvalRun(id=new_id("eval_run"), eval_id=eval_row.id, tenant_id=eval_row.tenant_id, name=name,
                  status=EvalRunStatus.QUEUED.value, data_source=data_source, model=model,
                  result_counts=empty_result_counts(), per_testing_criteria_results=[
                      {"testing_criteria": c.get("name", ""), "passed": 0, "failed": 0}
                      for c in eval_row.testing_criteria],
                  per_model_usage=[], meta=metadata, max_attempts=max_attempts, created_at=now, updated_at=now)
    session.add(run)
    session.commit()
    return run


def cancel_run(session: Session, *, run_id: str) -> EvalRun:
    """queued -> canceled now; in_progress -> cancel_requested (the executor stops between items
    and finishes it canceled). Cancelling a canceled run again is no error; a finished one is."""
    now = utcnow()
    cancel = (update(EvalRun).where(EvalRun.id == run_id, EvalRun.status.in_(sources(EvalEvent.CANCEL)))
              .values(status=EvalRunStatus.CANCELED.value, finished_at=now, updated_at=now)
              .execution_options(synchronize_session=False))
    if session.execute(cancel).rowcount != 1:
        session.execute(update(EvalRun).where(EvalRun.id == run_id,
                                              EvalRun.status.in_(sources(EvalEvent.REQUEST_CANCEL)),
                                              EvalRun.cancel_requested.is_(False))
                        .values(cancel_requested=True, updated_at=now)
                        .execution_options(synchronize_session=False))
    run = session.get(EvalRun, run_id, populate_existing=True)
    if run.status in TERMINAL - targets(EvalEvent.CANCEL):
        session.rollback()
        raise InvalidEvalTransition(f"eval run {run_id} has already {run.status} and cannot be canceled")
    session.commit()
    return run


def delete_run(session: Session, *, run_id: str) -> None:
    """The run and its output items (a running run's executor finds its row gone and stops)."""
    session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id == run_id))
    session.execute(delete(EvalRun).where(EvalRun.id == run_id))
    session.commit()
