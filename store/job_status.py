"""A fine-tuning job's statuses and the state machine between them, as data: the one place both are written.

`TRANSITIONS` is the state machine: one row per (from, event, to, by). Everything else is
derived from it (store/state_machine.py, as an eval run's table is): the `WHERE status IN (...)`
of each transition function in store/jobs.py (`sources`), what finish and settle may write
(`targets`), `TERMINAL`/`ACTIVE`, and the diagram in docs/architecture.md (`diagram`, checked by
tests/api/test_job_transitions.py). A new status is one `JobStatus` member plus its rows;
tests/api/test_job_transitions.py then checks every transition function against them on SQLite
and PostgreSQL.

Kept free of SQL and of the models so store/models.py can import it. The values are what the
database stores and the API shows (OpenAI's names), so changing one needs a data migration.
"""

from __future__ import annotations

from enum import StrEnum

from store.state_machine import Actor, StateMachine, Transition


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # asked by the user; its newest checkpoint waits for a resume (not in openai's Literal)


INITIAL = JobStatus.QUEUED  # what create_job inserts (files are validated at upload)


class Event(StrEnum):
    """What moves a job; each is made by one function (named after it)."""

    CLAIM = "claim"  # store/jobs.py claim_job
    PROGRESS = "progress"  # store/progress.py write_progress, store/jobs.py add_checkpoint: keep the status
    FINISH = "finish"  # finish_job; a cancel asked before it wins: the job ends cancelled
    RELEASE = "release"  # release_job: give the job back for another attempt
    CANCEL = "cancel"  # cancel_job, before any worker took the job
    REQUEST_CANCEL = "request cancel"  # cancel_job on a running job: its worker stops and finishes it
    REPUBLISH = "republish"  # mark_republished: only updated_at changes, so one reconciler publishes it
    SETTLE = "settle"  # settle_abandoned: a job no attempt works on and none may take
    PAUSE = "pause"  # pause_job, before any worker took the job
    REQUEST_PAUSE = "request pause"  # pause_job on a running job: its worker checkpoints and releases it paused
    RESUME = "resume"  # resume_job: back to the queue, to resume from its newest checkpoint on any worker


# "may run again" (the `when` of a claim or republish): attempts left, and neither a cancel nor a pause asked;
# each condition's SQL is in store/job_predicates.py
_Q, _R = JobStatus.QUEUED, JobStatus.RUNNING  # the table's shorthand
_OK, _FAILED, _CANCELLED, _P = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED
TRANSITIONS: tuple[Transition[JobStatus, Event], ...] = (
    #          sources   event                 targets                    by                  when
    Transition((_Q, _R), Event.CLAIM,          (_R,),                     Actor.WORKER,       "may run again"),
    Transition((_R,),    Event.PROGRESS,       (_R,),                     Actor.LEASE_HOLDER),
    Transition((_R,),    Event.FINISH,         (_OK, _FAILED),            Actor.LEASE_HOLDER, "no cancel asked"),
    Transition((_R,),    Event.FINISH,         (_CANCELLED,),             Actor.LEASE_HOLDER),
    Transition((_R,),    Event.RELEASE,        (_Q,),                     Actor.LEASE_HOLDER, "no pause asked"),
    Transition((_R,),    Event.RELEASE,        (_P,),                     Actor.LEASE_HOLDER, "pause asked"),
    Transition((_Q, _P), Event.CANCEL,         (_CANCELLED,),             Actor.API),
    Transition((_R,),    Event.REQUEST_CANCEL, (_R,),                     Actor.API,          "not asked yet"),
    Transition((_Q,),    Event.REPUBLISH,      (_Q,),                     Actor.RECONCILER,   "may run again"),
    Transition((_R,),    Event.REPUBLISH,      (_R,),                     Actor.RECONCILER,   "may run again"),
    Transition((_Q, _R), Event.SETTLE,         (_FAILED,),                Actor.RECONCILER,   "at the attempt cap"),
    Transition((_Q, _R), Event.SETTLE,         (_CANCELLED,),             Actor.RECONCILER,   "cancel asked"),
    Transition((_Q, _R), Event.SETTLE,         (_P,),                     Actor.RECONCILER,   "pause asked"),
    Transition((_Q,),    Event.PAUSE,          (_P,),                     Actor.API),
    Transition((_R,),    Event.REQUEST_PAUSE,  (_R,),                     Actor.API,          "neither asked yet"),
    Transition((_P,),    Event.RESUME,         (_Q,),                     Actor.API),
)  # fmt: skip


MACHINE = StateMachine(JobStatus, TRANSITIONS)
sources, targets = MACHINE.sources, MACHINE.targets
TERMINAL, ACTIVE = MACHINE.terminal, MACHINE.active  # TERMINAL: no event leaves them


def actor(event: Event) -> Actor:
    """Who makes `event`: one actor per event, since the actor says which lease fence its SQL has."""
    (by,) = {row.by for row in TRANSITIONS if row.event == event}
    return by


# what a tenant's cap on active jobs counts (store/quotas.py): a paused job holds no GPU and waits
# for no worker, so pausing makes room for another job; resuming one is checked against the cap
COUNTED_AS_ACTIVE = ACTIVE - {JobStatus.PAUSED}


def diagram() -> str:
    """The table as a Mermaid state diagram (docs/architecture.md holds this text)."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL}: create by api"]
    for row in TRANSITIONS:
        label = f"{row.event} by {row.by}" + (f", {row.when}" if row.when else "")
        lines += [f"    {source} --> {target}: {label}" for source in row.sources for target in row.targets]
    lines += [f"    {status} --> [*]" for status in JobStatus if status in TERMINAL]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m store.job_status > the diagram to paste into docs/architecture.md
    print(diagram(), end="")
