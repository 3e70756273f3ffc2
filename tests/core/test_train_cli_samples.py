"""`dora train` prints each evaluation's samples (issue #15): prompt end, expected and answer."""

from __future__ import annotations

import pytest
import yaml

from dora_cli.main import main
from dora_cli.progress import SAMPLE_TEXT_WIDTH, format_samples
from tests.support.training_helpers import dataset_rows, write_jsonl


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_dora_train_prints_the_samples_of_each_evaluation(tmp_path, tiny_model_dir, capsys):
    write_jsonl(tmp_path / "train.jsonl", dataset_rows("prompt_completion"))
    settings = {"base_model": str(tiny_model_dir), "train_file": "train.jsonl",
                "adapter": {"method": "dora", "rank": 4, "alpha": 8},
                "training": {"max_steps": 6, "eval_interval": 3, "micro_batch_size": 4, "max_seq_len": 64,
                             "learning_rate": 1e-2, "validation_split": 0.25, "sample_prompts": 2,
                             "sample_max_new_tokens": 4}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    for step in (3, 6):
        start = out.index(f"samples at step {step}:")
        block = out[start + 1:start + 7]
        assert [line.split()[0] for line in block] == ["#0", "expected", "answer", "#1", "expected", "answer"]
        assert block[0].split()[1] == "prompt" and block[0].endswith("<|assistant|>")
    assert (tmp_path / "out" / "samples.jsonl").is_file()


def test_samples_are_printed_one_line_each_and_cut():
    long = "word " * 100
    lines = format_samples(4, [{"index": 0, "prompt": long + "the end\n", "expected": "a\nb", "answer": long}])
    assert lines[0] == "samples at step 4:"
    assert lines[1].endswith("word the end") and "\u2026" in lines[1]  # the prompt's end is kept
    assert lines[2] == "     expected a b"
    assert lines[3].startswith("     answer   word word") and lines[3].endswith("\u2026")
    assert all(len(line) <= len("     expected ") + SAMPLE_TEXT_WIDTH for line in lines)
