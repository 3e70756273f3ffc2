"""The engine computes what the merged model computes: unmerged DoRA/LoRA slots against merge_adapter.

Greedy completions through the engine must equal generate(do_sample=False) of the merged model token
for token (fp32), alone and in a batch where other adapters and the base model decode at the same
time; every step's logprobs (the whole vocabulary) must equal log_softmax of the merged model's logits
within the rounding budget of tests/support/numerics.py. PEFT is the oracle for the slot layers' math
(float64, where the comparison is an exactness check).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from dora_core.serving import AdapterSlots, Engine, Finished, GenerationParams
from tests.support.numerics import assert_close_to_reference, assert_distinguishable, float64_model, model_budget
from tests.support.serving import (
    collect,
    full_logprobs,
    greedy_reference,
    load_tiny,
    merged,
    random_adapter,
    reference_logprobs,
)

NEW_TOKENS = 16
PROMPTS = ["The quick brown fox", "What is the capital of France?", "Once upon a time there was",
           "Add the two numbers: 12 and 30.", "Machine", "She reads a book every week, and her brother plays",
           "How do I boil an egg?", "Low-rank adaptation trains", "Numbers: zero one two", "Thank you very much"]
# (method, rank, targets) of the adapters that share the batch with the two under test
OTHERS = [("dora", 2, "all-linear"), ("lora", 8, "all-linear"), ("dora", 5, ("q_proj", "v_proj")),
          ("lora", 3, ("down_proj",)), ("dora", 8, ("o_proj", "gate_proj", "up_proj")), ("lora", 1, "all-linear"),
          ("dora", 4, ("k_proj",)), ("lora", 6, ("q_proj", "k_proj", "v_proj", "o_proj"))]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """{name: folder}: "dora" (rank 8), "lora" (rank 4) and the eight others, all for the tiny model."""
    root = tmp_path_factory.mktemp("serving-adapters")
    base = load_tiny(tiny_model_dir)
    folders = {"dora": random_adapter(base, root / "dora", method="dora", rank=8, seed=1),
               "lora": random_adapter(base, root / "lora", method="lora", rank=4, seed=2)}
    for i, (method, rank, targets) in enumerate(OTHERS):
        folders[f"other{i}"] = random_adapter(base, root / f"other{i}", method=method, rank=rank, seed=10 + i,
                                              targets=targets)
    return folders


@contextmanager
def running_engine(tiny_model_dir, tokenizer, folders, *, max_batch=16):
    """An engine on a fresh tiny base with `folders` loaded into slots 1, 2, ... (in order)."""
    model = load_tiny(tiny_model_dir)
    slots = AdapterSlots.install(model, slots=len(folders) + 1, max_rank=8)
    for slot, folder in enumerate(folders, start=1):
        slots.load(slot, folder)
    engine = Engine(model, tokenizer, slots, max_batch=max_batch)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def _check_against(reference_model, prompt, stream, *, vocab, budget, what):
    """stream's tokens == the reference's greedy tokens, its finish reason agrees, and each step's
    logprobs == log_softmax of the reference's logits."""
    expected, ended_with_eos = greedy_reference(reference_model, prompt, NEW_TOKENS)
    assert stream.token_ids == expected, what
    assert isinstance(stream.finish, Finished), what
    assert stream.finish.finish_reason == ("stop" if ended_with_eos else "length"), what
    assert stream.finish.completion_tokens == len(expected) + ended_with_eos
    if not stream.tokens:
        return
    reference = reference_logprobs(reference_model, prompt, stream.token_ids)  # (steps, vocab)
    actual = torch.stack([full_logprobs(token, vocab) for token in stream.tokens])
    assert_close_to_reference(actual, reference, budget, what=f"{what} logprobs")
    chosen = torch.tensor([token.logprob for token in stream.tokens], dtype=torch.float64)
    assert torch.equal(chosen, actual[torch.arange(len(expected)), torch.tensor(expected)]), what


@pytest.mark.parametrize("name", ["dora", "lora"])
def test_greedy_completion_equals_the_merged_models_generate(name, adapters, tiny_model_dir, tiny_tokenizer):
    base = load_tiny(tiny_model_dir)
    reference = merged(lambda: load_tiny(tiny_model_dir), adapters[name])
    budget = model_budget(base, torch.float32)
    vocab = base.config.vocab_size
    prompt = _ids(tiny_tokenizer, PROMPTS[0])
    # the adapter changes the distribution far beyond the budget, so the comparison can fail
    assert_distinguishable(reference_logprobs(base, prompt, [1]), reference_logprobs(reference, prompt, [1]),
                           budget, what=f"{name} vs base")
    params = GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0, logprobs=True, top_logprobs=vocab)
    with running_engine(tiny_model_dir, tiny_tokenizer, [adapters[name]]) as engine:
        stream = collect(engine.submit(prompt, 1, params))
    assert len(stream.tokens) >= 4, "too short a completion to tell anything"
    _check_against(reference, prompt, stream, vocab=vocab, budget=budget, what=name)
    assert stream.text == tiny_tokenizer.decode(stream.token_ids, skip_special_tokens=True)


def test_every_row_of_a_mixed_batch_equals_its_own_reference(adapters, tiny_model_dir, tiny_tokenizer):
    """Ten adapters (DoRA and LoRA, ranks 1 to 8, some on a few modules only) and two base rows with
    prompts of different lengths decode in one batch; some join while the others decode."""
    names = list(adapters)
    loader = lambda: load_tiny(tiny_model_dir)  # noqa: E731 - a one-line factory
    base = loader()
    vocab = base.config.vocab_size
    budget = model_budget(base, torch.float32)
    params = GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0, logprobs=True, top_logprobs=vocab)
    requests = [(slot, _ids(tiny_tokenizer, PROMPTS[i % len(PROMPTS)])) for i, slot in enumerate(range(1, 11))]
    requests += [(0, _ids(tiny_tokenizer, PROMPTS[3])), (0, _ids(tiny_tokenizer, PROMPTS[5]))]
    with running_engine(tiny_model_dir, tiny_tokenizer, [adapters[n] for n in names]) as engine:
        with engine.slots.lock:  # the first eight join together, before the first decode step
            first = [engine.submit(prompt, slot, params) for slot, prompt in requests[:8]]
        seen = next(first[0].events(timeout=60))  # they are decoding: the rest join a running batch
        later = [engine.submit(prompt, slot, params) for slot, prompt in requests[8:]]
        streams = [collect(first[0], already=(seen,))] + [collect(handle) for handle in first[1:] + later]
    for (slot, prompt), stream in zip(requests, streams, strict=True):
        reference = base if slot == 0 else merged(loader, adapters[names[slot - 1]])
        _check_against(reference, prompt, stream, vocab=vocab, budget=budget,
                       what="base" if slot == 0 else names[slot - 1])


def test_base_rows_give_exactly_the_base_models_logits(adapters, tiny_model_dir):
    """Slot 0 rows are the base model bit for bit, whatever adapters the other rows use."""
    base = load_tiny(tiny_model_dir)
    model = load_tiny(tiny_model_dir)
    slots = AdapterSlots.install(model, slots=3, max_rank=8)
    slots.load(1, adapters["dora"])
    slots.load(2, adapters["lora"])
    ids = torch.randint(0, base.config.vocab_size, (4, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), slots.context.rows(torch.tensor([1, 0, 2, 0])):
        logits = model(ids).logits
    expected = base(ids).logits
    assert torch.equal(logits[[1, 3]], expected[[1, 3]])
    assert not torch.allclose(logits[[0, 2]], expected[[0, 2]])


def test_slot_layers_match_peft_in_float64(adapters, tiny_model_dir):
    """PEFT's DoRA and LoRA models are the oracle: float64 logits of rows of different adapters in one
    forward, each against PEFT with that adapter alone."""
    from peft import PeftModel

    loader = lambda: float64_model(load_tiny(tiny_model_dir))  # noqa: E731 - a one-line factory
    model = loader()
    slots = AdapterSlots.install(model, slots=4, max_rank=8)
    slots.load(1, adapters["dora"])
    slots.load(2, adapters["lora"])
    slots.load(3, adapters["other2"])  # DoRA on q_proj and v_proj only
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), slots.context.rows(torch.tensor([1, 2, 3])):
        logits = model(ids).logits
    budget = model_budget(model, torch.float64)
    for row, name in enumerate(["dora", "lora", "other2"]):
        oracle = PeftModel.from_pretrained(loader(), adapters[name]).eval()
        with torch.no_grad():
            expected = oracle(input_ids=ids[row:row + 1]).logits[0]
        assert_close_to_reference(logits[row], expected, budget, what=f"{name} vs PEFT")


def test_a_bfloat16_model_serves_within_bfloat16s_budget(adapters, tiny_model_dir, tiny_tokenizer):
    """What a GPU runs: bf16 activations and slot tensors (the gain multiplies in fp32). Adapter rows are
    within bf16's rounding budget of the fp32 merged model, base rows equal the bf16 base bit for bit."""
    model = load_tiny(tiny_model_dir, torch.bfloat16)
    slots = AdapterSlots.install(model, slots=2, max_rank=8)
    slots.load(1, adapters["dora"])
    assert slots.layers["model.layers.0.self_attn.q_proj"].slot_B.dtype == torch.bfloat16
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), slots.context.rows(torch.tensor([1, 0])):
        logits = model(ids).logits
    with torch.no_grad():
        expected = merged(lambda: load_tiny(tiny_model_dir), adapters["dora"])(ids[:1]).logits[0]
        base = load_tiny(tiny_model_dir, torch.bfloat16)(ids[1:]).logits[0]
    budget = model_budget(model, torch.bfloat16, accumulate=torch.float32)
    assert_close_to_reference(logits[0], expected, budget, what="bf16 adapter row vs fp32 merged")
    assert torch.equal(logits[1], base)
    engine = Engine(model, tiny_tokenizer, slots)
    engine.start()
    try:
        stream = collect(engine.submit(ids[0].tolist(), 1, GenerationParams(max_tokens=4, temperature=0.0,
                                                                            logprobs=True)))
    finally:
        engine.stop()
    assert stream.finish.completion_tokens >= 1 and all(t.logprob <= 0.0 for t in stream.tokens)


def test_gpt2_conv1d_layers_with_biases_serve_exactly(tiny_tokenizer, tmp_path):
    """GPT-2 stores its linears transposed (Conv1D) and has biases: the slot layer's other branch."""
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    from dora_core import merge_adapter

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
                        initializer_range=0.2)
    base = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in base.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)  # zero biases would hide a bias applied twice
    reference = copy.deepcopy(base)
    adapter = random_adapter(reference, tmp_path / "gpt2", method="dora", rank=4, seed=1, in_place=True)
    merge_adapter(reference)
    model = copy.deepcopy(base)
    slots = AdapterSlots.install(model, slots=2, max_rank=4)
    slots.load(1, adapter)
    prompt = _ids(tiny_tokenizer, PROMPTS[1])
    with torch.no_grad(), slots.context.rows(torch.tensor([0, 1])):
        logits = model(torch.tensor([prompt, prompt])).logits
    with torch.no_grad():
        assert torch.equal(logits[0], base(torch.tensor([prompt, prompt])).logits[0])  # same batch shape, same BLAS
        assert_close_to_reference(logits[1], reference(torch.tensor([prompt])).logits[0],
                                  model_budget(base, torch.float32), what="gpt2 DoRA row vs merged")
    engine = Engine(model, tiny_tokenizer, slots)
    engine.start()
    try:
        with slots.lock:
            adapted = engine.submit(prompt, 1, GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0))
            plain = engine.submit(prompt[:4], 0, GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0))
        adapted, plain = collect(adapted), collect(plain)
    finally:
        engine.stop()
    assert adapted.token_ids == greedy_reference(reference, prompt, NEW_TOKENS)[0]
    assert plain.token_ids == greedy_reference(base, prompt[:4], NEW_TOKENS)[0]
