"""Datasets in the four formats and small run configs for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

from dora_core.training import RunConfig

QUESTIONS = [(f"What is {a} plus {b}?", f" {a + b}") for a in range(4) for b in range(4)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dataset_rows(kind: str) -> list[dict]:
    if kind == "chat":
        return [{"messages": [{"role": "system", "content": "Answer with a number."},
                              {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                for q, a in QUESTIONS]
    if kind == "prompt_completion":
        return [{"prompt": q, "completion": a} for q, a in QUESTIONS]
    if kind == "alpaca":
        return [{"instruction": "Add the numbers.", "input": q, "output": a} for q, a in QUESTIONS]
    if kind == "text":
        return [{"text": f"{q}{a}."} for q, a in QUESTIONS[:8]]
    raise ValueError(kind)


def run_config(model_dir: Path, train_file: Path, **training) -> RunConfig:
    # no samples unless a test asks: the tiny random model never says its end-of-turn token, so each
    # evaluation would generate sample_max_new_tokens for every prompt (tests/core/test_samples.py
    # covers them)
    defaults = {"max_steps": 12, "micro_batch_size": 4, "learning_rate": 1e-2, "checkpoint_interval": 4,
                "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_seq_len": 64, "sample_prompts": 0}
    adapter = training.pop("adapter", {"method": "dora", "rank": 4, "alpha": 8})
    outputs = training.pop("outputs", ["adapter"])
    return RunConfig.from_dict({"base_model": str(model_dir), "train_file": str(train_file), "adapter": adapter,
                                "training": {**defaults, **training}, "outputs": outputs})
