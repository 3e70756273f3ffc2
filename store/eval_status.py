"""An eval run's statuses and the moves between them, as data: the one place both are written.

OpenAI's run statuses (queued, in_progress, completed, failed, canceled). A cancel of an
in_progress run is a flag (`eval_runs.cancel_requested`), not a status: the lease holder sees
it between items and finishes the run `canceled`. `TERMINAL`/`ACTIVE` and each event's
`WHERE status IN (...)` (`sources`) are derived from `TRANSITIONS`, like store/job_status.py.
Kept free of SQL and of the models so store/models.py can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from store.job_status import Actor


class EvalRunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


INITIAL = EvalRunStatus.QUEUED  # what the API inserts, before it publishes the message


class EvalEvent(StrEnum):
    CLAIM = "claim"  # a worker takes the lease (again, after a crash: the run resumes)
    PROGRESS = "progress"  # the lease holder writes output items and counts: the status stays
    FINISH = "finish"  # the lease holder ends the run; a cancel asked before it wins: canceled
    RELEASE = "release"  # the lease holder gives the run back (worker shutdown)
    CANCEL = "cancel"  # the API, before any worker took the run
    REQUEST_CANCEL = "request cancel"  # the API on an in_progress run: sets cancel_requested
    REPUBLISH = "republish"  # the reconciler sends a lost message again (updated_at only)
    SETTLE = "settle"  # the reconciler ends a run no attempt works on and none may take


@dataclass(frozen=True)
class EvalTransition:
    sources: tuple[EvalRunStatus, ...]
    event: EvalEvent
    targets: tuple[EvalRunStatus, ...]
    by: Actor
    when: str = ""


_Q, _P = EvalRunStatus.QUEUED, EvalRunStatus.IN_PROGRESS
_OK, _FAILED, _CANCELED = EvalRunStatus.COMPLETED, EvalRunStatus.FAILED, EvalRunStatus.CANCELED
TRANSITIONS: tuple[EvalTransition, ...] = (
    #              sources   event                     targets               by                  when
    EvalTransition((_Q, _P), EvalEvent.CLAIM,          (_P,),                Actor.WORKER,       "may run again"),
    EvalTransition((_P,),    EvalEvent.PROGRESS,       (_P,),                Actor.LEASE_HOLDER),
    EvalTransition((_P,),    EvalEvent.FINISH,         (_OK, _FAILED),       Actor.LEASE_HOLDER, "no cancel asked"),
    EvalTransition((_P,),    EvalEvent.FINISH,         (_CANCELED,),         Actor.LEASE_HOLDER),
    EvalTransition((_P,),    EvalEvent.RELEASE,        (_Q,),                Actor.LEASE_HOLDER),
    EvalTransition((_Q,),    EvalEvent.CANCEL,         (_CANCELED,),         Actor.API),
    EvalTransition((_P,),    EvalEvent.REQUEST_CANCEL, (_P,),                Actor.API,          "not asked yet"),
    EvalTransition((_Q, _P), EvalEvent.REPUBLISH,      (_Q, _P),             Actor.RECONCILER,   "may run again"),
    EvalTransition((_Q, _P), EvalEvent.SETTLE,         (_FAILED,),           Actor.RECONCILER,   "at the attempt cap"),
    EvalTransition((_Q, _P), EvalEvent.SETTLE,         (_CANCELED,),         Actor.RECONCILER,   "cancel asked"),
)  # fmt: skip


def sources(event: EvalEvent) -> frozenset[EvalRunStatus]:
    """The statuses `event` may leave: the `WHERE status IN (...)` of its function."""
    return frozenset(source for row in TRANSITIONS if row.event == event for source in row.sources)


def targets(event: EvalEvent, source: EvalRunStatus | None = None) -> frozenset[EvalRunStatus]:
    """The statuses `event` may lead to (from `source`; from any source when None)."""
    return frozenset(target for row in TRANSITIONS if row.event == event and (source is None or source in row.sources)
                     for target in row.targets)


TERMINAL = frozenset(EvalRunStatus) - {source for row in TRANSITIONS for source in row.sources}
ACTIVE = frozenset(EvalRunStatus) - TERMINAL

# an output item's status: every grader passed / one did not / one could not grade (or sampling failed)
ITEM_STATUSES = ("pass", "fail", "error")
