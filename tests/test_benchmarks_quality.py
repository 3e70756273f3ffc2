"""benchmarks/quality.py: its tasks are reproducible and never train on a held-out prompt, and
its --quick configuration runs end to end (on the tiny model, in seconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_module(name: str):
    """benchmarks/ is a folder of scripts, not a package: load one by its path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tasks = load_benchmark_module("quality_tasks")


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_splits_are_deterministic_per_seed_and_differ_across_seeds(name: str) -> None:
    task = tasks.TASKS[name]
    first = tasks.build_split(task, seed=1, train_rows=300, eval_prompts=100)
    again = tasks.build_split(task, seed=1, train_rows=300, eval_prompts=100)
    other = tasks.build_split(task, seed=2, train_rows=300, eval_prompts=100)
    assert first == again
    assert other.train != first.train
    assert other.eval_questions == first.eval_questions  # the held-out prompts depend on the task only
    assert len(first.train) == 300 and len(first.eval_questions) == 100


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_training_rows_never_hold_a_held_out_question(name: str) -> None:
    task = tasks.TASKS[name]
    for seed in range(3):
        split = tasks.build_split(task, seed=seed, train_rows=500, eval_prompts=200)
        trained = [row["messages"][1]["content"] for row in split.train]
        assert len(set(trained)) == len(trained)
        assert not set(trained) & set(split.eval_questions)
        assert len(set(split.eval_questions)) == 200
        for row in split.train:  # the answer is the task's own answer to the question
            system, user, assistant = row["messages"]
            assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
            assert system["content"] == task.system and assistant["content"].strip() == assistant["content"]


def test_answers_are_right() -> None:
    import random

    rng = random.Random(0)
    question, answer = tasks.addition_example(rng)
    a, b = (int(part) for part in question.removeprefix("What is ").removesuffix("?").split(" + "))
    assert int(answer) == a + b
    question, answer = tasks.sort_example(rng)
    assert answer.split() == sorted(question.removeprefix("Sort: ").split(), key=int)
    question, answer = tasks.date_example(rng)
    year, month, day = (int(part) for part in question.split("-"))
    assert answer == f"{tasks.MONTHS[month - 1]} {day}, {year}"


def test_quick_run_end_to_end_on_the_tiny_model_and_resumed(tmp_path: Path) -> None:
    from dora_core.tiny_model import make_tiny_model

    quality = load_benchmark_module("quality")
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    assert quality.main(["--quick", "--model", str(model), "--out", str(out), "--tasks", "addition,date"]) == 0

    lines = [json.loads(line) for line in (out / "quality.jsonl").read_text().splitlines()]
    runs = [line for line in lines if line["kind"] == "run"]
    assert {(r["task"], r["method"], r["rank"], r["seed"]) for r in runs} == {
        (task, method, 4, 0) for task in ("addition", "date") for method in ("lora", "dora")}
    assert all(r["steps"] == quality.QUICK.steps and r["eval_prompts"] == quality.QUICK.eval_prompts for r in runs)
    assert all(r["alpha"] == 8.0 and r["device"] == "cpu" and r["versions"]["torch"] for r in runs)
    assert len([line for line in lines if line["kind"] == "base"]) == 2
    summaries = [line for line in lines if line["kind"] == "summary"]
    assert len(summaries) == 6 and all(0.0 <= s["exact_match_mean"] <= 1.0 for s in summaries)
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume with the same settings measures nothing again: every run line comes back unchanged
    assert quality.main(["--quick", "--model", str(model), "--out", str(out), "--tasks", "addition,date",
                         "--resume"]) == 0
    again = [json.loads(line) for line in (out / "quality.jsonl").read_text().splitlines()]
    measured = [line for line in lines if line["kind"] != "summary"]
    assert [line for line in again if line["kind"] != "summary"] == measured
