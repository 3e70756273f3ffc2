"""Prompt token ids from chat messages (the tokenizer's own chat template) or from plain text.

A template that fails on the messages, or a prompt that leaves no room for one generated token in
the model's context (max_position_embeddings), is the client's error: RequestError naming `param`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dora_core.serving.errors import RequestError


def context_length(model: Any) -> int:
    """The longest sequence (prompt + completion) the model has positions for."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.max_position_embeddings)


def render_chat(tokenizer: Any, messages: Sequence[dict[str, Any]], *, max_length: int,
                param: str = "messages") -> list[int]:
    """Token ids of `messages` through the chat template, ending with the assistant's turn opening."""
    if not messages:
        raise RequestError(param, "must hold at least one message")
    if getattr(tokenizer, "chat_template", None) is None:
        raise RequestError(param, "this model's tokenizer has no chat template; send a plain text prompt")
    try:
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    except Exception as error:  # noqa: BLE001 - jinja2 raises its own errors (TemplateError, a raise_exception()), all the client's
        raise RequestError(param, f"the chat template rejected these messages: {error}") from None
    if not isinstance(text, str):
        raise RequestError(param, "the chat template did not render to text")
    # the template writes the special tokens (BOS, role markers) itself
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return check_length(ids, max_length=max_length, param=param)


def render_text(tokenizer: Any, text: str, *, max_length: int, param: str = "prompt") -> list[int]:
    """Token ids of a plain completion prompt, with the tokenizer's special tokens (BOS) as for training."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise RequestError(param, "is empty")
    return check_length(ids, max_length=max_length, param=param)


def check_length(ids: list[int], *, max_length: int, param: str) -> list[int]:
    """ids, if they leave room for at least one generated token in `max_length` positions."""
    if len(ids) >= max_length:
        raise RequestError(param, f"is {len(ids)} tokens; this model's context holds {max_length} tokens, "
                                  "prompt and completion together")
    return ids
