"""Samples: the model's greedy answers to a few validation prompts, at each evaluation.

Eval loss says how a run goes; a sample says what the model now answers, before anyone
downloads it. `ValidationSamples` takes the first `sample_prompts` validation rows that have a
prompt, in file order (the same rows at every evaluation, so answers can be compared step to
step), and renders each as the model is trained to see it:

- chat rows (`messages`, prompt/completion, Alpaca: dora_formats gives all three as segments)
  are rendered with the run's chat template (templates.chat_template_for) up to their last
  assistant turn, with the generation prompt; that turn's content is the expected answer;
- plain `text` rows have no prompt and are skipped, as are rows with no assistant turn after
  some context.

A prompt longer than `max_seq_len` tokens keeps its last `max_seq_len` (the end, where the
answer starts). Generation is greedy (`do_sample=False`), in eval mode with the adapter active,
with the KV cache on (training turns `config.use_cache` off), in left-padded batches, stopping
at the generation config's eos / end-of-turn tokens and the tokenizer's eos. Sampling must not
change the run: it saves and restores the torch generators, the train/eval mode and use_cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dora_core.data.templates import chat_template_for
from dora_core.stop_tokens import stop_token_ids  # the serving engine's too
from dora_formats import TEXT, Example

# characters of a prompt (its end) or an expected answer (its start) kept in a sample: enough
# to read, and a bound on what every evaluation writes to samples.jsonl and the database
SAMPLE_TEXT_LIMIT = 4000
ELLIPSIS = "\u2026"


@dataclass(frozen=True, slots=True)
class SamplePrompt:
    index: int  # 0-based position among the run's samples
    line: int  # the validation row's line (JSONL) or row (CSV/Parquet)
    prompt: str  # the rendered prompt, chat template and generation prompt included
    expected: str  # the row's last assistant turn
    input_ids: list[int]  # (prompt_tokens,) at most max_seq_len


def clip_end(text: str, limit: int = SAMPLE_TEXT_LIMIT) -> str:
    """The last `limit` characters, marked when cut (a prompt's end is where the answer starts)."""
    return text if len(text) <= limit else ELLIPSIS + text[-(limit - 1):]


def clip_start(text: str, limit: int = SAMPLE_TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def build_prompts(examples: Sequence[Example], tokenizer: Any, *, count: int, max_seq_len: int) -> list[SamplePrompt]:
    """The first `count` rows of `examples` (file order) that have a prompt, rendered."""
    template, _ = chat_template_for(tokenizer)
    prompts: list[SamplePrompt] = []
    for example in examples:
        if len(prompts) >= count:
            break
        last = _last_assistant(example)
        if last is None:
            continue
        messages = [{"role": s.role, "content": s.content} for s in example.segments[:last]]
        try:
            text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - jinja raises whatever the template author chose; no sample then
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-max_seq_len:]
        if ids:
            prompts.append(SamplePrompt(len(prompts), example.line, clip_end(text),
                                        clip_start(example.segments[last].content), ids))
    return prompts


def _last_assistant(example: Example) -> int | None:
    """Index of the row's last assistant segment, when something comes before it."""
    if example.format == TEXT:
        return None
    roles = [segment.role for segment in example.segments]
    last = len(roles) - 1 - roles[::-1].index("assistant") if "assistant" in roles else None
    return last if last else None


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[SamplePrompt], *, max_new_tokens: int,
                     batch_size: int, device: torch.device) -> list[str]:
    """Greedy answers, one per prompt, decoded without special tokens. Leaves the model's mode,
    use_cache and the torch generators (CPU, and the run's GPU) as they were."""
    was_training, use_cache = model.training, model.config.use_cache
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    answers: list[str] = []
    try:
        model.eval()
        model.config.use_cache = True
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                width = max(len(p.input_ids) for p in chunk)
                ids = torch.tensor([[pad] * (width - len(p.input_ids)) + p.input_ids for p in chunk])  # (batch, width)
                mask = torch.tensor([[0] * (width - len(p.input_ids)) + [1] * len(p.input_ids) for p in chunk])
                output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                        num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                        pad_token_id=pad, use_cache=True)  # (batch, width + new)
                answers += [_decode(row.tolist(), tokenizer, stops) for row in output[:, width:]]
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return answers


def _decode(new_ids: list[int], tokenizer: Any, stops: Sequence[int]) -> str:
    """The generated ids up to the first stop token (generate pads finished rows after it)."""
    end = next((i for i, token in enumerate(new_ids) if token in stops), len(new_ids))
    return tokenizer.decode(new_ids[:end], skip_special_tokens=True)


class ValidationSamples:
    """A run's sample prompts (rendered once, on first use) and their answers at a step."""

    def __init__(self, examples: Sequence[Example], tokenizer: Any, *, count: int, max_seq_len: int,
                 max_new_tokens: int) -> None:
        self.examples, self.tokenizer = examples, tokenizer
        self.count, self.max_seq_len, self.max_new_tokens = count, max_seq_len, max_new_tokens
        self._prompts: list[SamplePrompt] | None = None

    @property
    def prompts(self) -> list[SamplePrompt]:
        if self._prompts is None:
            self._prompts = build_prompts(self.examples, self.tokenizer, count=self.count,
                                          max_seq_len=self.max_seq_len) if self.count else []
        return self._prompts

    def generate(self, model: Any, *, step: int, batch_size: int, device: torch.device) -> list[dict]:
        """`[{"step", "index", "line", "prompt", "expected", "answer"}]`, empty when there is nothing to sample."""
        if not self.prompts:
            return []
        answers = generate_answers(model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                                   batch_size=batch_size, device=device)
        return [{"step": step, "index": p.index, "line": p.line, "prompt": p.prompt, "expected": p.expected,
                 "answer": clip_start(answer)} for p, answer in zip(self.prompts, answers, strict=True)]


class SamplesLog:
    """samples.jsonl: one line per sample. A step written again (a re-run final evaluation)
    replaces its lines; on resume, lines past the checkpoint's step are dropped with
    metrics.jsonl's (MetricsLog companions)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def truncate_after(self, step: int) -> None:
        self._rewrite([record for record in self.records() if record["step"] <= step])

    def write(self, step: int, samples: Sequence[dict]) -> None:
        self._rewrite([record for record in self.records() if record["step"] != step] + list(samples))

    def _rewrite(self, records: Sequence[dict]) -> None:
        if records or self.path.exists():
            self.path.write_text("".join(json.dumps(record) + "\n" for record in records))
