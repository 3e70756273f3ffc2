"""benchmarks/dpo_quality.py: its preference pairs never prefer what they reject, its held-out
preference accuracy is the one the training loop reports, and --quick runs end to end on the
tiny model (seconds)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.test_benchmarks_quality import load_benchmark_module

dpo_quality = load_benchmark_module("dpo_quality")


def test_non_preferred_is_the_base_answer_or_a_near_miss_never_the_right_sum() -> None:
    questions = ["What is 100 + 200?", "What is 300 + 400?", "What is 500 + 111?"]
    answers = ["300", "700", "611"]
    replies = ["To add 100 and 200, you", " 700\n", ""]  # verbose, right (after stripping), silent
    rows, kinds = dpo_quality.preference_rows(questions, answers, replies, random.Random(0))
    assert kinds == ["base_answer", "wrong_sum", "wrong_sum"]
    assert rows[0]["non_preferred_output"] == [{"role": "assistant", "content": "To add 100 and 200, you"}]
    for row, question, answer in zip(rows, questions, answers, strict=True):
        assert row["preferred_output"] == [{"role": "assistant", "content": answer}]
        assert row["input"]["messages"][-1] == {"role": "user", "content": question}
        rejected = row["non_preferred_output"][0]["content"]
        assert rejected != answer
    for row in rows[1:]:  # a near miss: off by 1, 10 or 100
        miss = int(row["non_preferred_output"][0]["content"]) - int(row["preferred_output"][0]["content"])
        assert abs(miss) in (1, 10, 100)


def test_exact_match_is_the_string_check_grader() -> None:
    judged = dpo_quality.judge(["q1", "q2", "q3"], ["579", "42", "7"], ["579", "42 is the answer", " 7"])
    assert (judged["correct"], judged["exact_match"]) == (1, 1 / 3)  # eq: no stripping, as an eval grades it
    assert judged["number_only_replies"] == 2


def test_quick_run_on_the_tiny_model(tmp_path: Path) -> None:
    from dora_core.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    assert dpo_quality.main(["--quick", "--model", str(model), "--out", str(out)]) == 0

    lines = {line["kind"]: line for line in map(json.loads, (out / "dpo_quality.jsonl").read_text().splitlines())}
    assert list(lines) == ["data", "before", "train", "after"]
    quick = dpo_quality.QUICK
    assert (lines["data"]["train_pairs"], lines["data"]["eval_pairs"]) == (quick.train_pairs, quick.eval_pairs)
    before, train, after = lines["before"], lines["train"], lines["after"]
    # before training the policy is its own reference: every margin is exactly 0, none counts as preferred
    assert (before["preference_accuracy"], before["reward_margin_mean"]) == (0.0, 0.0)
    assert before["tied_margins"] == before["pairs"] == quick.eval_pairs
    assert train["steps"] == quick.steps and train["rank"] == quick.rank and train["device"] == "cpu"
    # the benchmark's scoring (the saved adapter, reloaded) and the loop's evaluation agree on the same pairs
    evaluation = train["eval"]
    assert after["preference_accuracy"] == evaluation["eval_rewards/accuracies"]
    assert abs(after["reward_margin_mean"] - evaluation["eval_rewards/margins"]) <= 2e-4  # each rounded to 4 places
    for line in (before, after):
        assert 0.0 <= line["exact_match"] <= 1.0 and line["eval_prompts"] == quick.eval_pairs
