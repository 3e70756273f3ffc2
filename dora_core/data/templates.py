"""Rendering an Example to text, and finding which characters of that text carry the loss.

Chat-shaped rows (chat, prompt/completion, Alpaca) are rendered with the tokenizer's own chat
template when it has one (`tokenizer.chat_template`), else with `DEFAULT_CHAT_TEMPLATE`:

    {bos}<|system|>\\n{system}{eos}\\n<|user|>\\n{prompt}{eos}\\n<|assistant|>\\n{completion}{eos}

(`{bos}`/`{eos}` are the tokenizer's tokens, left out when it has none; the generation prompt
is `\\n<|assistant|>\\n`). The lead can set it on the saved tokenizer so inference matches.
Plain-text rows are `{bos}{text}{eos}`, every character trained on.

Which characters are trained (the "spans") is found by rendering incrementally, which works
with any template and honours per-message `weight`: for assistant message i, the span starts
where the rendering of messages[:i] with the generation prompt ends, and stops where the
rendering of messages[:i+1] ends, so it covers the content and the template's end-of-turn
tokens but not the role header. Each partial rendering must be a prefix of the full one;
when it is not (templates that rewrite earlier turns, or refuse a partial conversation), the
message's content is searched for in the full text after the previous turns, and the content
(plus the end-of-turn tokens when the rendering through the message is a prefix) is trained
("content_search" in the report). A message that cannot be found
makes the row unusable (it is dropped and reported). `{% generation %}` blocks are not needed.

Known limit: text is rendered first and tokenised afterwards, so a user's text that spells a
special token (e.g. "<|end|>") is read as that token, as in most fine-tuning tools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dora_formats import TEXT, Example

DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif %}"
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{%- if eos_token %}{{ eos_token }}{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}{% endif %}"
)

Span = tuple[int, int]  # [start, end) character offsets into the rendered text


@dataclass(frozen=True, slots=True)
class RenderedExample:
    line: int
    text: str
    spans: tuple[Span, ...]  # sorted, non-overlapping; the characters that carry loss
    method: str  # "text" | "incremental" | "content_search": how the spans were found


class RenderError(ValueError):
    """The row cannot be rendered or its trained part cannot be located; it is dropped."""


def chat_template_for(tokenizer: Any) -> tuple[str, str]:
    """(template, where it came from): the tokenizer's own, or the documented default."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.get_chat_template(), "tokenizer"
    return DEFAULT_CHAT_TEMPLATE, "default"


def render_example(
    example: Example, tokenizer: Any, *, template: str, train_on_inputs: bool = False
) -> RenderedExample:
    """Render one row and find its trained character spans. Raises RenderError."""
    if example.format == TEXT:
        text = (tokenizer.bos_token or "") + example.segments[0].content + (tokenizer.eos_token or "")
        return RenderedExample(example.line, text, ((0, len(text)),), "text")
    messages = [{"role": segment.role, "content": segment.content} for segment in example.segments]

    def render(part: Sequence[dict[str, str]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            list(part), chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )

    try:
        full = render(messages, False)
    except Exception as error:  # jinja raises whatever the template author chose
        raise RenderError(f"chat template failed: {error}") from error
    spans, methods, excluded = [], set(), []
    cursor = 0
    for index, segment in enumerate(example.segments):
        if segment.role != "assistant":
            continue
        start, end, method = _assistant_span(full, messages, index, cursor, render)
        cursor = end
        methods.add(method)
        (spans if segment.trainable else excluded).append((start, end))
    if train_on_inputs:
        spans = _complement(excluded, len(full))
    method = "content_search" if "content_search" in methods else "incremental"
    return RenderedExample(example.line, full, tuple(spans), method)


def _assistant_span(
    full: str,
    messages: list[dict[str, str]],
    index: int,
    cursor: int,
    render: Callable[[Sequence[dict[str, str]], bool], str],
) -> tuple[int, int, str]:
    """Character span of assistant message `index` in `full` (see the module docstring)."""
    start = _prefix_length(full, render, messages[:index], True) if index > 0 else None
    end = _prefix_length(full, render, messages[: index + 1], False)
    if start is not None and end is not None and cursor <= start < end:
        return start, end, "incremental"
    before = _prefix_length(full, render, messages[:index], False) if index > 0 else None
    content = messages[index]["content"]
    found = full.find(content, max(cursor, before or 0))
    if found < 0:
        raise RenderError(f"could not locate messages[{index}] (assistant) in the text rendered by the chat template")
    content_end = found + len(content)
    return found, (end if end is not None and end >= content_end else content_end), "content_search"


def _prefix_length(
    full: str,
    render: Callable[[Sequence[dict[str, str]], bool], str],
    part: Sequence[dict[str, str]],
    generation_prompt: bool,
) -> int | None:
    """len(render(part)) when that rendering is a prefix of the full text, else None."""
    try:
        text = render(part, generation_prompt)
    except Exception:  # noqa: BLE001 - a chat template may raise anything on a partial conversation
        return None
    return len(text) if full.startswith(text) else None


def _complement(excluded: list[Span], length: int) -> list[Span]:
    """[0, length) minus the excluded spans (sorted, disjoint)."""
    spans, position = [], 0
    for start, end in excluded:
        if start > position:
            spans.append((position, start))
        position = max(position, end)
    if position < length:
        spans.append((position, length))
    return spans
