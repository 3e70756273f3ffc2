"""The engine on the real SmolLM2-135M-Instruct: a DoRA adapter served unmerged gives the merged
model's greedy completion, while a base-model row decodes in the same batch (slow tier)."""

from __future__ import annotations

import torch

from dora_core import merge_adapter
from dora_core.model_loading import load_base_model, load_tokenizer
from dora_core.serving import AdapterSlots, Engine, GenerationParams, render_chat
from tests.support.real_model import real_model_dir
from tests.support.serving import collect, greedy_reference, random_adapter

NEW_TOKENS = 16


def test_real_model_dora_adapter_greedy_equals_merged_generate(tmp_path):
    folder = real_model_dir()
    loader = lambda: load_base_model(folder, dtype=torch.float32, device="cpu", local_files_only=True)  # noqa: E731 - a one-line factory
    tokenizer = load_tokenizer(folder, local_files_only=True)
    prompt = render_chat(tokenizer, [{"role": "user", "content": "Name three colours."}], max_length=2048)
    reference = loader()
    adapter = random_adapter(reference, tmp_path / "adapter", method="dora", rank=8, seed=5, b_scale=0.02,
                             in_place=True)
    expected, _ = greedy_reference(merge_adapter(reference), prompt, NEW_TOKENS)
    del reference
    model = loader()
    expected_base, _ = greedy_reference(model, prompt, NEW_TOKENS)
    assert expected != expected_base, "the adapter must change the completion, or the test tells nothing"
    slots = AdapterSlots.install(model, slots=2, max_rank=8)
    slots.load(1, adapter)
    engine = Engine(model, tokenizer, slots, max_batch=4)
    engine.start()
    try:
        with slots.lock:
            adapted = engine.submit(prompt, 1, GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0))
            plain = engine.submit(prompt, 0, GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0))
        adapted, plain = collect(adapted, timeout=120), collect(plain, timeout=120)
    finally:
        engine.stop()
    assert adapted.token_ids == expected
    assert plain.token_ids == expected_base
