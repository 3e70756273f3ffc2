"""An eval item graded by every testing criterion (dora_graders), in OpenAI's output-item shapes.

Each criterion gives one `results` entry: `name`, `type`, `score` (the reward), `passed` (the
grader's own verdict for string_check and label_model, else `score >= pass_threshold`, or None
with no threshold), `sample` (a model grader's judge call, OpenAI's sample shape: its input,
output, model and usage) and `error` (OpenAI's flag and what failed) when the grader could not
grade. A criterion that asked judges also gets `usage`, per judge model ({invocations,
prompt_tokens, completion_tokens}): the run's per_model_usage counts it (store/eval_execution.py).
The item's status: `error` when a criterion errored (or a template names a field the item lacks),
else `fail` when one did not pass, else `pass`.

Python graders run in dora_graders' PythonSandbox, a confined process per grade, where the
operator enabled them (DORA_PYTHON_GRADER_ENABLED); where not, they grade as errored
(`python_grader_server_error`), saying so (the API refuses such evals when it is off there too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from dora_contract.graders import Grader
from dora_graders import PYTHON_DISABLED, GraderSpecError, GradingContext, ItemError, JudgeReply, PythonSandbox, grade

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)


@dataclass(frozen=True)
class JudgeAnswer:
    """One judge call, as the executor made it: what the criterion's `sample` and `usage` record."""

    model: str  # as the grader names it (a base, an `ft:` model, a checkpoint)
    messages: list[dict[str, str]]
    text: str
    finish_reason: str | None
    usage: dict[str, int]  # prompt_tokens, completion_tokens, total_tokens

    def sample(self) -> dict[str, Any]:
        return {"input": self.messages, "output": [{"role": "assistant", "content": self.text}],
                "finish_reason": self.finish_reason, "model": self.model, "usage": self.usage, "error": None}


# judge(model, messages, sampling {max_tokens, temperature, top_p, seed}) -> JudgeAnswer; raises when it cannot
Judge = Callable[[str, list[dict[str, str]], dict[str, Any]], JudgeAnswer]


@dataclass(frozen=True)
class Graders:
    """What the executor lends the graders: a judge for model graders, a sandbox for python ones (None: off)."""

    judge: Judge | None = None
    python: PythonSandbox | None = None


# grade(criteria, item, output_text, graders) -> (results, status)
Grade = Callable[[list[dict[str, Any]], dict[str, Any], str, Graders], tuple[list[dict[str, Any]], str]]


def grade_item(criteria: list[dict[str, Any]], item: dict[str, Any], output_text: str,
               graders: Graders) -> tuple[list[dict[str, Any]], str]:
    results = [_one(spec, item, output_text, graders) for spec in criteria]
    if any(result["error"] is not None for result in results):
        return results, "error"
    if any(result["passed"] is False for result in results):
        return results, "fail"
    return results, "pass"


class _Calls:
    """The judge calls of one criterion (a multi grader may ask several, in its thread)."""

    def __init__(self, judge: Judge) -> None:
        self.judge, self.answers, self._lock = judge, [], threading.Lock()

    def complete(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> JudgeReply:
        answer = self.judge(model, messages, sampling)
        with self._lock:
            self.answers.append(answer)
        return JudgeReply(text=answer.text, total_tokens=answer.usage.get("total_tokens"))

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        if not self.answers:
            return entry
        usage: dict[str, dict[str, int]] = {}
        for answer in self.answers:
            counts = usage.setdefault(answer.model, {"invocations": 0, "prompt_tokens": 0, "completion_tokens": 0})
            counts["invocations"] += 1
            counts["prompt_tokens"] += int(answer.usage.get("prompt_tokens") or 0)
            counts["completion_tokens"] += int(answer.usage.get("completion_tokens") or 0)
        sample = self.answers[0].sample() if len(self.answers) == 1 else None
        return entry | {"sample": sample, "usage": usage}


def _one(spec: dict[str, Any], item: dict[str, Any], output_text: str, graders: Graders) -> dict[str, Any]:
    entry = {"name": spec.get("name", ""), "type": spec.get("type", ""), "score": 0.0, "passed": None,
             "sample": None, "error": None}
    calls = _Calls(graders.judge) if graders.judge is not None else None
    context = GradingContext(complete=calls.complete if calls is not None else None, python=graders.python)
    try:
        grader = GRADER.validate_python(spec)
        result = grade(grader, output_text=output_text, item=item, context=context)
    except ItemError as missing:
        return entry | {"passed": False, "error": {"code": "invalid_variable_error", "message": missing.message}}
    except GraderSpecError as refused:  # python graders where the operator did not enable them
        code = "python_grader_server_error" if refused.message == PYTHON_DISABLED else "other_error"
        return entry | {"passed": False, "error": {"code": code, "message": refused.message}}
    except ValueError as invalid:  # a spec this server no longer accepts (checked when the eval was created)
        return entry | {"passed": False, "error": {"code": "other_error", "message": str(invalid)[:500]}}
    if calls is not None:
        entry = calls.record(entry)
    if result.error is not None:
        return entry | {"passed": False, "error": {"code": result.error, "message": result.message}}
    passed = result.passed
    threshold = spec.get("pass_threshold")
    if passed is None and threshold is not None:
        passed = result.reward >= float(threshold)
    return entry | {"score": result.reward, "passed": passed,
                    **({"label": result.label} if result.label is not None else {})}
