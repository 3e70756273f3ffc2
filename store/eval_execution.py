"""An eval run's execution in SQL: the lease, the output items inserted once, the counts, the sweep.

The executor (worker/eval_run.py) holds a run as a job is held: `claim_run` takes it (queued, or
in_progress with an expired lease: a crashed executor's run resumes) and bumps `attempt`; every
write after is fenced by (lease_owner, attempt) with a conditional UPDATE of the run row. Output
items are inserted in the same transaction as that UPDATE, which on PostgreSQL locks the row until
the commit, so a second attempt's claim waits for it: an item is inserted once, by the lease
holder, and UNIQUE (run_id, datasource_item_id) refuses any other. A resumed attempt skips the
items already stored (`stored_item_ids`): every item is graded exactly once.

The counts are always what the stored items say (`tally`), never a running sum an interrupted
attempt could have counted twice. The sweep (worker/evals.py) re-publishes runs whose message was
lost and settles runs no attempt may take any more (`reclaimable`, `mark_republished`, `settle`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from store.eval_status import EvalEvent, EvalRunStatus, sources
from store.ids import new_id
from store.models import Eval, EvalOutputItem, EvalRun, Tenant, utcnow

ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # the error code of a run settled at its attempt cap
# where the API writes, in the run's data source, the base and adapter its model names when it creates the run
# ({"base_model": ..., "adapter": AdapterRef | None, "max_tokens_default": DORA_MAX_COMPLETION_TOKENS then});
# the executor samples that (worker/eval_items.py)
RESOLVED_KEY = "_resolved_model"


@dataclass(frozen=True)
class Fence:
    """Who holds a run's lease: every write of the executor names it."""

    run_id: str
    owner: str
    attempt: int


@dataclass(frozen=True)
class RunWork:
    """What an attempt needs of its run, read when it claimed it."""

    fence: Fence
    eval_id: str
    tenant_id: str
    tenant_name: str  # a judge's `ft:` model names its tenant (store/served_models.py)
    data_source: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    model: str | None


@dataclass(frozen=True)
class Beat:
    held: bool
    cancel_requested: bool = False


@dataclass(frozen=True)
class NewItem:
    datasource_item_id: int
    datasource_item: dict[str, Any]
    sample: dict[str, Any]
    results: list[dict[str, Any]]
    status: str  # store/eval_status.py ITEM_STATUSES


@dataclass
class Tally:
    """A run's counts in OpenAI's shapes, from its stored items."""

    result_counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "passed": 0, "failed": 0,
                                                                   "errored": 0})
    per_testing_criteria_results: list[dict[str, Any]] = field(default_factory=list)
    per_model_usage: list[dict[str, Any]] = field(default_factory=list)

    def values(self) -> dict[str, Any]:
        return {"result_counts": self.result_counts, "per_testing_criteria_results": self.per_testing_criteria_results,
                "per_model_usage": self.per_model_usage}


def _changed(session: Session, statement) -> int:
    return session.execute(statement, execution_options={"synchronize_session": False}).rowcount


def _claimable(now: datetime):
    """Queued, or in progress with no live lease; not asked to cancel, under its attempt cap."""
    expired = or_(EvalRun.lease_expires_at.is_(None), EvalRun.lease_expires_at < now)
    return and_(or_(EvalRun.status == EvalRunStatus.QUEUED.value,
                    and_(EvalRun.status == EvalRunStatus.IN_PROGRESS.value, expired)),
                EvalRun.cancel_requested.is_(False), EvalRun.attempt < EvalRun.max_attempts)


def claim_run(session: Session, *, run_id: str, owner: str, lease_seconds: float,
              now: datetime | None = None) -> RunWork | None:
    """Take the run for `owner` (a new attempt); None when it is not claimable (held, finished,
    canceled, at its attempt cap: a duplicate or stale message). Commits."""
    now = now or utcnow()
    statement = (update(EvalRun).where(EvalRun.id == run_id, _claimable(now))
                 .values(status=EvalRunStatus.IN_PROGRESS.value, lease_owner=owner,
                         lease_expires_at=now + timedelta(seconds=lease_seconds), attempt=EvalRun.attempt + 1,
                         started_at=func.coalesce(EvalRun.started_at, now), updated_at=now))
    if _changed(session, statement) != 1:
        session.rollback()
        return None
    run = session.get(EvalRun, run_id, populate_existing=True)
    criteria = session.scalar(select(Eval.testing_criteria).where(Eval.id == run.eval_id))
    tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == run.tenant_id)) or ""
    work = RunWork(fence=Fence(run_id=run.id, owner=owner, attempt=run.attempt), eval_id=run.eval_id,
                   tenant_id=run.tenant_id, tenant_name=tenant_name, data_source=dict(run.data_source or {}),
                   testing_criteria=list(criteria or []), model=run.model)
    session.commit()
    return work


def _fenced(session: Session, fence: Fence, event: EvalEvent, **values: Any) -> bool:
    """UPDATE the run for `event` only while `fence` holds its lease; rolled back when not."""
    statement = (update(EvalRun)
                 .where(EvalRun.id == fence.run_id, EvalRun.lease_owner == fence.owner,
                        EvalRun.attempt == fence.attempt, EvalRun.status.in_([s.value for s in sources(event)]))
                 .values(**values))
    if _changed(session, statement) == 1:
        return True
    session.rollback()
    return False


def _lease_values(lease_seconds: float, now: datetime) -> dict[str, Any]:
    return {"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}


def heartbeat(session: Session, *, fence: Fence, lease_seconds: float, tally: Tally | None = None) -> Beat:
    """Extend the lease (and write the counts); whether it is still held and a cancel was asked. Commits."""
    now = utcnow()
    values = _lease_values(lease_seconds, now) | (tally.values() if tally is not None else {})
    if not _fenced(session, fence, EvalEvent.PROGRESS, **values):
        return Beat(held=False)
    cancel = bool(session.scalar(select(EvalRun.cancel_requested).where(EvalRun.id == fence.run_id)))
    session.commit()
    return Beat(held=True, cancel_requested=cancel)


def stored_item_ids(session: Session, *, run_id: str) -> set[int]:
    """The item indices this run has output items for (graded by this or an earlier attempt)."""
    return set(session.scalars(select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run_id)))


def insert_items(session: Session, *, fence: Fence, work: RunWork, items: list[NewItem],
                 lease_seconds: float) -> int | None:
    """Insert the items not stored yet, fenced (the lease extended in the same transaction); how
    many were inserted, or None when the lease is gone (nothing written). Commits."""
    now = utcnow()
    if not _fenced(session, fence, EvalEvent.PROGRESS, **_lease_values(lease_seconds, now)):
        return None
    wanted = {item.datasource_item_id for item in items}
    stored = set(session.scalars(select(EvalOutputItem.datasource_item_id).where(
        EvalOutputItem.run_id == fence.run_id, EvalOutputItem.datasource_item_id.in_(wanted)))) if wanted else set()
    new = [EvalOutputItem(id=new_id("eval_output_item"), run_id=fence.run_id, eval_id=work.eval_id,
                          tenant_id=work.tenant_id, datasource_item_id=item.datasource_item_id,
                          datasource_item=item.datasource_item, sample=item.sample, results=item.results,
                          status=item.status, created_at=now)
           for item in items if item.datasource_item_id not in stored]
    session.add_all(new)
    session.commit()
    return len(new)


def tally(session: Session, *, run_id: str, criteria_names: list[str], batch: int = 1000) -> Tally:
    """The run's counts from its stored items: statuses, each criterion's passed/failed, and the
    usage of each model: the sampled one (the item's sample) and the judges of model graders (each
    result's `usage`, {model: {invocations, prompt_tokens, completion_tokens}}: worker/eval_grading.py)."""
    result = Tally()
    statuses = dict(session.execute(select(EvalOutputItem.status, func.count()).where(
        EvalOutputItem.run_id == run_id).group_by(EvalOutputItem.status)).all())
    result.result_counts = {"total": sum(statuses.values()), "passed": statuses.get("pass", 0),
                            "failed": statuses.get("fail", 0), "errored": statuses.get("error", 0)}
    passed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    usage: dict[str, Counter[str]] = {}
    rows = session.execute(select(EvalOutputItem.results, EvalOutputItem.sample)
                           .where(EvalOutputItem.run_id == run_id).execution_options(yield_per=batch))
    for results, sample in rows:
        for entry in results or []:
            if entry.get("passed") is True:
                passed[entry.get("name")] += 1
            elif entry.get("passed") is False:
                failed[entry.get("name")] += 1
            for judge, used in (entry.get("usage") or {}).items():  # the judges a criterion asked
                _add_usage(usage, judge, used)
        _add_usage(usage, (sample or {}).get("model"), (sample or {}).get("usage"))
    result.per_testing_criteria_results = [{"testing_criteria": name, "passed": passed[name], "failed": failed[name]}
                                           for name in criteria_names]
    result.per_model_usage = [{"model_name": model, "invocation_count": counts["invocation_count"],
                               "prompt_tokens": counts["prompt_tokens"],
                               "completion_tokens": counts["completion_tokens"],
                               "total_tokens": counts["prompt_tokens"] + counts["completion_tokens"],
                               "cached_tokens": 0}
                              for model, counts in sorted(usage.items())]
    return result


def _add_usage(usage: dict[str, Counter[str]], model: str | None, used: dict | None) -> None:
    if not model or not used:
        return
    counts = usage.setdefault(model, Counter())
    counts["invocation_count"] += int(used.get("invocations", 1))
    counts["prompt_tokens"] += int(used.get("prompt_tokens") or 0)
    counts["completion_tokens"] += int(used.get("completion_tokens") or 0)


def finish_run(session: Session, *, fence: Fence, status: EvalRunStatus, tally: Tally,
               error: dict[str, str] | None = None) -> EvalRunStatus | None:
    """End the run `status` (completed or failed), or canceled when a cancel was asked first; the
    status written, None when the lease is gone. Commits."""
    now = utcnow()
    end = dict(lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now, **tally.values())
    canceled = (update(EvalRun).where(EvalRun.id == fence.run_id, EvalRun.lease_owner == fence.owner,
                                      EvalRun.attempt == fence.attempt,
                                      EvalRun.status == EvalRunStatus.IN_PROGRESS.value,
                                      EvalRun.cancel_requested.is_(True))
                .values(status=EvalRunStatus.CANCELED.value, **end))
    if _changed(session, canceled) == 1:
        session.commit()
        return EvalRunStatus.CANCELED
    if _fenced(session, fence, EvalEvent.FINISH, status=status.value, error=error, **end):
        session.commit()
        return status
    return None


def release_run(session: Session, *, fence: Fence) -> bool:
    """Give the run back (queued, no lease) for another attempt: the executor is shutting down. Commits."""
    if _fenced(session, fence, EvalEvent.RELEASE, status=EvalRunStatus.QUEUED.value, lease_owner=None,
               lease_expires_at=None, attempt=EvalRun.attempt - 1, updated_at=utcnow()):
        session.commit()
        return True
    return False


# -- the sweep: lost messages, abandoned runs --------------------------------------------------------
def _abandoned(now: datetime):
    """No live lease: queued, or in progress with the lease expired."""
    return or_(EvalRun.status == EvalRunStatus.QUEUED.value,
               and_(EvalRun.status == EvalRunStatus.IN_PROGRESS.value,
                    or_(EvalRun.lease_expires_at.is_(None), EvalRun.lease_expires_at < now)))


def settle(session: Session, *, now: datetime | None = None) -> list[tuple[str, EvalRunStatus]]:
    """End the runs no attempt works on that must not run again: canceled when a cancel was asked,
    failed at the attempt cap. Commits."""
    now = now or utcnow()
    rows = session.execute(select(EvalRun.id, EvalRun.cancel_requested, EvalRun.attempt, EvalRun.max_attempts)
                           .where(_abandoned(now), or_(EvalRun.cancel_requested.is_(True),
                                                       EvalRun.attempt >= EvalRun.max_attempts))).all()
    settled = []
    for run_id, cancel, attempt, max_attempts in rows:
        status = EvalRunStatus.CANCELED if cancel else EvalRunStatus.FAILED
        error = None if cancel else {"code": ATTEMPTS_EXHAUSTED, "message": (
            f"The run was started {attempt} times (its attempt cap, {max_attempts}) and never finished: the "
            "executor stopped each time (killed, or its lease lost)")}
        statement = (update(EvalRun).where(EvalRun.id == run_id, _abandoned(now))
                     .values(status=status.value, error=error, lease_owner=None, lease_expires_at=None,
                             finished_at=now, updated_at=now))
        if _changed(session, statement) == 1:
            settled.append((run_id, status))
    session.commit()
    return settled


def reclaimable(session: Session, *, queued_for_seconds: float, now: datetime | None = None) -> list[tuple[str, bool]]:
    """Runs to publish again, (id, whether in progress): queued and untouched for
    `queued_for_seconds` (the message was lost), or in progress with an expired lease (the executor died)."""
    now = now or utcnow()
    stale = now - timedelta(seconds=queued_for_seconds)
    in_progress = EvalRun.status == EvalRunStatus.IN_PROGRESS.value
    return [(run_id, bool(running)) for run_id, running in session.execute(
        select(EvalRun.id, in_progress).where(_claimable(now), or_(in_progress, EvalRun.updated_at < stale))
        .order_by(EvalRun.id))]


def mark_republished(session: Session, *, run_id: str, not_since: datetime, now: datetime | None = None) -> bool:
    """Win the right to publish the run again (updated_at moves to now): one sweeper of many per
    interval does. Commits."""
    now = now or utcnow()
    statement = (update(EvalRun).where(EvalRun.id == run_id, _claimable(now), EvalRun.updated_at < not_since)
                 .values(updated_at=now))
    won = _changed(session, statement) == 1
    session.commit()
    return won
