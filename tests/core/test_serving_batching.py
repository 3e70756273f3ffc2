"""Continuous batching: requests join a running batch and leave it (finished or cancelled), finish
reasons (length, stop string, EOS), seeded sampling that ignores the rest of the batch, max_batch."""

from __future__ import annotations

import threading

import pytest
import torch

from dora_core.serving import AdapterSlots, Engine, Finished, GenerationParams, UnsupportedModelError
from tests.support.serving import collect, greedy_reference, load_tiny, merged, random_adapter

GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("batching-adapters")
    base = load_tiny(tiny_model_dir)
    return {"dora": random_adapter(base, root / "dora", method="dora", rank=8, seed=1),
            "lora": random_adapter(base, root / "lora", method="lora", rank=4, seed=2)}


@pytest.fixture
def engine(tiny_model_dir, tiny_tokenizer, folders):
    """An engine on the tiny model: "dora" in slot 1, slot 2 free."""
    model = load_tiny(tiny_model_dir)
    slots = AdapterSlots.install(model, slots=3, max_rank=8)
    slots.load(1, folders["dora"])
    engine = Engine(model, tiny_tokenizer, slots, max_batch=8)
    engine.start()
    yield engine
    engine.stop()


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


class Counter:
    """on_done callbacks: how many times each request's ran."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, name):
        def done():
            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
        return done


def test_a_request_joins_a_running_batch_on_an_adapter_loaded_meanwhile(engine, folders, tiny_model_dir,
                                                                        tiny_tokenizer):
    loader = lambda: load_tiny(tiny_model_dir)  # noqa: E731 - a one-line factory
    prompt_a, prompt_b = _ids(tiny_tokenizer, "The quick brown fox"), _ids(tiny_tokenizer, "Machine")
    done = Counter()
    a = engine.submit(prompt_a, 1, GenerationParams(max_tokens=48, **GREEDY), on_done=done("a"))
    first = next(a.events(timeout=60))
    with engine.slots.lock:  # the engine waits between two steps of a
        assert engine.running == 1
        engine.slots.load(2, folders["lora"])  # the lock is reentrant: the copy lands now
        b = engine.submit(prompt_b, 2, GenerationParams(max_tokens=16, **GREEDY), on_done=done("b"))
    stream_a, stream_b = collect(a, already=(first,)), collect(b)
    expected_a, _ = greedy_reference(merged(loader, folders["dora"]), prompt_a, 48)
    expected_b, _ = greedy_reference(merged(loader, folders["lora"]), prompt_b, 16)
    assert len(expected_a) > 20, "a must still be decoding when b joins"
    assert stream_a.token_ids == expected_a
    assert stream_b.token_ids == expected_b
    assert engine.running == 0
    assert done.calls == {"a": 1, "b": 1}


def test_cancel_removes_a_row_and_the_others_go_on(engine, tiny_model_dir, tiny_tokenizer):
    base = load_tiny(tiny_model_dir)
    prompt = _ids(tiny_tokenizer, "Once upon a time there was")
    done = Counter()
    long = engine.submit(prompt, 1, GenerationParams(max_tokens=500, **GREEDY), on_done=done("long"))
    other = engine.submit(prompt, 0, GenerationParams(max_tokens=24, **GREEDY), on_done=done("other"))
    events = long.events(timeout=60)
    seen = [next(events) for _ in range(3)]
    long.cancel()
    stream = collect(long, already=tuple(seen))
    assert stream.finish.finish_reason == "cancelled"
    assert 3 <= stream.finish.completion_tokens < 500
    expected, _ = greedy_reference(base, prompt, 24)
    assert collect(other).token_ids == expected
    assert done.calls == {"long": 1, "other": 1}


def test_max_batch_queues_requests_and_a_waiting_request_can_be_cancelled(tiny_model_dir, tiny_tokenizer):
    model = load_tiny(tiny_model_dir)
    engine = Engine(model, tiny_tokenizer, AdapterSlots.install(model, slots=2, max_rank=4), max_batch=1)
    engine.start()
    try:
        prompt = _ids(tiny_tokenizer, "Numbers: zero one two")
        with engine.slots.lock:
            first = engine.submit(prompt, 0, GenerationParams(max_tokens=12, **GREEDY))
            queued = engine.submit(prompt, 0, GenerationParams(max_tokens=12, **GREEDY))
            waiting = engine.submit(prompt, 0, GenerationParams(max_tokens=12, **GREEDY))
            waiting.cancel()
        streams = [collect(first), collect(queued), collect(waiting)]
    finally:
        engine.stop()
    assert streams[0].token_ids == streams[1].token_ids == greedy_reference(load_tiny(tiny_model_dir), prompt, 12)[0]
    assert streams[2].finish == Finished("cancelled", len(prompt), 0)


def test_finish_reasons_length_stop_string_and_eos(tiny_model_dir, tiny_tokenizer):
    model = load_tiny(tiny_model_dir)
    prompt = _ids(tiny_tokenizer, "What is the capital of France?")
    expected, _ = greedy_reference(load_tiny(tiny_model_dir), prompt, 20)
    assert len(expected) == 20, "the prompt must not end in an EOS within 20 tokens"
    eos = expected[12]  # made an EOS token of this engine; it may come up before position 12 too
    first_eos = expected.index(eos)
    before_eos = tiny_tokenizer.decode(expected[:first_eos], skip_special_tokens=True)
    start = next(i for i in range(2, len(before_eos) - 3) if before_eos.find(before_eos[i:i + 3]) == i)
    stop = before_eos[start:start + 3]
    model.generation_config.eos_token_id = [*model.generation_config.eos_token_id, eos]
    engine = Engine(model, tiny_tokenizer, AdapterSlots.install(model, slots=2, max_rank=4))
    assert eos in engine.eos_ids
    engine.start()
    try:
        by_length = collect(engine.submit(prompt, 0, GenerationParams(max_tokens=3, **GREEDY)))
        by_stop = collect(engine.submit(prompt, 0, GenerationParams(max_tokens=20, stop=("zzz", stop), **GREEDY)))
        engine_eos = collect(engine.submit(prompt, 0, GenerationParams(max_tokens=20, **GREEDY)))
        ignoring_eos = collect(engine.submit(prompt, 0, GenerationParams(max_tokens=20, ignore_eos=True, **GREEDY)))
    finally:
        engine.stop()
    assert by_length.finish == Finished("length", len(prompt), 3)
    assert by_length.text == tiny_tokenizer.decode(expected[:3], skip_special_tokens=True)
    assert by_stop.finish.finish_reason == "stop"
    assert by_stop.text == before_eos[:start]
    assert engine_eos.finish == Finished("stop", len(prompt), first_eos + 1)  # the EOS token counts
    assert engine_eos.token_ids == expected[:first_eos]
    assert engine_eos.text == before_eos
    assert ignoring_eos.finish == Finished("length", len(prompt), 20)  # decodes through the EOS (benchmarks)
    assert ignoring_eos.token_ids == expected


def test_seeded_sampling_ignores_the_rest_of_the_batch(engine, tiny_tokenizer):
    prompt = _ids(tiny_tokenizer, "She reads a book every week")
    params = GenerationParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=7)
    alone = collect(engine.submit(prompt, 1, params))
    with engine.slots.lock:  # join together with five other sampling rows
        handles = [engine.submit(_ids(tiny_tokenizer, "Thank you" * (i + 1)), i % 2,
                                 GenerationParams(max_tokens=30, temperature=1.0, seed=100 + i)) for i in range(5)]
        again = engine.submit(prompt, 1, params)
    in_batch = collect(again)
    for handle in handles:
        collect(handle)
    other_seed = collect(engine.submit(prompt, 1, GenerationParams(max_tokens=24, temperature=0.9, top_p=0.95,
                                                                   seed=8)))
    assert in_batch.token_ids == alone.token_ids
    assert in_batch.text == alone.text
    assert other_seed.token_ids != alone.token_ids
    # a nucleus too small for a second token is greedy
    nucleus = collect(engine.submit(prompt, 1, GenerationParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=1)))
    greedy = collect(engine.submit(prompt, 1, GenerationParams(max_tokens=12, **GREEDY)))
    assert nucleus.token_ids == greedy.token_ids


def test_logprobs_of_a_sampled_token_are_the_raw_distribution(engine, tiny_tokenizer):
    """Temperature changes the draw, not the reported logprobs (vLLM's default)."""
    prompt = _ids(tiny_tokenizer, "How do I boil an egg?")
    hot = collect(engine.submit(prompt, 1, GenerationParams(max_tokens=1, temperature=1.7, seed=3, logprobs=True,
                                                            top_logprobs=5)))
    greedy = collect(engine.submit(prompt, 1, GenerationParams(max_tokens=1, logprobs=True, top_logprobs=5,
                                                               **GREEDY)))
    assert [t.logprob for t in hot.tokens[0].top_logprobs] == [t.logprob for t in greedy.tokens[0].top_logprobs]
    top = greedy.tokens[0].top_logprobs
    assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
    assert greedy.tokens[0].token_id == top[0].token_id and greedy.tokens[0].logprob == top[0].logprob
    plain = collect(engine.submit(prompt, 1, GenerationParams(max_tokens=1, **GREEDY)))
    assert plain.tokens[0].logprob is None and plain.tokens[0].top_logprobs == ()


def test_a_sliding_window_model_is_refused(tiny_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=8)
    model = MistralForCausalLM(config).eval()
    with pytest.raises(UnsupportedModelError, match="DynamicSlidingWindowLayer"):
        Engine(model, tiny_tokenizer, AdapterSlots.install(model, slots=2, max_rank=4))


def test_a_stopped_engine_fails_what_it_still_runs(tiny_model_dir, tiny_tokenizer):
    model = load_tiny(tiny_model_dir)
    engine = Engine(model, tiny_tokenizer, AdapterSlots.install(model, slots=2, max_rank=4), max_batch=1)
    engine.start()
    done = Counter()
    with engine.slots.lock:
        running = engine.submit([1, 2, 3], 0, GenerationParams(max_tokens=2000, **GREEDY), on_done=done("running"))
        waiting = engine.submit([1, 2, 3], 0, GenerationParams(max_tokens=5, **GREEDY), on_done=done("waiting"))
        stopper = threading.Thread(target=engine.stop)
        stopper.start()
    stopper.join(30)
    assert collect(running).finish.message == "the engine stopped"
    assert collect(waiting).finish.message == "the engine stopped"
    assert done.calls == {"running": 1, "waiting": 1}
    assert not engine.alive
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit([1, 2, 3], 0, GenerationParams(max_tokens=5))


def test_the_batch_cache_left_pads_joining_rows_and_trims_what_no_row_needs(tiny_model_dir):
    from transformers import DynamicCache

    from dora_core.serving.batch_cache import BatchCache

    config = load_tiny(tiny_model_dir).config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    batch, rows = BatchCache(), []
    for length in (3, 7, 5):
        cache = DynamicCache(config=config)
        for index in range(config.num_hidden_layers):
            keys = torch.randn(1, heads, length, dim)
            cache.update(keys, keys + 1.0, index)
        rows.append(cache.layers[0].keys.clone())
        batch.add(cache, length)
    assert batch.mask.tolist() == [[0] * 4 + [1] * 3, [1] * 7, [0] * 2 + [1] * 5]
    assert torch.equal(batch.cache.layers[0].keys[0, :, 4:], rows[0][0])
    assert torch.equal(batch.cache.layers[0].keys[0, :, :4], torch.zeros(heads, 4, dim))
    assert torch.equal(batch.cache.layers[1].values[2, :, 2:], batch.cache.layers[1].keys[2, :, 2:] + 1.0)
    assert batch.next_positions().squeeze(1).tolist() == [3, 7, 5]
    batch.keep([2, 0])  # the longest row leaves: two columns are padding in every remaining row
    assert batch.mask.tolist() == [[1] * 5, [0] * 2 + [1] * 3]
    assert batch.cache.layers[0].keys.shape == (2, heads, 5, dim)
    assert torch.equal(batch.cache.layers[0].keys[1, :, 2:], rows[0][0])
    assert torch.equal(batch.cache.layers[0].keys[0], rows[2][0])
    batch.keep([])
    assert batch.rows == 0 and batch.cache is None
