"""A state machine written as data, and what is derived from its table, once for both tables: a
fine-tuning job's (store/job_status.py) and an eval run's (store/eval_status.py).

A table is one `Transition` row per (from, event, to, by). `StateMachine` derives from it the
`WHERE status IN (...)` of each event's function (`sources`), what an event may write (`targets`),
the statuses no event leaves (`terminal`) and the others (`active`): a new row changes all of them.
Kept free of SQL and of the models so store/models.py can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

Status = TypeVar("Status", bound=StrEnum)
EventT = TypeVar("EventT", bound=StrEnum)


class Actor(StrEnum):
    """Who makes a transition, which also says what the lease must be (store/job_predicates.py)."""

    API = "api"  # a user's request: whatever the lease
    WORKER = "worker"  # any worker, on a row no live lease holds
    LEASE_HOLDER = "lease holder"  # the worker whose (owner, attempt) holds the lease: the fence
    RECONCILER = "reconciler"  # on a row no live lease holds


@dataclass(frozen=True)
class Transition(Generic[Status, EventT]):
    """`event`, made by `by`, takes a row in any of `sources` to one of `targets` when `when` holds."""

    sources: tuple[Status, ...]
    event: EventT
    targets: tuple[Status, ...]
    by: Actor
    when: str = ""  # the condition besides status and lease, in words (its SQL: where the event is made)


class StateMachine(Generic[Status, EventT]):
    """What a table of transitions between `statuses` says, derived (see the module docstring)."""

    def __init__(self, statuses: type[Status], transitions: tuple[Transition[Status, EventT], ...]) -> None:
        self.transitions = transitions
        self.terminal = frozenset(statuses) - {source for row in transitions for source in row.sources}  # none leaves
        self.active = frozenset(statuses) - self.terminal

    def sources(self, event: EventT) -> frozenset[Status]:
        """The statuses `event` may leave: the `WHERE status IN (...)` of its function."""
        return frozenset(source for row in self.transitions if row.event == event for source in row.sources)

    def targets(self, event: EventT, source: Status | None = None) -> frozenset[Status]:
        """The statuses `event` may lead to (from `source`; from any source when None)."""
        return frozenset(target for row in self.transitions
                         if row.event == event and (source is None or source in row.sources) for target in row.targets)
