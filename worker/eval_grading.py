"""An eval item graded by every testing criterion (dora_graders), in OpenAI's output-item shapes.

Each criterion gives one `results` entry: `name`, `type`, `score` (the reward), `passed` (the
grader's own verdict for string_check and label_model, else `score >= pass_threshold`, or None
with no threshold) and `error` (OpenAI's flag and what failed) when the grader could not grade.
The item's status: `error` when a criterion errored (or a template names a field the item lacks),
else `fail` when one did not pass, else `pass`. Python graders are not run by the executor (no
sandbox here): they grade as errored, saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from dora_contract.graders import Grader
from dora_graders import Complete, GradingContext, ItemError, grade

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)
# grade(criteria, item, output_text, complete) -> (results, status)
Grade = Callable[[list[dict[str, Any]], dict[str, Any], str, Complete], tuple[list[dict[str, Any]], str]]


def grade_item(criteria: list[dict[str, Any]], item: dict[str, Any], output_text: str,
               complete: Complete) -> tuple[list[dict[str, Any]], str]:
    context = GradingContext(complete=complete)
    results = [_one(spec, item, output_text, context) for spec in criteria]
    if any(result["error"] is not None for result in results):
        return results, "error"
    if any(result["passed"] is False for result in results):
        return results, "fail"
    return results, "pass"


def _one(spec: dict[str, Any], item: dict[str, Any], output_text: str, context: GradingContext) -> dict[str, Any]:
    entry = {"name": spec.get("name", ""), "type": spec.get("type", ""), "score": 0.0, "passed": None,
             "sample": None, "error": None}
    try:
        grader = GRADER.validate_python(spec)
        result = grade(grader, output_text=output_text, item=item, context=context)
    except ItemError as missing:
        return entry | {"passed": False, "error": {"code": "invalid_variable_error", "message": missing.message}}
    except ValueError as invalid:  # a spec this server no longer accepts (checked when the eval was created)
        return entry | {"passed": False, "error": {"code": "other_error", "message": str(invalid)[:500]}}
    if result.error is not None:
        return entry | {"passed": False, "error": {"code": result.error, "message": result.message}}
    passed = result.passed
    threshold = spec.get("pass_threshold")
    if passed is None and threshold is not None:
        passed = result.reward >= float(threshold)
    return entry | {"score": result.reward, "passed": passed,
                    **({"label": result.label} if result.label is not None else {})}
