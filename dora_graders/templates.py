"""`{{item.field}}` and `{{sample.output_text}}` templates: a small renderer with no code in it.

A reference is a dotted path into the namespaces `item` (the dataset row) and `sample` (the model's
output: `output_text`, `output_json` when the output is JSON, `choices[0].message.content`), with
`[n]` or `.n` for list indices. Nothing is evaluated: a path is looked up key by key, and a missing
key is an ItemError naming the reference, so a job can refuse data that lacks a field before it runs.
Strings render as they are, anything else as JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dora_graders.errors import ItemError

NAMESPACES = ("item", "sample")
_REFERENCE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+|\[\d+\])*$")
_STEP = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]")


def sample_namespace(output_text: str) -> dict[str, Any]:
    """`sample` for one model output, in OpenAI's shape (output_json is {} unless the text is JSON)."""
    try:
        output_json = json.loads(output_text)
    except ValueError:
        output_json = {}
    return {"output_text": output_text, "output_json": output_json,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": output_text}}]}


def references(template: str) -> list[str]:
    """The paths a template refers to, in order; a malformed one is an ItemError naming it."""
    found = []
    for match in _REFERENCE.finditer(template):
        path = match.group(1)
        if not _PATH.match(path) or path.split(".")[0].split("[")[0] not in NAMESPACES:
            raise ItemError(path, f"template reference '{{{{{path}}}}}' is not a path into item or sample "
                                  "(e.g. {{item.answer}}, {{sample.output_text}})")
        found.append(path)
    return found


def lookup(path: str, namespace: dict[str, Any]) -> Any:
    """The value `path` names; ItemError naming the first missing step."""
    head = re.match(r"[A-Za-z_][A-Za-z0-9_]*", path).group(0)
    value, walked = namespace.get(head), head
    if value is None and head not in namespace:
        raise ItemError(path, f"template references '{path}', but there is no '{head}'")
    for step in _STEP.finditer(path, len(head)):
        key, index = step.group(1), step.group(2)
        if index is None and isinstance(value, list) and key.isdigit():
            index = key
        if index is not None:
            position = int(index)
            if not isinstance(value, list) or position >= len(value):
                raise ItemError(path, f"template references '{path}', but '{walked}' has no element {position}")
            value = value[position]
        else:
            if not isinstance(value, dict) or key not in value:
                raise ItemError(path, f"template references '{path}', but '{walked}' has no field '{key}'")
            value = value[key]
        walked = walked + step.group(0)
    return value


def render(template: str, namespace: dict[str, Any]) -> str:
    """The template with each reference replaced by its value."""
    references(template)  # malformed references first, with their own message

    def value(match: re.Match) -> str:
        found = lookup(match.group(1), namespace)
        return found if isinstance(found, str) else json.dumps(found)

    return _REFERENCE.sub(value, template)
