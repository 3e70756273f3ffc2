"""`check` a grader once, `grade` a sample with it: one entry point for every grader type.

`check(grader, context)` raises GraderSpecError for what cannot run here (meteor without WordNet,
python where not enabled, a judge where no judge can be reached, a formula that is no formula).
`check_item(grader, item, sample)` raises ItemError for a template reference the item lacks (an RFT
job checks its training rows with it). `grade(...)` returns a GradeResult: failures while grading
are flagged in it, never raised, so one bad sample never stops an eval or a training step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dora_contract.graders import (
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from dora_graders import formula, judges, similarity
from dora_graders.errors import GraderSpecError, GradingError
from dora_graders.judges import Complete
from dora_graders.result import GradeResult
from dora_graders.sandbox import PythonSandbox
from dora_graders.templates import references, render, sample_namespace

PYTHON_DISABLED = ("the 'python' grader type is disabled on this server; the operator enables it with "
                   "DORA_PYTHON_GRADER_ENABLED=true (user code then runs in a confined process)")


@dataclass(frozen=True)
class GradingContext:
    """What the caller lends the graders: a judge to ask, a python sandbox (None: python disabled)."""

    complete: Complete | None = None
    python: PythonSandbox | None = None


def asks_a_judge(grader: Any) -> bool:
    """Whether the grader (or one inside a multi grader) is a score_model or label_model: it grades
    only where its caller lends a judge (GradingContext.complete)."""
    if isinstance(grader, MultiGrader):
        return any(asks_a_judge(sub) for sub in grader.graders.values())
    return isinstance(grader, ScoreModelGrader | LabelModelGrader)


def check(grader: Any, context: GradingContext, *, field: str = "") -> None:
    where = f"{field}." if field else ""
    if isinstance(grader, TextSimilarityGrader):
        try:
            similarity.check_metric(grader.evaluation_metric)
        except GraderSpecError as error:
            raise GraderSpecError(where + error.field, error.message) from None
    elif isinstance(grader, PythonGrader) and context.python is None:
        raise GraderSpecError(where + "type", PYTHON_DISABLED)
    elif isinstance(grader, MultiGrader):
        for name, sub in grader.graders.items():
            check(sub, context, field=f"{where}graders.{name}")
        try:
            formula.check(grader.calculate_output, set(grader.graders))
        except GraderSpecError as error:
            raise GraderSpecError(where + error.field, error.message) from None
    for template in _templates(grader):
        references(template)


def check_item(grader: Any, item: Any, output_text: str = "") -> None:
    """ItemError naming the first reference that `item` (or a sample) does not have."""
    namespace = {"item": item, "sample": sample_namespace(output_text)}
    for template in _templates(grader):
        render(template, namespace)


def _templates(grader: Any) -> list[str]:
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        return [grader.input, grader.reference]
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return [text for message in grader.input for text in judges.message_templates(message)]
    if isinstance(grader, MultiGrader):
        return [text for sub in grader.graders.values() for text in _templates(sub)]
    return []


def grade(grader: Any, *, output_text: str, item: Any, context: GradingContext) -> GradeResult:
    """Grade one model output (`sample.output_text`) for one dataset row (`item`).

    A template referencing what the item lacks raises ItemError (it is the data's fault, not the sample's).
    """
    started = time.perf_counter()
    namespace = {"item": item, "sample": sample_namespace(output_text)}
    result = _grade(grader, namespace, context)
    result.execution_time = time.perf_counter() - started
    return result


def _grade(grader: Any, namespace: dict[str, Any], context: GradingContext) -> GradeResult:
    result = GradeResult(name=grader.name, type=grader.type)
    try:
        if isinstance(grader, StringCheckGrader):
            result.reward = _string_check(grader, namespace)
            result.passed = result.reward == 1.0
        elif isinstance(grader, TextSimilarityGrader):
            metric = similarity.METRICS[grader.evaluation_metric]
            result.reward = metric(render(grader.input, namespace), render(grader.reference, namespace))
        elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
            _judge(grader, namespace, context, result)
        elif isinstance(grader, PythonGrader):
            if context.python is None:
                raise GraderSpecError("type", PYTHON_DISABLED)
            result.reward = context.python.run(grader.source, namespace["sample"], namespace["item"])
        elif isinstance(grader, MultiGrader):
            _multi(grader, namespace, context, result)
        else:
            raise GraderSpecError("type", f"unknown grader type {type(grader).__name__}")
    except GradingError as failure:
        result.reward, result.error, result.message = 0.0, failure.flag, failure.details
    return result


def _string_check(grader: StringCheckGrader, namespace: dict[str, Any]) -> float:
    given, reference = render(grader.input, namespace), render(grader.reference, namespace)
    outcome = {"eq": given == reference, "ne": given != reference, "like": reference in given,
               "ilike": reference.casefold() in given.casefold()}[grader.operation]
    return 1.0 if outcome else 0.0


def _judge(grader: ScoreModelGrader | LabelModelGrader, namespace: dict[str, Any], context: GradingContext,
           result: GradeResult) -> None:
    reply = judges.ask(context.complete, grader, namespace)
    result.sampled_model_name = grader.model
    if reply.total_tokens is not None:
        result.tokens_per_model[grader.model] = reply.total_tokens
    if isinstance(grader, ScoreModelGrader):
        result.reward = judges.parse_score(reply.text, grader.range)
    else:
        result.label = judges.parse_label(reply.text, grader.labels)
        result.passed = result.label in grader.passing_labels
        result.reward = 1.0 if result.passed else 0.0


def _multi(grader: MultiGrader, namespace: dict[str, Any], context: GradingContext, result: GradeResult) -> None:
    for name, sub in grader.graders.items():
        sub_result = _grade(sub, namespace, context)
        result.sub_results[name] = sub_result
        result.sub_rewards[name] = sub_result.reward
        for model, count in sub_result.tokens_per_model.items():
            result.tokens_per_model[model] = result.tokens_per_model.get(model, 0) + count
    failed = [name for name, sub in result.sub_results.items() if sub.error is not None]
    if failed:
        first = result.sub_results[failed[0]]
        raise GradingError(first.error, f"grader '{failed[0]}': {first.message}")
    result.reward = formula.evaluate(grader.calculate_output, result.sub_rewards)
