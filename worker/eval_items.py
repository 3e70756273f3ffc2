"""An eval run's items and what is sent for each: the data source read, the input messages rendered.

The run's `data_source` is OpenAI's, as the API stored it (checked there):
- `source`: `{"type": "file_content", "content": [{"item": {...}, "sample": {...}?}, ...]}` inline, or
  `{"type": "file_id", "id": "file-..."}`, a JSONL file in the artifact storage whose rows have
  that same shape (a row without an `item` key is the item itself);
- `type: "jsonl"`: no model; each row's `sample` (`{"output_text": ...}` or OpenAI's sample shape)
  is graded as it is;
- `type: "completions"`: `model`, `input_messages` (`{"type": "template", "template": [messages]}`
  rendered with `{{item.x}}`, or `{"type": "item_reference", "item_reference": "item.messages"}`),
  `sampling_params` (`temperature`, `max_completion_tokens`, `top_p`, `seed`), and the model the
  API resolved when it created the run (`served_model`): a completion is generated for each item.
An item index is its 0-based position in the source: the key of its output item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dora_contract.serving import CHAT_ROLES, AdapterRef, ChatMessage, SamplingParams
from dora_graders.templates import lookup, render
from store.eval_execution import RESOLVED_KEY
from store.models import File
from store.storage import Storage


class ItemInputError(ValueError):
    """This item cannot be sent (a template names a missing field, a message is malformed): the item
    is errored, the run goes on."""


@dataclass(frozen=True)
class Row:
    index: int
    item: dict[str, Any]
    sample: dict[str, Any] | None  # a jsonl run's given sample


@dataclass(frozen=True)
class ServedModel:
    """The base and adapter the run's model names (resolved by the API when the run was created)."""

    model: str  # as the user named it
    base_model: str
    adapter: AdapterRef | None

    @property
    def route_key(self) -> str:
        return self.adapter.key if self.adapter is not None else self.base_model


def rows_of(content: list[Any]) -> list[Row]:
    rows = []
    for index, row in enumerate(content):
        if isinstance(row, dict) and isinstance(row.get("item"), dict):
            sample = row.get("sample")
            rows.append(Row(index=index, item=row["item"], sample=sample if isinstance(sample, dict) else None))
        else:
            rows.append(Row(index=index, item=row if isinstance(row, dict) else {"value": row}, sample=None))
    return rows


def read_rows(data_source: dict[str, Any], *, storage: Storage, session_file: File | None) -> list[Row]:
    """Every row of the data source, in order (a file is read from the storage)."""
    source = data_source.get("source") or {}
    if source.get("type") == "file_content":
        return rows_of(list(source.get("content") or []))
    if session_file is None or session_file.storage_key is None:
        raise FileNotFoundError(f"the data source's file '{source.get('id')}' no longer exists")
    text = b"".join(storage.open_range(session_file.storage_key)).decode("utf-8")
    return rows_of([json.loads(line) for line in text.splitlines() if line.strip()])


def served_model(data_source: dict[str, Any]) -> ServedModel | None:
    """The model a completions run samples (None for jsonl)."""
    if data_source.get("type") != "completions":
        return None
    resolved = data_source.get(RESOLVED_KEY) or {}
    adapter = resolved.get("adapter")
    return ServedModel(model=data_source.get("model") or resolved.get("base_model", ""),
                       base_model=resolved.get("base_model") or data_source.get("model", ""),
                       adapter=AdapterRef.model_validate(adapter) if adapter else None)


def max_tokens_default(data_source: dict[str, Any]) -> int | None:
    """The operator's bound (DORA_MAX_COMPLETION_TOKENS when the API created the run) on a completion
    that sets no max tokens: the run's samples' and its judges'; None: what the context leaves."""
    return (data_source.get(RESOLVED_KEY) or {}).get("max_tokens_default")


def sampling(data_source: dict[str, Any]) -> SamplingParams:
    params = data_source.get("sampling_params") or {}
    chosen = {"max_tokens": params.get("max_completion_tokens"), "temperature": params.get("temperature"),
              "top_p": params.get("top_p"), "seed": params.get("seed"),
              "max_tokens_default": max_tokens_default(data_source)}
    return SamplingParams(**{key: value for key, value in chosen.items() if value is not None})


def input_messages(data_source: dict[str, Any], item: dict[str, Any]) -> list[ChatMessage]:
    """The chat sent for `item`; ItemInputError when the item lacks what the template names."""
    spec = data_source.get("input_messages") or {}
    namespace = {"item": item}
    try:
        if spec.get("type") == "item_reference":
            messages = lookup(spec["item_reference"], namespace)
            if not isinstance(messages, list):
                raise ItemInputError(f"'{spec['item_reference']}' is not a list of messages")
            return [_message(message, render_content=False, namespace=namespace) for message in messages]
        return [_message(message, render_content=True, namespace=namespace) for message in spec.get("template", [])]
    except ValueError as error:  # the renderer's ItemError, a message that is not a chat message
        raise ItemInputError(str(error)) from error


def _message(message: Any, *, render_content: bool, namespace: dict[str, Any]) -> ChatMessage:
    if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
        raise ItemInputError(f"not a chat message with a role of {', '.join(CHAT_ROLES)}: {str(message)[:200]}")
    return ChatMessage(role=message["role"], content=_text(message.get("content"), render_content, namespace))


def _text(content: Any, render_content: bool, namespace: dict[str, Any]) -> str:
    """A message's text: a string, an `input_text`/`output_text` part, or a list of them, joined."""
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        parts = [part if isinstance(part, str) else part.get("text", "") if isinstance(part, dict) else str(part)
                 for part in content]
        content = "\n".join(parts)
    text = "" if content is None else str(content)
    return render(text, namespace) if render_content else text
