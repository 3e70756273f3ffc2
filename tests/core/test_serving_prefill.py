"""Batched prefill: requests that join together prefill in one left-padded forward per group.

A row prefilled in a padded group must compute what it computes alone: in float64 the greedy tokens
are the same ids and every step's logprobs (the whole vocabulary) agree within the rounding budget.
Rows that finish at their first token, cancelled requests and a failing prefill behave as they did
when each request prefilled alone; the batch cache takes a left-padded group's rows.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import torch
from transformers import DynamicCache

from dora_core.serving import AdapterSlots, Engine, Failed, Finished, GenerationParams
from dora_core.serving.batch_cache import BatchCache
from dora_core.serving.prefill import MAX_PADDED_PER_REAL, PREFILL_TOKEN_BUDGET, left_padded, prefill_groups
from tests.support.numerics import assert_close_to_reference, budget, float64_model, model_budget
from tests.support.serving import collect, full_logprobs, load_tiny, random_adapter

NEW_TOKENS = 8
# (prompt, slot): lengths 9, 10, 11, 15, 10 with the tiny tokenizer prefill as one padded group; the 25-token
# prompt would make the group mostly padding and prefills alone (asserted below through prefill_groups)
REQUESTS = [("How do I boil an egg?", 1), ("What is the capital of France?", 2), ("The quick brown fox", 0),
            ("Once upon a time there was", 1), ("Low-rank adaptation trains", 3),
            ("She reads a book every week, and her brother plays", 2)]


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("prefill-adapters")
    base = load_tiny(tiny_model_dir)
    return [random_adapter(base, root / "dora", method="dora", rank=8, seed=1),
            random_adapter(base, root / "lora", method="lora", rank=4, seed=2),
            random_adapter(base, root / "dora-qv", method="dora", rank=5, seed=3, targets=("q_proj", "v_proj"))]


@contextmanager
def running_engine(model, tokenizer, folders, *, max_batch=16):
    slots = AdapterSlots.install(model, slots=len(folders) + 1, max_rank=8)
    for slot, folder in enumerate(folders, start=1):
        slots.load(slot, folder)
    engine = Engine(model, tokenizer, slots, max_batch=max_batch)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@contextmanager
def recorded_prefills(model):
    """(rows, width) of every forward of more than one column (a prefill; a decode step feeds one)."""
    shapes: list[tuple[int, int]] = []

    def record(module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            shapes.append(tuple(ids.shape))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield shapes
    finally:
        hook.remove()


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def test_prefill_groups_bound_the_padding():
    lengths = [9, 40, 10, 3, 11, 39, 2]
    groups = prefill_groups(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        rows = [lengths[i] for i in group]
        assert rows == sorted(rows)
        assert len(rows) * max(rows) <= max(MAX_PADDED_PER_REAL * sum(rows), max(rows))
    assert [[lengths[i] for i in group] for group in groups] == [[2, 3], [9, 10, 11], [39, 40]]
    assert prefill_groups([7] * 16) == [list(range(16))]  # equal prompts: one forward, no padding
    longest = PREFILL_TOKEN_BUDGET // 3
    assert prefill_groups([longest] * 4) == [[0, 1, 2], [3]]  # the token budget caps a group of long prompts
    assert prefill_groups([PREFILL_TOKEN_BUDGET + 1, 5]) == [[1], [0]]  # a longer prompt prefills alone
    assert prefill_groups([]) == []


def test_left_padded_inputs_number_each_rows_real_tokens_from_zero():
    ids, mask, positions = left_padded([[5, 6, 7], [8], [1, 2, 3, 4]], torch.device("cpu"))
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [1, 2, 3, 4]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert positions[mask.bool()].tolist() == [0, 1, 2, 0, 0, 1, 2, 3]


def test_the_batch_cache_adds_a_left_padded_group_of_rows(tiny_model_dir):
    config = load_tiny(tiny_model_dir).config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads

    def prefilled(rows, width):
        cache = DynamicCache(config=config)
        for index in range(config.num_hidden_layers):
            keys = torch.randn(rows, heads, width, dim)
            cache.update(keys, keys + 1.0, index)
        return cache

    batch = BatchCache()
    batch.add(prefilled(1, 4), 4)
    group = prefilled(4, 9)  # rows of 3, 9, 6 and 2 real tokens, left-padded to 9
    real = {row: group.layers[1].keys[row, :, 9 - n:].clone() for row, n in enumerate([3, 9, 6, 2])}
    for row, n in enumerate([3, 9, 6, 2]):
        group.layers[1].keys[row, :, :9 - n] = float("nan")  # what a fully masked query row may leave there
    batch.add_rows(group, [3, 9, 6, 2], keep=[3, 0, 2])  # row 1 (the longest) finished at its first token
    # the group lost its longest row: its first 3 columns were padding in every kept row and are trimmed
    assert batch.mask.tolist() == [[0, 0] + [1] * 4, [0] * 4 + [1] * 2, [0] * 3 + [1] * 3, [1] * 6]
    keys = batch.cache.layers[1].keys  # (rows, heads, 6, dim)
    assert keys.shape == (4, heads, 6, dim)
    assert torch.equal(keys[1, :, 4:], real[3]) and torch.equal(keys[2, :, 3:], real[0])
    assert torch.equal(keys[3], real[2])
    padding = ~batch.mask.bool()[:, None, :, None].expand_as(keys)
    assert torch.equal(keys[padding], torch.zeros_like(keys[padding]))  # zeros, the NaN gone
    assert torch.equal(batch.cache.layers[1].values[1, :, 4:], real[3] + 1.0)
    assert batch.next_positions().squeeze(1).tolist() == [4, 2, 3, 6]
    batch.add_rows(prefilled(2, 5), [5, 1], keep=[])  # every row finished: nothing joins
    assert batch.rows == 4
    with pytest.raises(ValueError, match="do not fit"):
        batch.add_rows(prefilled(2, 5), [5, 6])


def test_a_row_prefilled_in_a_padded_group_equals_the_row_prefilled_alone(folders, tiny_model_dir, tiny_tokenizer):
    """float64: DoRA, LoRA, a DoRA on two modules and base rows of different lengths prefill together; each
    row's greedy tokens are the ids it gets alone, its logprobs within the rounding budget of them."""
    model = float64_model(load_tiny(tiny_model_dir))
    vocab = model.config.vocab_size
    prompts = [_ids(tiny_tokenizer, text) for text, _ in REQUESTS]
    lengths = [len(prompt) for prompt in prompts]
    groups = prefill_groups(lengths)
    padded = [group for group in groups if len({lengths[i] for i in group}) > 1]
    assert len(groups) == 2 and len(padded) == 1 and len(padded[0]) == 5, groups
    params = GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=True,
                              top_logprobs=vocab)
    with running_engine(model, tiny_tokenizer, folders) as engine, recorded_prefills(model) as shapes:
        alone = [collect(engine.submit(prompt, slot, params))
                 for prompt, (_, slot) in zip(prompts, REQUESTS, strict=True)]
        assert shapes == [(1, n) for n in lengths]
        shapes.clear()
        with engine.slots.lock:  # all join in the same loop iteration
            handles = [engine.submit(prompt, slot, params) for prompt, (_, slot) in zip(prompts, REQUESTS, strict=True)]
        together = [collect(handle) for handle in handles]
    assert sorted(shapes) == sorted((len(group), max(lengths[i] for i in group)) for group in groups)
    # the logits of both runs are float64 computations of the same math, rounded to fp32 for sampling, and the
    # logprobs a log-softmax over the vocabulary in fp32
    tolerance = model_budget(model, torch.float64).plus(budget(torch.float32, stages=2, terms=vocab).value,
                                                        "fp32 logits and their log-softmax")
    for (text, slot), one, many in zip(REQUESTS, alone, together, strict=True):
        what = f"slot {slot}: {text!r}"
        assert many.finish == one.finish == Finished("length", len(_ids(tiny_tokenizer, text)), NEW_TOKENS), what
        assert many.token_ids == one.token_ids, what
        assert many.text == one.text, what
        assert_close_to_reference(torch.stack([full_logprobs(t, vocab) for t in many.tokens]),
                                  torch.stack([full_logprobs(t, vocab) for t in one.tokens]), tolerance, what=what)
    assert len({tuple(stream.token_ids) for stream in alone}) == len(REQUESTS)  # the rows are told apart


class Calls:
    """on_done callbacks: how many times each request's ran."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, name):
        def done():
            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
        return done


def test_rows_that_finish_at_once_or_were_cancelled_leave_a_group_as_they_left_alone(folders, tiny_model_dir,
                                                                                     tiny_tokenizer):
    model = load_tiny(tiny_model_dir)
    greedy = GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    short, middle, longest = (_ids(tiny_tokenizer, t) for t in ("Low-rank adaptation trains",
                                                                "Once upon a time there was",
                                                                "The quick brown fox jumps high"))
    assert len(short) < len(middle) < len(longest) and len(prefill_groups([len(short), len(middle), len(longest)])) == 1
    done = Calls()
    with running_engine(model, tiny_tokenizer, folders) as engine, recorded_prefills(model) as shapes:
        expected = [collect(engine.submit(prompt, 1, greedy)).token_ids for prompt in (short, middle)]
        shapes.clear()
        with engine.slots.lock:
            first_only = engine.submit(longest, 2, GenerationParams(max_tokens=1, temperature=0.0),
                                       on_done=done("first_only"))
            cancelled = engine.submit(middle, 3, greedy, on_done=done("cancelled"))
            cancelled.cancel()
            rows = [engine.submit(prompt, 1, greedy, on_done=done(name))
                    for name, prompt in (("short", short), ("middle", middle))]
        streams = [collect(handle) for handle in rows]
        finished_first, was_cancelled = collect(first_only), collect(cancelled)
    # one forward for the three that were not cancelled; the longest left after its first token, the
    # others decode in a batch whose leading columns (padding for them) were trimmed
    assert shapes == [(3, len(longest))]
    assert [stream.token_ids for stream in streams] == expected
    assert finished_first.finish == Finished("length", len(longest), 1) and len(finished_first.tokens) == 1
    assert was_cancelled.finish == Finished("cancelled", len(middle), 0)
    assert done.calls == {"first_only": 1, "cancelled": 1, "short": 1, "middle": 1}
    assert engine.running == 0


def test_a_failing_prefill_fails_only_its_own_groups_requests(folders, tiny_model_dir, tiny_tokenizer):
    """A prefill that raises (here: a hook that refuses a poisoned token) fails the requests of its group;
    another group prefilled in the same iteration and a row already decoding go on."""
    model = load_tiny(tiny_model_dir)
    poison = _ids(tiny_tokenizer, "Machine")[-1]

    def refuse(module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and bool((ids == poison).any()):
            raise RuntimeError("poisoned prefill")

    greedy = GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    long = _ids(tiny_tokenizer, "She reads a book every week, and her brother plays")
    poisoned, clean = _ids(tiny_tokenizer, "Machine"), _ids(tiny_tokenizer, "Thanks")
    assert poison not in long and poison not in clean and len(clean) > 1
    assert len(prefill_groups([len(poisoned), len(clean), len(long)])) == 2
    done = Calls()
    with running_engine(model, tiny_tokenizer, folders) as engine:
        expected_long = collect(engine.submit(long, 2, greedy)).token_ids
        expected_running = collect(engine.submit(clean, 1, GenerationParams(max_tokens=3 * NEW_TOKENS,
                                                                            temperature=0.0, ignore_eos=True)))
        running = engine.submit(clean, 1, GenerationParams(max_tokens=3 * NEW_TOKENS, temperature=0.0,
                                                           ignore_eos=True), on_done=done("running"))
        seen = next(running.events(timeout=60))  # it decodes: the others join a running batch
        hook = model.register_forward_pre_hook(refuse, with_kwargs=True)
        try:
            with engine.slots.lock:
                failing = [engine.submit(poisoned, 1, greedy, on_done=done("poisoned")),
                           engine.submit(clean, 3, greedy, on_done=done("clean"))]
                other_group = engine.submit(long, 2, greedy, on_done=done("long"))
            failed = [collect(handle) for handle in failing]
            streams = [collect(other_group), collect(running, already=(seen,))]
        finally:
            hook.remove()
        assert engine.alive
    for stream in failed:
        assert isinstance(stream.finish, Failed) and "poisoned prefill" in stream.finish.message
        assert stream.tokens == []
    assert streams[0].token_ids == expected_long
    assert streams[1].token_ids == expected_running.token_ids
    assert done.calls == {"poisoned": 1, "clean": 1, "long": 1, "running": 1}
