"""benchmarks/rft_quality.py: its reinforcement rows are prompts rows the grader can read, and
--quick runs end to end on the tiny model (seconds), every model judged by the same eval."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_benchmarks_quality import load_benchmark_module

rft_quality = load_benchmark_module("rft_quality")


def test_prompt_rows_are_the_reinforcement_format_with_what_the_grader_reads(tmp_path: Path) -> None:
    from dora_formats import PROMPTS, read_jsonl_examples
    from dora_graders import check_item

    rows = rft_quality.prompt_rows(["What is 100 + 200?", "What is 999 + 999?"], ["300", "1998"])
    rft_quality.write_jsonl(tmp_path / "prompts.jsonl", rows)
    examples, result = read_jsonl_examples(tmp_path / "prompts.jsonl")
    assert result.is_valid and result.format == PROMPTS and result.rows == 2
    assert rows[1]["messages"][-1] == {"role": "user", "content": "What is 999 + 999?"}  # ends before the answer
    for example in examples:
        check_item(rft_quality.CRITERION, example.item)


def test_quick_run_on_the_tiny_model(tmp_path: Path) -> None:
    from dora_core.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    assert rft_quality.main(["--quick", "--model", str(model), "--out", str(out)]) == 0

    lines = [json.loads(line) for line in (out / "rft_quality.jsonl").read_text().splitlines()]
    assert [(line["kind"], line.get("name")) for line in lines] == [
        ("data", None), ("eval", "base"), ("train", "sft"), ("eval", "sft"), ("train", "sft_rft"),
        ("eval", "sft_rft"), ("train", "rft"), ("eval", "rft"), ("summary", None)]
    quick = rft_quality.QUICK
    train = {line["name"]: line for line in lines if line["kind"] == "train"}
    for name in ("rft", "sft_rft"):
        assert train[name]["steps"] == quick.rft_steps and train[name]["samples_per_prompt"] == quick.samples_per_prompt
        assert list(train[name]["eval_reward"]) == ["0", str(quick.rft_steps)]  # before any update, and at the end
    # each run's KL reference is the policy it started from (adapter off; the SFT adapter): 0 at step 1
    assert train["rft"]["first_step"]["kl"] == train["sft_rft"]["first_step"]["kl"] == 0.0
    assert train["sft_rft"]["init_adapter"] and not train["rft"]["init_adapter"]
    for line in lines:
        if line["kind"] == "eval":
            assert line["eval_prompts"] == quick.eval_prompts
            assert line["sampled_answers"] == quick.eval_prompts * quick.held_out_samples
            assert line["wilson_95"][0] <= line["exact_match"] <= line["wilson_95"][1]
