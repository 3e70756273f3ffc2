"""The serving engine on a training model (slots None, its AdapterLinear layers as they are), run
synchronously by Engine.generate as reinforcement fine-tuning samples with it (training/grpo.py):
greedy answers equal transformers' generate() token for token (float64: no argmax ties), the stop
token that ends an answer is in it, seeded samples repeat, the model is left as it was (mode,
use_cache, no copy of a weight), and an error inside the loop is raised as it was."""

from __future__ import annotations

import gc

import pytest
import torch

from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from dora_core.serving import Engine, GenerationParams
from dora_core.stop_tokens import stop_token_ids
from dora_core.training.grpo import sample_answers
from tests.support.numerics import float64_model
from tests.support.serving import load_tiny

PROMPTS = ["The quick brown fox", "Machine", "Once upon a time there was", "Add 12 and 30."]
NEW_TOKENS = 12


@pytest.fixture
def training_model(tiny_model_dir):
    """The tiny model in float64 with a DoRA adapter whose B is random (so the adapter matters) and
    dropout 0.1 (so a forward in train mode would differ), in train mode, use_cache off: as a run holds it."""
    model = float64_model(load_tiny(tiny_model_dir))
    torch.manual_seed(0)
    apply_adapter(model, AdapterConfig(method="dora", rank=4, alpha=8, dropout=0.1))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AdapterLinear):
                module.lora_B.normal_(0.0, 0.2)
    model.config.use_cache = False
    return model.train()


def _ids(tokenizer, texts):
    return [tokenizer(text)["input_ids"] for text in texts]


@torch.no_grad()
def _hf_greedy(model, prompt, stops, pad):
    """generate() of one prompt in eval mode: its new ids up to and including the first stop token."""
    model.eval()
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                         eos_token_id=stops, pad_token_id=pad)[0, len(prompt):].tolist()
    end = next((i + 1 for i, token in enumerate(out) if token in stops), len(out))
    return out[:end]


def _base_weight_storages(shapes):
    gc.collect()
    return {obj.untyped_storage().data_ptr() for obj in gc.get_objects()
            if isinstance(obj, torch.Tensor) and tuple(obj.shape) in shapes}


def test_greedy_answers_equal_generate_and_keep_their_stop_token(training_model, tiny_tokenizer):
    model, tokenizer = training_model, tiny_tokenizer
    prompts = _ids(tokenizer, PROMPTS)
    pad = tokenizer.pad_token_id
    # a token the second prompt's greedy answer reaches at its 4th step becomes a stop token (as an
    # instruct model's end-of-turn id in its generation config), so one answer ends on a stop
    plain = _hf_greedy(model, prompts[1], stop_token_ids(model, tokenizer), pad)
    assert len(plain) == NEW_TOKENS, plain
    model.generation_config.eos_token_id = [*stop_token_ids(model, tokenizer), plain[3]]
    stops = stop_token_ids(model, tokenizer)
    expected = [_hf_greedy(model, prompt, stops, pad) for prompt in prompts]
    assert len(expected[1]) <= 4 and expected[1][-1] in stops
    model.train()

    shapes = {tuple(p.shape) for name, p in model.named_parameters() if p.ndim == 2 and "lora_" not in name}
    storages_before = _base_weight_storages(shapes)
    during = []
    hook = model.model.layers[0].register_forward_pre_hook(  # at the first forward (prefill): counting is slow
        lambda *_: None if during else during.append(_base_weight_storages(shapes)))
    pointers = [p.data_ptr() for p in model.parameters()]
    engine = Engine(model, tokenizer, None, max_batch=len(prompts))
    completions = engine.generate(prompts, GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0))
    hook.remove()

    assert [list(c.token_ids) for c in completions] == expected
    assert [c.finish_reason for c in completions] == ["stop" if e[-1] in stops else "length" for e in expected]
    # the text ends before the stop token (here an ordinary token whose own text is not shown)
    assert [c.text for c in completions] == [tokenizer.decode(e[:-1] if e[-1] in stops else e,
                                                              skip_special_tokens=True) for e in expected]
    assert engine.model is model and [p.data_ptr() for p in model.parameters()] == pointers
    assert during == [storages_before]  # no copy of a base weight while decoding
    assert model.training and model.config.use_cache is False  # as it was: train mode, cache setting untouched
    assert all(m.training for m in model.modules())


def test_seeded_samples_repeat_and_do_not_depend_on_the_batch(training_model, tiny_tokenizer):
    """grpo.sample_answers from the same generator state gives the same answers; a seed's sample is the
    same decoded alone as in a batch (what lets a resumed step sample what the stopped one did)."""
    prompts = _ids(tiny_tokenizer, PROMPTS[:2])

    def sampled(seed):
        torch.manual_seed(seed)
        answers = sample_answers(training_model, tiny_tokenizer, prompts, count=3, max_new_tokens=NEW_TOKENS,
                                 max_seq_len=64)
        return [list(a.token_ids) for a in answers]

    first, again, other = sampled(1), sampled(1), sampled(2)
    assert first == again and first != other
    assert len(set(map(tuple, first[:3]))) > 1  # one prompt's group is not one answer three times
    assert training_model.training

    engine = Engine(training_model, tiny_tokenizer, None, max_batch=8)
    params = [GenerationParams(max_tokens=NEW_TOKENS, seed=100 + i) for i in range(4)]
    batch = engine.generate(prompts * 2, params)
    alone = engine.generate([prompts[1]], params[3])
    assert alone[0].token_ids == batch[3].token_ids


def test_prompt_and_answer_stay_within_max_seq_len(training_model, tiny_tokenizer):
    (prompt,) = _ids(tiny_tokenizer, PROMPTS[:1])
    engine = Engine(training_model, tiny_tokenizer, None, max_seq_len=len(prompt) + 3)
    (completion,) = engine.generate([prompt], GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0))
    assert len(completion.token_ids) == 3 and completion.finish_reason == "length"


def test_an_error_in_the_loop_is_raised_as_it_was_and_the_engine_goes_on(training_model, tiny_tokenizer):
    """An out-of-memory error while decoding reaches the caller as itself (a run halves its micro-batch on
    it), not as a Failed event; the model is back in train mode and the next generate() starts clean."""
    prompts = _ids(tiny_tokenizer, PROMPTS)
    engine = Engine(training_model, tiny_tokenizer, None)
    calls = []

    def fail_third_forward(*_):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    hook = training_model.register_forward_pre_hook(fail_third_forward)
    with pytest.raises(torch.OutOfMemoryError, match="raised by the test"):
        engine.generate(prompts, GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0))
    hook.remove()
    assert training_model.training and not engine.running and not engine.waiting
    completions = engine.generate(prompts[:1], GenerationParams(max_tokens=2, temperature=0.0))
    assert len(completions[0].token_ids) == 2
