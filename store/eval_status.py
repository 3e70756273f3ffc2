"""An eval run's statuses and the moves between them, as data: the one place both are written.

OpenAI's run statuses (queued, in_progress, completed, failed, canceled). A cancel of an
in_progress run is a flag (`eval_runs.cancel_requested`), not a status: the lease holder sees
it between items and finishes the run `canceled`. `TERMINAL`/`ACTIVE` and each event's
`WHERE status IN (...)` (`sources`) are derived from `TRANSITIONS` (store/state_machine.py), like
store/job_status.py's.
Kept free of SQL and of the models so store/models.py can import it.
"""

from __future__ import annotations

from enum import StrEnum

from store.state_machine import Actor, StateMachine, Transition


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


_Q, _P = EvalRunStatus.QUEUED, EvalRunStatus.IN_PROGRESS
_OK, _FAILED, _CANCELED = EvalRunStatus.COMPLETED, EvalRunStatus.FAILED, EvalRunStatus.CANCELED
TRANSITIONS: tuple[Transition[EvalRunStatus, EvalEvent], ...] = (
    #          sources   event                     targets               by                  when
    Transition((_Q, _P), EvalEvent.CLAIM,          (_P,),                Actor.WORKER,       "may run again"),
    Transition((_P,),    EvalEvent.PROGRESS,       (_P,),                Actor.LEASE_HOLDER),
    Transition((_P,),    EvalEvent.FINISH,         (_OK, _FAILED),       Actor.LEASE_HOLDER, "no cancel asked"),
    Transition((_P,),    EvalEvent.FINISH,         (_CANCELED,),         Actor.LEASE_HOLDER),
    Transition((_P,),    EvalEvent.RELEASE,        (_Q,),                Actor.LEASE_HOLDER),
    Transition((_Q,),    EvalEvent.CANCEL,         (_CANCELED,),         Actor.API),
    Transition((_P,),    EvalEvent.REQUEST_CANCEL, (_P,),                Actor.API,          "not asked yet"),
    Transition((_Q, _P), EvalEvent.REPUBLISH,      (_Q, _P),             Actor.RECONCILER,   "may run again"),
    Transition((_Q, _P), EvalEvent.SETTLE,         (_FAILED,),           Actor.RECONCILER,   "at the attempt cap"),
    Transition((_Q, _P), EvalEvent.SETTLE,         (_CANCELED,),         Actor.RECONCILER,   "cancel asked"),
)  # fmt: skip


MACHINE = StateMachine(EvalRunStatus, TRANSITIONS)
sources, targets = MACHINE.sources, MACHINE.targets
TERMINAL, ACTIVE = MACHINE.terminal, MACHINE.active

# an output item's status: every grader passed / one did not / one could not grade (or sampling failed)
ITEM_STATUSES = ("pass", "fail", "error")
