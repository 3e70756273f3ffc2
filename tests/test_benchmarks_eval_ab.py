"""benchmarks/eval_ab.py without a service: its data is the walkthrough's, its held-out items are
held out, its Wilson interval solves Wilson's equation, its summary and its arguments. The A/B itself
trains twice on the real model, so the benchmark is run by hand (docs/service.md quotes it)."""

from __future__ import annotations

import ast
import math
import re

import pytest

from tests.support.doc_blocks import DOCS, fenced_blocks, page_section
from tests.test_benchmarks_quality import load_benchmark_module

eval_ab = load_benchmark_module("eval_ab")


def test_training_files_are_the_walkthroughs_and_the_held_out_items_are_new(tmp_path, monkeypatch) -> None:
    [block] = [body for language, body in fenced_blocks(page_section(DOCS / "service.md", "## A real model"))
               if language == "bash"]
    snippet = re.search(r"python3 -c '(.*?)'\n", block, flags=re.DOTALL)
    assert snippet, "the walkthrough no longer writes its files with python3 -c '...'"
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet.group(1), "docs/service.md walkthrough", "exec"), {})  # writes the two files here
    train, validation = eval_ab.walkthrough_pairs()
    assert (tmp_path / "addition-train.jsonl").read_bytes() == eval_ab.chat_jsonl(train)
    assert (tmp_path / "addition-validation.jsonl").read_bytes() == eval_ab.chat_jsonl(validation)

    items = [entry["item"] for entry in eval_ab.held_out_items(100)]
    questions = {item["question"] for item in items}
    assert len(questions) == 100
    assert not questions & {f"{a} + {b} = ?" for a, b in train + validation}
    for item in items:
        a, b = (int(x) for x in item["question"].removesuffix(" = ?").split(" + "))
        assert item["answer"] == str(a + b)
    assert eval_ab.held_out_items(100) == eval_ab.held_out_items(100)  # the same items every run


@pytest.mark.parametrize(("passed", "total"), [(0, 100), (1, 100), (17, 100), (50, 100), (99, 100), (100, 100),
                                               (3, 7)])
def test_wilson_bounds_solve_wilsons_equation(passed: int, total: int) -> None:
    z = eval_ab.Z_95
    low, high = eval_ab.wilson_interval(passed, total)
    observed = passed / total
    assert 0 <= low <= observed <= high <= 1
    # each bound is a p with n (observed - p)^2 = z^2 p (1 - p): float64 arithmetic, relative 1e-12
    for bound in (low, high):
        assert total * (observed - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound), rel=1e-12, abs=1e-15)
    mirrored = eval_ab.wilson_interval(total - passed, total)
    assert (low, high) == pytest.approx((1 - mirrored[1], 1 - mirrored[0]), abs=1e-15)
    if passed == 0:
        assert (low, high) == (0.0, pytest.approx(z * z / (total + z * z), rel=1e-15))
    with pytest.raises(ValueError, match="total"):
        eval_ab.wilson_interval(0, 0)
    assert math.isclose(eval_ab.Z_95, 1.959963984540054)


def test_summary_compares_dora_with_lora_and_the_base() -> None:
    runs = [eval_ab.run_line("base", "smollm2-135m-instruct", 0, 100),
            eval_ab.run_line("LoRA r=8", "ft:a", 20, 100), eval_ab.run_line("DoRA r=8", "ft:b", 25, 100)]
    assert runs[1]["pass_rate"] == 0.2 and runs[1]["wilson_95"] == [0.1334, 0.2888]
    summary = eval_ab.summary_line(runs)
    assert (summary["dora_minus_lora_points"], summary["lora_minus_base_points"],
            summary["dora_minus_base_points"]) == (5.0, 20.0, 25.0)
    assert summary["lora_dora_intervals_overlap"] is True
    runs[2] = eval_ab.run_line("DoRA r=8", "ft:b", 60, 100)
    assert eval_ab.summary_line(runs)["lora_dora_intervals_overlap"] is False


def test_arguments() -> None:
    args = eval_ab.parse_args([])
    assert (args.api, args.items, args.steps) == (None, 100, 15)
    for bad in (["--api", "http://127.0.0.1:8000"], ["--items", "0"]):
        with pytest.raises(SystemExit) as exited:
            eval_ab.parse_args(bad)
        assert exited.value.code == 2


def test_the_docs_section_shows_the_scripts_job_settings_and_grader() -> None:
    """docs/service.md's A/B block is the script's calls: the same hyperparameters and grader."""
    [block] = [body for language, body in fenced_blocks(page_section(DOCS / "service.md", "## A/B: LoRA against DoRA"))
               if language == "python"]
    tree = ast.parse(block)  # the block is valid Python
    literals = [ast.literal_eval(node.value) for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)]
    assert eval_ab.HYPERPARAMETERS in literals
    criteria = [ast.literal_eval(keyword.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                for keyword in node.keywords if keyword.arg == "testing_criteria"]
    assert criteria == [[eval_ab.CRITERION]]
