"""Helpers of the serving engine's tests (tests/core/test_serving_*.py): random adapters saved in
PEFT's format, the merged-model reference, reading an engine's event stream, and the `endless` model
the server and eval executor tests use to hold a slot (tests/serve, tests/worker/test_eval_runs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dora_core import AdapterConfig, AdapterLinear, apply_adapter, load_adapter, merge_adapter, save_adapter
from dora_core.model_loading import load_base_model
from dora_core.serving import Failed, Finished, GenerationHandle, TextDelta


def load_tiny(model_dir: Path, dtype: torch.dtype = torch.float32):
    return load_base_model(model_dir, dtype=dtype, device="cpu", local_files_only=True)


@torch.no_grad()
def save_endless_model(model_dir: Path, out: Path) -> Path:
    """The model at `model_dir` unable to choose an EOS token, saved with its tokenizer at `out`: the output
    rows of every EOS id are zero, so their logits (0) stay below the greedy choice (the largest of the other
    ones, random) and a greedy completion runs to its token limit or the context's end."""
    from dora_core.model_loading import load_tokenizer

    model = load_tiny(model_dir)
    eos = model.generation_config.eos_token_id
    model.lm_head.weight[[model.config.eos_token_id, *(eos if isinstance(eos, list) else [eos])]] = 0.0
    model.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    return out


@torch.no_grad()
def random_adapter(base, out: Path, *, method: str = "dora", rank: int = 8, seed: int = 0,
                   targets: str | tuple[str, ...] = "all-linear", b_scale: float = 0.2, in_place: bool = False) -> Path:
    """Save an adapter with random A, B (and m moved off ||W||) for `base` (left unchanged, unless
    `in_place`: then `base` keeps the adapter, e.g. to be merged as the reference without a second copy)."""
    import copy

    config = AdapterConfig(method=method, rank=rank, alpha=float(2 * rank), target_modules=targets)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = apply_adapter(base if in_place else copy.deepcopy(base), config)
    for module in model.modules():
        if isinstance(module, AdapterLinear):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * b_scale)
            if module.use_dora:
                noise = torch.randn(module.lora_magnitude_vector.shape, generator=generator)
                module.lora_magnitude_vector.mul_(1 + 0.1 * noise)
    return save_adapter(model, out)


def merged(base_loader, adapter_dir: Path):
    """The reference: a fresh base with the adapter merged into its weights."""
    return merge_adapter(load_adapter(base_loader(), adapter_dir)).eval()


@torch.no_grad()
def greedy_reference(model, prompt: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """generate(do_sample=False): (tokens before any EOS, whether it ended with an EOS)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=model.generation_config.pad_token_id or 0)
    tokens = out[0, len(prompt):].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i], True
    return tokens, False


@torch.no_grad()
def reference_logprobs(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits that predicted each of `tokens` (teacher forcing): (len(tokens), vocab)."""
    ids = torch.tensor([prompt + tokens[:-1]])
    logits = model(ids).logits[0, len(prompt) - 1:].double()
    return torch.log_softmax(logits, dim=-1)


@dataclass
class Stream:
    """Everything one request's events said."""

    text: str
    tokens: list  # TokenLogprob
    finish: Finished | Failed
    deltas: int

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]


def collect(handle: GenerationHandle, timeout: float = 60.0, *, already: tuple = ()) -> Stream:
    """Read the stream to its end; `already`: events the test read from it before."""
    text, tokens, deltas, finish = [], [], 0, None
    for event in (*already, *handle.events(timeout=timeout)):
        if isinstance(event, TextDelta):
            text.append(event.text)
            tokens.extend(event.tokens)
            deltas += 1
        else:
            finish = event
            break
    return Stream("".join(text), tokens, finish, deltas)


def full_logprobs(token, vocab: int) -> torch.Tensor:
    """A TokenLogprob's top_logprobs (asked for the whole vocabulary) as a (vocab,) float64 vector."""
    vector = torch.full((vocab,), float("nan"), dtype=torch.float64)
    for top in token.top_logprobs:
        vector[top.token_id] = top.logprob
    assert not torch.isnan(vector).any(), "top_logprobs did not cover the vocabulary"
    return vector
