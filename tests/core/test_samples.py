"""Samples (issue #15): greedy answers to the first validation prompts at each evaluation (and at
step 0, before training: the base model's).

They must come at every evaluation and at the end, K of them, in every chat-shaped format, the
same on every run, and change nothing about the training (same losses, same adapter, same
generators, the model back in train mode)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dora_contract import TrainingSettings
from dora_core.data import read_examples
from dora_core.inject import apply_adapter
from dora_core.model_loading import load_base_model
from dora_core.training import RunConfig, TrainingCallback, run_training
from dora_core.training.samples import (
    SAMPLE_TEXT_LIMIT,
    SamplesLog,
    build_prompts,
    clip_end,
    clip_start,
    generate_answers,
    stop_token_ids,
)
from tests.support.numerics import float64_model
from tests.support.training_helpers import QUESTIONS, dataset_rows, run_config, write_jsonl

pytestmark = pytest.mark.usefixtures("offline_hub")
GENERATION_PROMPT = "<|assistant|>\n"


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class SampleRecorder(TrainingCallback):
    def __init__(self):
        self.calls: list[tuple[int, list[dict]]] = []

    def on_samples(self, *, step, samples):
        self.calls.append((step, samples))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _train_and_validation(tmp_path, kind="chat"):
    rows = dataset_rows(kind)
    return (write_jsonl(tmp_path / "train.jsonl", rows[:12]), write_jsonl(tmp_path / "valid.jsonl", rows[12:]))


DEFAULT_SAMPLE_PROMPTS = TrainingSettings.model_fields["sample_prompts"].default


def _config(model_dir, train, validation, **training) -> RunConfig:
    # the contract's sample count, short answers: the tiny model rambles until the token limit
    config = run_config(model_dir, train, **{"max_steps": 10, "eval_interval": 4, "sample_max_new_tokens": 6,
                                             "sample_prompts": DEFAULT_SAMPLE_PROMPTS, **training})
    return config.with_changes(validation_file=str(validation))


def test_samples_at_each_evaluation_and_at_the_end(tmp_path, tiny_model_dir):
    train, validation = _train_and_validation(tmp_path)
    recorder = SampleRecorder()
    run_training(_config(tiny_model_dir, train, validation, sample_prompts=3), tmp_path / "out", callbacks=[recorder])
    assert [step for step, _ in recorder.calls] == [0, 4, 8, 10]  # the base model, every 4 steps, the end
    stored = _lines(tmp_path / "out" / "samples.jsonl")
    assert stored == [sample for _, samples in recorder.calls for sample in samples]
    assert [(s["step"], s["index"]) for s in stored] == [(step, i) for step in (0, 4, 8, 10) for i in range(3)]
    first = stored[0]
    assert first["line"] == 1 and first["expected"] == QUESTIONS[12][1]
    assert first["prompt"] == (f"<s><|system|>\nAnswer with a number.<|end|>\n<|user|>\n{QUESTIONS[12][0]}<|end|>\n"
                               + GENERATION_PROMPT)  # the chat template, up to the answer
    assert all(isinstance(s["answer"], str) and "<|end|>" not in s["answer"] for s in stored)


def test_sample_prompts_is_the_most_taken_and_zero_turns_samples_off(tmp_path, tiny_model_dir):
    train, validation = _train_and_validation(tmp_path)  # 4 validation rows
    recorder = SampleRecorder()
    run_training(_config(tiny_model_dir, train, validation, max_steps=4, sample_prompts=8), tmp_path / "all",
                 callbacks=[recorder])
    assert [len(samples) for _, samples in recorder.calls] == [4, 4]  # K = 8 > 4 rows: every row once, at 0 and 4
    recorder = SampleRecorder()
    run_training(_config(tiny_model_dir, train, validation, max_steps=4, sample_prompts=0), tmp_path / "off",
                 callbacks=[recorder])
    assert recorder.calls == [] and not (tmp_path / "off" / "samples.jsonl").exists()
    assert any("eval_loss" in m for m in _lines(tmp_path / "off" / "metrics.jsonl"))  # evaluation itself ran


def test_no_validation_set_no_samples(tmp_path, tiny_model_dir):
    train, _ = _train_and_validation(tmp_path)
    recorder = SampleRecorder()
    run_training(run_config(tiny_model_dir, train, max_steps=4, eval_interval=2,
                            sample_prompts=DEFAULT_SAMPLE_PROMPTS), tmp_path / "out", callbacks=[recorder])
    assert recorder.calls == [] and not (tmp_path / "out" / "samples.jsonl").exists()


def test_samples_change_nothing_about_training_and_are_deterministic(tmp_path, tiny_model_dir):
    """With adapter dropout every forward draws from torch's generator, so a sample that consumed
    random numbers, or left the model in eval mode (no dropout), would change the losses."""
    train, validation = _train_and_validation(tmp_path)
    adapter = {"method": "dora", "rank": 4, "alpha": 8, "dropout": 0.1}
    runs = {}
    for name, count in (("without", 0), ("with", 4), ("again", 4)):
        run_training(_config(tiny_model_dir, train, validation, sample_prompts=count, eval_interval=2,
                             adapter=adapter), tmp_path / name)
        runs[name] = [{k: v for k, v in m.items() if k != "tokens_per_second"}  # the one timing
                      for m in _lines(tmp_path / name / "metrics.jsonl")]
    assert runs["with"] == runs["without"]  # every loss, eval loss and grad norm identical, exactly
    without = load_file(str(tmp_path / "without" / "adapter" / "adapter_model.safetensors"))
    with_samples = load_file(str(tmp_path / "with" / "adapter" / "adapter_model.safetensors"))
    assert without.keys() == with_samples.keys()
    assert all(torch.equal(without[k], with_samples[k]) for k in without)
    samples = _lines(tmp_path / "with" / "samples.jsonl")
    assert len(samples) == 6 * 4 and samples == _lines(tmp_path / "again" / "samples.jsonl")  # step 0, 5 evaluations


@pytest.mark.parametrize("kind", ["chat", "prompt_completion", "alpaca"])
def test_prompts_of_each_chat_shaped_format_stop_at_the_answer(tmp_path, tiny_tokenizer, kind):
    examples, _ = read_examples(write_jsonl(tmp_path / "rows.jsonl", dataset_rows(kind)))
    prompts = build_prompts(examples, tiny_tokenizer, count=2, max_seq_len=64)
    assert [p.index for p in prompts] == [0, 1] and [p.line for p in prompts] == [1, 2]
    for prompt, (question, answer) in zip(prompts, QUESTIONS, strict=False):
        assert prompt.expected == answer and question in prompt.prompt and prompt.prompt.endswith(GENERATION_PROMPT)
        assert tiny_tokenizer.decode(prompt.input_ids) == prompt.prompt


def test_multi_turn_chat_prompt_is_everything_before_the_last_assistant_turn(tmp_path, tiny_tokenizer):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Add 1 and 2"}, {"role": "assistant", "content": "3"}]
    rows = [{"text": "plain text has no prompt"}, {"messages": turns}]
    examples = [e for name in ("text", "chat") for e in read_examples(
        write_jsonl(tmp_path / f"{name}.jsonl", [rows[0] if name == "text" else rows[1]]))[0]]
    [prompt] = build_prompts(examples, tiny_tokenizer, count=5, max_seq_len=64)
    assert prompt.expected == "3" and prompt.index == 0
    assert prompt.prompt == tiny_tokenizer.apply_chat_template(turns[:3], tokenize=False, add_generation_prompt=True)


def test_a_long_prompt_keeps_its_end(tmp_path, tiny_tokenizer):
    row = {"prompt": "word " * 200 + "What is 1 plus 1?", "completion": " 2"}
    examples, _ = read_examples(write_jsonl(tmp_path / "long.jsonl", [row]))
    [prompt] = build_prompts(examples, tiny_tokenizer, count=1, max_seq_len=16)
    assert len(prompt.input_ids) == 16 and tiny_tokenizer.decode(prompt.input_ids).endswith(GENERATION_PROMPT)
    assert clip_end("x" * (SAMPLE_TEXT_LIMIT + 5)) == "\u2026" + "x" * (SAMPLE_TEXT_LIMIT - 1)
    assert clip_start("y" * (SAMPLE_TEXT_LIMIT + 5)) == "y" * (SAMPLE_TEXT_LIMIT - 1) + "\u2026"


@pytest.fixture
def adapted_model(tiny_model_dir):
    model = load_base_model(tiny_model_dir, dtype=torch.float32, device=torch.device("cpu"))
    from dora_core import AdapterConfig

    apply_adapter(model, AdapterConfig(method="dora", rank=4, alpha=8, dropout=0.1))
    model.config.use_cache = False
    return model.train()


def test_generation_leaves_generators_mode_and_cache_setting_as_they_were(tmp_path, tiny_tokenizer, adapted_model):
    examples, _ = read_examples(write_jsonl(tmp_path / "rows.jsonl", dataset_rows("chat")))
    prompts = build_prompts(examples, tiny_tokenizer, count=3, max_seq_len=64)
    before = torch.get_rng_state()
    answers = generate_answers(adapted_model, tiny_tokenizer, prompts, max_new_tokens=5, batch_size=2,
                               device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)
    assert adapted_model.training and adapted_model.config.use_cache is False
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)


def test_left_padded_batches_answer_as_one_prompt_at_a_time(tmp_path, tiny_tokenizer, adapted_model):
    """In float64 (no near-ties decided by rounding): padding on the left, masked, changes no token."""
    rows = dataset_rows("chat")
    rows[1]["messages"][1]["content"] = "What is the sum of one, two, three and four, written in words?"
    examples, _ = read_examples(write_jsonl(tmp_path / "rows.jsonl", rows))
    prompts = build_prompts(examples, tiny_tokenizer, count=4, max_seq_len=64)
    assert len({len(p.input_ids) for p in prompts}) > 1  # the batch is padded
    model = float64_model(adapted_model)
    options = {"max_new_tokens": 8, "device": torch.device("cpu")}
    batched = generate_answers(model, tiny_tokenizer, prompts, batch_size=4, **options)
    assert batched == generate_answers(model, tiny_tokenizer, prompts, batch_size=1, **options)


def test_stop_tokens_are_the_generation_configs_and_the_tokenizers_eos(tiny_tokenizer, adapted_model):
    stops = stop_token_ids(adapted_model, tiny_tokenizer)
    assert tiny_tokenizer.convert_tokens_to_ids("<|end|>") in stops and tiny_tokenizer.eos_token_id in stops


def test_samples_log_replaces_a_step_and_truncates_with_the_metrics(tmp_path):
    from dora_core.training.outputs import MetricsLog

    samples = SamplesLog(tmp_path / "samples.jsonl")
    metrics = MetricsLog(tmp_path / "metrics.jsonl", companions=(samples,))
    for step in (2, 4, 6):
        metrics.append({"step": step, "eval_loss": 1.0})
        samples.write(step, [{"step": step, "index": 0, "answer": "old"}])
    samples.write(6, [{"step": 6, "index": 0, "answer": "new"}])
    assert [(r["step"], r["answer"]) for r in samples.records()] == [(2, "old"), (4, "old"), (6, "new")]
    metrics.truncate_after(4)  # a resume from the checkpoint at step 4
    assert [r["step"] for r in samples.records()] == [2, 4] and [r["step"] for r in metrics.records()] == [2, 4]


class CrashAt(TrainingCallback):
    def __init__(self, step):
        self.step = step

    def on_step(self, metrics):
        if metrics["step"] == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_a_resumed_run_keeps_each_evaluations_samples_once(tmp_path, tiny_model_dir):
    train, validation = _train_and_validation(tmp_path)
    config = _config(tiny_model_dir, train, validation, max_steps=8, eval_interval=2, checkpoint_interval=4,
                     sample_prompts=2)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tmp_path / "out", callbacks=[CrashAt(step=7)])  # evaluated at 2, 4, 6; checkpoint 4
    assert [s["step"] for s in _lines(tmp_path / "out" / "samples.jsonl")] == [0, 0, 2, 2, 4, 4, 6, 6]
    recorder = SampleRecorder()
    run_training(config, tmp_path / "out", callbacks=[recorder])
    assert [step for step, _ in recorder.calls] == [6, 8]  # after the checkpoint at step 4
    stored = _lines(tmp_path / "out" / "samples.jsonl")
    assert [(s["step"], s["index"]) for s in stored] == [(step, i) for step in (0, 2, 4, 6, 8) for i in range(2)]
