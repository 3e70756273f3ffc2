"""score_model and label_model: the prompt for the judge, and what its answer means.

The judge is any model the caller can reach: the caller injects `complete(model, messages, sampling)`
(the API's inference routing, or the worker's engine), so this package holds no HTTP. Its answer is
read as OpenAI documents the structured output of these graders: a JSON object whose `result` is the
score or the label; a small model that answers in plain text is read as the first number (score) or
the label alone (label, case-insensitive, quotes and a final period stripped). Anything else is a
`model_grader_parse_error`; a score outside `range` too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dora_contract.graders import GraderMessage, JudgeSampling, LabelModelGrader, ScoreModelGrader
from dora_graders.errors import GradingError, JudgeUnavailableError
from dora_graders.templates import references, render


@dataclass(frozen=True)
class JudgeReply:
    """What `complete` may return instead of a plain string, to report the judge's token usage."""

    text: str
    total_tokens: int | None = None


# complete(model, messages [{"role", "content"}], sampling {max_tokens, temperature, top_p, seed}) -> text
Complete = Callable[[str, list[dict[str, str]], dict[str, Any]], "str | JudgeReply"]
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def message_templates(message: GraderMessage) -> list[str]:
    content = message.content if isinstance(message.content, list) else [message.content]
    return [part if isinstance(part, str) else part.text for part in content]


def message_references(grader: ScoreModelGrader | LabelModelGrader) -> list[str]:
    return [ref for message in grader.input for text in message_templates(message) for ref in references(text)]


def render_messages(grader: ScoreModelGrader | LabelModelGrader, namespace: dict[str, Any]) -> list[dict[str, str]]:
    """The judge's chat: each message's text parts rendered and joined with newlines."""
    return [{"role": message.role, "content": "\n".join(render(text, namespace)
                                                        for text in message_templates(message))}
            for message in grader.input]


def sampling(params: JudgeSampling | None) -> dict[str, Any]:
    if params is None:
        return {}
    chosen = {"max_tokens": params.max_completions_tokens, "temperature": params.temperature,
              "top_p": params.top_p, "seed": params.seed}
    return {key: value for key, value in chosen.items() if value is not None}


def ask(complete: Complete | None, grader: ScoreModelGrader | LabelModelGrader,
        namespace: dict[str, Any]) -> JudgeReply:
    if complete is None:
        raise GradingError("model_grader_server_error", "no judge model can be reached from here")
    messages = render_messages(grader, namespace)
    try:
        reply = complete(grader.model, messages, sampling(grader.sampling_params))
    except JudgeUnavailableError:  # the caller's: not this sample's failure, so it stops the caller
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the judge is this one grader error, reported
        raise GradingError("model_grader_server_error", f"the judge '{grader.model}' failed: {error}") from None
    return reply if isinstance(reply, JudgeReply) else JudgeReply(text=str(reply))


def _structured(text: str) -> Any:
    try:
        parsed = json.loads(text.strip())
    except ValueError:
        return None
    return parsed.get("result") if isinstance(parsed, dict) else None


def parse_score(text: str, bounds: tuple[float, float]) -> float:
    result = _structured(text)
    if result is None:
        match = _NUMBER.search(text)
        result = match.group(0) if match else None
    try:
        score = float(result)
    except (TypeError, ValueError):
        raise GradingError("model_grader_parse_error", f"the judge's answer holds no score: {text[:200]!r}") from None
    if not (math.isfinite(score) and bounds[0] <= score <= bounds[1]):
        raise GradingError("model_grader_parse_error",
                             f"the judge's score {score:g} is outside the range {list(bounds)}")
    return score


def parse_label(text: str, labels: tuple[str, ...]) -> str:
    result = _structured(text)
    answer = (result if isinstance(result, str) else text).strip().rstrip(".").strip().strip("\"'`").strip()
    for label in labels:
        if answer == label:
            return label
    folded = [label for label in labels if label.casefold() == answer.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise GradingError("model_grader_parse_error",
                         f"the judge's answer is none of the labels {list(labels)}: {text[:200]!r}")

