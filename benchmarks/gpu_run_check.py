"""A few training steps through `run_training` on CUDA, with a bf16 base and with an NF4 base.

The core suite runs on the CPU (gpu_check.sh hides the GPU from it) and dora_step.py builds its
models itself, so neither goes through the run's own loading on a GPU: this does. The NF4 run
loads the base into host memory and quantizes each adapted layer on the GPU (run.py), so its
peak must stay below the bf16 run's. One JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dora_core.tiny_model import make_tiny_model
from dora_core.training import RunConfig, run_training

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a + b}"}]} for a in range(8) for b in range(8)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    status = 0
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_tiny_model(root / "model", hidden_size=args.hidden, layers=args.layers, vocab_size=4096,
                                heads=8, kv_heads=4)
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
        for quantization in ("none", "nf4"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            config = RunConfig.from_dict({
                "base_model": str(model), "train_file": str(data), "outputs": ["adapter", "merged"],
                "adapter": {"method": "dora", "rank": 8, "alpha": 16},
                "training": {"max_steps": 4, "micro_batch_size": 4, "max_seq_len": 64, "precision": "bf16",
                             "quantization": quantization, "checkpoint_interval": 4, "sample_prompts": 0}})
            try:
                result = run_training(config, root / f"out-{quantization}", device="cuda")
                line = {"check": "run_training", "quantization": quantization, "status": result.status,
                        "steps": result.step, "peak_bytes": torch.cuda.max_memory_allocated()}
            except Exception as error:  # noqa: BLE001 - reported, the script goes on
                line = {"check": "run_training", "quantization": quantization, "error": repr(error)[:500]}
                status = 1
            print(json.dumps(line), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
