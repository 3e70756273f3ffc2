"""Per-row rules of the four dataset formats: recognise a row's format, check it, normalise it.

Formats and their fields (extra keys are ignored; `null` counts as absent):

- chat (OpenAI fine-tuning): `messages`, a non-empty list of `{"role", "content"}` objects with
  role `system`, `user` or `assistant` (other roles such as `tool` are rejected), non-empty
  string content, and an optional `weight` of 0 or 1 on assistant messages only. At least one
  assistant message must have weight 1 (the default), or the row has nothing to learn.
- prompt_completion: non-empty strings `prompt` and `completion` (for text without a prompt
  use the `text` format).
- alpaca: non-empty strings `instruction` and `output`; `input` is optional and may be empty.
  The user turn is `instruction`, or `instruction + "\\n\\n" + input` when input is non-empty.
- text: a non-empty string `text`; every token is trained on.
- preference (OpenAI's DPO format): `input` an object whose `messages` are chat messages (as
  above, none needs to be an assistant's), `preferred_output` and `non_preferred_output` each an
  array of exactly one assistant message with non-empty string content. Only DPO trains on it.
- prompts (OpenAI's reinforcement format): `messages` as chat's, but the last message is not an
  assistant's (the model writes the answer); every other key is the item a grader reads
  (`{{item.reference_answer}}`). Only reinforcement fine-tuning trains on it.

A row's format is recognised from its keys, first match wins: `preferred_output` or
`non_preferred_output` -> preference, `messages` ending with a non-assistant message -> prompts,
`messages` -> chat,
`instruction` or `output` -> alpaca, an object `input` -> preference, `prompt` or `completion` ->
prompt_completion, `text` -> text (Alpaca exports often carry a `text` column too, hence the order).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dora_formats.records import (
    ALPACA,
    CHAT,
    MAX_JSON_DEPTH,
    PREFERENCE,
    PROMPT_COMPLETION,
    PROMPTS,
    ROLES,
    TEXT,
    TEXT_ROLE,
    Example,
    Segment,
)

Problem = tuple[str | None, str]  # (field path or None, message)

# `\ud800` in JSON text is valid JSON (RFC 8259 allows the escape) but not Unicode text: no
# tokenizer, UTF-8 encoder or database takes it. A surrogate pair is joined by the JSON reader,
# so any surrogate left in a parsed string is a lone one.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

ALPACA_INPUT_SEPARATOR = "\n\n"


def json_type(value: object) -> str:
    """The JSON name of a Python value's type, for messages users can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def deep_or_not_text(value: object, path: str = "", depth: int = 1) -> Problem | None:
    """The first array or object nested more than MAX_JSON_DEPTH levels deep, or string or key
    holding a lone surrogate, in a parsed row (`path` like `messages[1].content`); None if none."""
    if isinstance(value, str):
        match = LONE_SURROGATE.search(value)
        return None if match is None else (path or None, _lone_surrogate("field", path or "row", match.group()))
    if not isinstance(value, dict | list):
        return None
    if depth > MAX_JSON_DEPTH:
        return path or None, f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (problem := deep_or_not_text(item, f"{path}[{index}]", depth + 1)) is not None:
                return problem
        return None
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and (match := LONE_SURROGATE.search(key)) is not None:
            shown = LONE_SURROGATE.sub(lambda m: _escaped(m.group()), where)
            return shown, _lone_surrogate("key", shown, match.group())
        if (problem := deep_or_not_text(item, where, depth + 1)) is not None:
            return problem
    return None


def _escaped(character: str) -> str:
    return f"\\u{ord(character):04x}"


def _lone_surrogate(what: str, where: str, character: str) -> str:
    return f"{what} '{where}' contains a lone surrogate ({_escaped(character)}), which is not valid Unicode text"


def detect_format(row: Mapping[str, Any]) -> str | None:
    """The format a row's keys point to, or None when it has none of the known fields."""
    if "preferred_output" in row or "non_preferred_output" in row:
        return PREFERENCE
    if "messages" in row:
        return PROMPTS if _ends_before_an_answer(row["messages"]) else CHAT
    if "instruction" in row or "output" in row:
        return ALPACA
    if isinstance(row.get("input"), Mapping):  # Alpaca's input is a string
        return PREFERENCE
    if "prompt" in row or "completion" in row:
        return PROMPT_COMPLETION
    if "text" in row:
        return TEXT
    return None


def _ends_before_an_answer(messages: object) -> bool:
    """A message list whose last message is an object with a known role other than assistant's (an
    unknown role, `robot`, reads as chat, whose check then names that role)."""
    if not isinstance(messages, (list, tuple)) or not messages or not isinstance(messages[-1], Mapping):
        return False
    role = messages[-1].get("role")
    return isinstance(role, str) and role in ROLES and role != "assistant"


def unrecognised_row_message(row: Mapping[str, Any]) -> str:
    keys = ", ".join(repr(key) for key in list(row)[:10]) or "none"
    return (
        "row has none of the dataset fields: expected 'messages' (chat), 'prompt' and 'completion', "
        "'instruction' and 'output' (Alpaca), 'text', or 'input', 'preferred_output' and 'non_preferred_output' "
        f"(preference); found keys: {keys}"
    )


def check_row(row: Mapping[str, Any], fmt: str) -> list[Problem]:
    """Every problem with `row` read as format `fmt`; an empty list means it can be normalised."""
    if fmt == CHAT:
        return _check_chat(row)
    if fmt == PROMPT_COMPLETION:
        return _required_text(row, "prompt") + _required_text(row, "completion")
    if fmt == ALPACA:
        return _required_text(row, "instruction") + _optional_text(row, "input") + _required_text(row, "output")
    if fmt == TEXT:
        return _required_text(row, "text")
    if fmt == PREFERENCE:
        return _check_preference(row)
    if fmt == PROMPTS:
        return [problem for index, message in enumerate(row["messages"])
                for problem in _check_message(message, f"messages[{index}]")]
    raise ValueError(f"unknown dataset format {fmt!r}")


def to_example(row: Mapping[str, Any], fmt: str, *, line: int) -> Example:
    """Normalise a row that `check_row` accepted into segments with their default trainability."""
    if fmt == CHAT:
        segments = tuple(_message_segment(message) for message in row["messages"])
    elif fmt == PROMPT_COMPLETION:
        segments = (Segment("user", row["prompt"], False), Segment("assistant", row["completion"], True))
    elif fmt == ALPACA:
        extra = row.get("input") or ""
        prompt = row["instruction"] + (ALPACA_INPUT_SEPARATOR + extra if extra.strip() else "")
        segments = (Segment("user", prompt, False), Segment("assistant", row["output"], True))
    elif fmt == TEXT:
        segments = (Segment(TEXT_ROLE, row["text"], True),)
    elif fmt == PREFERENCE:
        prompt = tuple(Segment(m["role"], m["content"], False) for m in row["input"]["messages"])
        chosen, rejected = (Segment("assistant", row[name][0]["content"], True) for name in _PREFERENCE_OUTPUTS)
        return Example(line=line, format=fmt, segments=(*prompt, chosen), rejected=(*prompt, rejected))
    elif fmt == PROMPTS:
        segments = tuple(Segment(m["role"], m["content"], False) for m in row["messages"])
        return Example(line=line, format=fmt, segments=segments, item=dict(row))
    else:
        raise ValueError(f"unknown dataset format {fmt!r}")
    return Example(line=line, format=fmt, segments=segments)


def _message_segment(message: Mapping[str, Any]) -> Segment:
    trainable = message["role"] == "assistant" and message.get("weight") != 0
    return Segment(message["role"], message["content"], trainable)


def _required_text(row: Mapping[str, Any], name: str) -> list[Problem]:
    if name not in row:
        return [(name, f"missing field '{name}'")]
    return _text_value(row[name], name, allow_empty=False)


def _optional_text(row: Mapping[str, Any], name: str) -> list[Problem]:
    if row.get(name) is None:
        return []
    return _text_value(row[name], name, allow_empty=True)


def _text_value(value: object, path: str, *, allow_empty: bool) -> list[Problem]:
    if not isinstance(value, str):
        return [(path, f"field '{path}' must be a string, got {json_type(value)}")]
    if not allow_empty and not value.strip():
        return [(path, f"field '{path}' is empty")]
    return []


def _check_chat(row: Mapping[str, Any]) -> list[Problem]:
    messages = row["messages"]
    if not isinstance(messages, (list, tuple)):
        return [("messages", f"field 'messages' must be an array of message objects, got {json_type(messages)}")]
    if not messages:
        return [("messages", "field 'messages' is empty")]
    problems: list[Problem] = []
    for index, message in enumerate(messages):
        problems += _check_message(message, f"messages[{index}]")
    if not problems and not any(_message_segment(message).trainable for message in messages):
        problems.append(("messages", "no assistant message to train on (need an assistant message without weight 0)"))
    return problems


def _check_message(message: object, path: str) -> list[Problem]:
    if not isinstance(message, Mapping):
        return [(path, f"{path} must be an object, got {json_type(message)}")]
    problems: list[Problem] = []
    role = message.get("role")
    if role is None:
        problems.append((f"{path}.role", f"{path}.role is missing"))
    elif not isinstance(role, str):
        problems.append((f"{path}.role", f"{path}.role must be a string, got {json_type(role)}"))
    elif role not in ROLES:
        allowed = ", ".join(ROLES)
        problems.append((f"{path}.role", f"{path}.role {role!r} is not supported (allowed: {allowed})"))
    content = message.get("content")
    if content is None and message.get("tool_calls") is not None:
        problems.append((f"{path}.content", f"{path} has tool_calls, which are not supported; content is required"))
    elif content is None:
        problems.append((f"{path}.content", f"{path}.content is missing"))
    else:
        problems += _text_value(content, f"{path}.content", allow_empty=False)
    problems += _check_weight(message.get("weight"), role, f"{path}.weight")
    return problems


def _check_weight(weight: object, role: object, path: str) -> list[Problem]:
    if weight is None:
        return []
    if isinstance(weight, bool) or weight not in (0, 1):
        return [(path, f"{path} must be 0 or 1, got {weight!r}")]
    if role != "assistant":
        return [(path, f"{path} is only allowed on assistant messages")]
    return []


_PREFERENCE_OUTPUTS = ("preferred_output", "non_preferred_output")


def _check_preference(row: Mapping[str, Any]) -> list[Problem]:
    """input.messages (chat messages, the prompt) and the two one-message assistant outputs."""
    problems: list[Problem] = []
    prompt = row.get("input")
    if prompt is None:
        problems.append(("input", "missing field 'input' (an object with the prompt's 'messages')"))
    elif not isinstance(prompt, Mapping):
        problems.append(("input", f"field 'input' must be an object with 'messages', got {json_type(prompt)}"))
    else:
        messages = prompt.get("messages")
        if not isinstance(messages, (list, tuple)) or not messages:
            shown = "missing" if messages is None else ("empty" if isinstance(messages, (list, tuple))
                                                        else f"a {json_type(messages)}")
            problems.append(("input.messages", f"field 'input.messages' must be a non-empty array of messages, "
                                               f"is {shown}"))
        else:
            for index, message in enumerate(messages):
                problems += _check_message(message, f"input.messages[{index}]")
    for name in _PREFERENCE_OUTPUTS:
        problems += _check_output(row.get(name), name)
    return problems


def _check_output(value: object, name: str) -> list[Problem]:
    """An output is an array of exactly one assistant message (OpenAI's single-turn DPO)."""
    if value is None:
        return [(name, f"missing field '{name}' (an array of one assistant message)")]
    if not isinstance(value, (list, tuple)) or len(value) != 1:
        got = f"{len(value)} messages" if isinstance(value, (list, tuple)) else f"a {json_type(value)}"
        return [(name, f"field '{name}' must be an array of exactly one assistant message, got {got}")]
    problems = _check_message(value[0], f"{name}[0]")
    role = value[0].get("role") if isinstance(value[0], Mapping) else None
    if isinstance(role, str) and role in ROLES and role != "assistant":
        problems.append((f"{name}[0].role", f"{name}[0].role must be 'assistant', got {role!r}"))
    return problems
