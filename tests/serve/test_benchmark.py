"""benchmarks/serve.py runs end to end (on the tiny model, in seconds) and reports every ratio the
issue sets a target for: the GPU check runs it on CUDA, where nobody watches it break."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"dora_vs_lora_b1", "dora_vs_lora_b8", "mixed_vs_single_adapter_b8", "streams_16_vs_1",
                "streams_16_vs_1_decode", "unmerged_vs_merged_b1", "unmerged_vs_merged_b8",
                "checkpoint_to_first_token_s"}


def test_the_serving_benchmark_runs_on_the_tiny_model_and_reports_every_target(tiny_model_dir):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--model", str(tiny_model_dir),
                           "--rank", "4", "--tokens", "3", "--prompt-tokens", "8", "--repeats", "1"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    cases = {line["case"]: line for line in lines}
    assert set(cases) >= {"lora_b1", "dora_b1", "dora_8_adapters_b8", "streams_16", "merged_b8",
                          "checkpoint_to_first_token", "summary"}
    assert cases["dora_8_adapters_b8"]["distinct_adapters"] == 8 and cases["streams_16"]["requests"] == 16
    summary = cases["summary"]
    assert SUMMARY_KEYS <= set(summary) and all(summary[key] is not None and summary[key] > 0 for key in SUMMARY_KEYS)
