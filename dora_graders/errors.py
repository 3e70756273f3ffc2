"""The two ways a grader can be refused, and the runtime failures it reports instead of a reward.

`GraderSpecError`: the grader cannot run here at all (a metric that needs what is not installed, the
python grader where the operator has not enabled it); the API answers 400 naming `field`.
`ItemError`: this item or sample lacks what a template references; the API answers 400 for
graders/run, an eval marks that one item errored. Anything failing while grading (a judge's answer
that is no score, user code that raises or times out, a formula dividing by zero) is no exception:
the result carries OpenAI's error flag for it and a reward of 0 (dora_graders.result), except
`JudgeUnavailableError`, which a caller's judge raises when it cannot answer at all (not this sample's
fault): it leaves `grade` as it is, so the caller stops (the training worker fails the run).
"""

from __future__ import annotations


class GraderSpecError(ValueError):
    """The grader is invalid or unsupported here; `field` is its dotted path inside the grader."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class ItemError(ValueError):
    """A template references `reference` (e.g. `item.answer`), which the item or sample does not have."""

    def __init__(self, reference: str, message: str) -> None:
        super().__init__(message)
        self.reference, self.message = reference, message


class GradingError(Exception):
    """Grading this sample failed; `flag` is one of OpenAI's `metadata.errors` names (result.ERROR_FLAGS)."""

    def __init__(self, flag: str, details: str) -> None:
        super().__init__(details)
        self.flag, self.details = flag, details


class JudgeUnavailableError(Exception):
    """Raised by a caller's `complete` when its judge cannot answer at all (its model gone, no server):
    never flagged as a sample's error, it leaves `grade` to the caller (worker/judges.py)."""
