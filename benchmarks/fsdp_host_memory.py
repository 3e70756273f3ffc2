"""Host memory of each rank of a 2-process run: does FSDP load the base once, not once per rank?

Measured, not asserted. A random Llama (default hidden 1024 x 12 layers: 0.24 GB of bf16
weights) is trained in fp32 on the CPU for one step by `train_in_processes` over 2 gloo ranks,
with ddp (every rank loads the whole model), with fsdp (rank 0 alone reads the weights; rank 1
builds the model on the meta device and receives its shards, dora_core/training/distributed.py)
and with an NF4 base under fsdp (ranks load and quantize one after another). The checkpoint is
stored in bf16, so loading converts it (as a bf16 run of an fp16 checkpoint does on a GPU): a
load in the stored dtype maps the file instead (transformers 5), and its pages are the page
cache's, shared by every rank, which is why the private figure is the one to read.

Each rank samples its private memory (RssAnon: not file-backed, not shared) every 2 ms from its
start to the end of its run; `private_peak_bytes` is the peak minus the value at the start
(what loading and training added), `resident_peak_bytes` the VmHWM (file pages included). On a
CPU the shards stay in host memory (on GPUs they move to the devices). One JSON line per run:

    {"benchmark": "fsdp_host_memory", "parallelism": "fsdp", "quantization": "none",
     "weight_bytes": ..., "private_peak_bytes": [rank 0, rank 1], "rank1_private_vs_weights": ...}

    python benchmarks/fsdp_host_memory.py [--hidden 1024 --layers 12]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dora_core.training import RunConfig, TrainingCallback
from dora_core.training.distributed import estimated_weight_bytes
from dora_core.training.processes import train_in_processes

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a + b}"}]} for a in range(8) for b in range(8)]


def status_bytes(field: str) -> int:
    """A size from /proc/self/status (Linux), e.g. RssAnon, VmHWM. Not getrusage's ru_maxrss: a
    spawned rank inherits its launcher's peak through fork and exec."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # kB


class HostMemory(TrainingCallback):
    """Made in every rank (the factory runs there, before the run); samples RssAnon on a thread
    until close(), which runs in every rank when its run ends and writes rank-R.json."""

    def __init__(self, *, folder: str) -> None:
        self.folder, self.start = Path(folder), status_bytes("RssAnon")
        self.peak, self.done = self.start, threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, status_bytes("RssAnon"))

    def close(self) -> None:
        self.done.set()
        self.sampler.join()
        self.peak = max(self.peak, status_bytes("RssAnon"))
        rank = os.environ.get("RANK", "0")
        (self.folder / f"rank-{rank}.json").write_text(json.dumps(
            {"private_peak": self.peak - self.start, "resident_peak": status_bytes("VmHWM")}))


def _factory(folder: str):
    return [HostMemory(folder=folder)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    from dora_core.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_tiny_model(root / "model", hidden_size=args.hidden, layers=args.layers, vocab_size=4096,
                                heads=8, kv_heads=4)
        stored = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
        stored.save_pretrained(model)  # the checkpoint in bf16, trained in fp32: loading converts it
        del stored
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
        weights = estimated_weight_bytes(str(model))
        for parallelism, quantization in (("ddp", "none"), ("fsdp", "none"), ("fsdp", "nf4")):
            name = f"{parallelism}-{quantization}"
            (root / name).mkdir()
            config = RunConfig.from_dict({
                "base_model": str(model), "train_file": str(data), "outputs": ["adapter"],
                "adapter": {"method": "dora", "rank": 8, "alpha": 16},
                "training": {"max_steps": 1, "micro_batch_size": 2, "max_seq_len": 64, "precision": "fp32",
                             "quantization": quantization, "parallelism": parallelism, "checkpoint_interval": 1,
                             "validation_split": 0, "sample_prompts": 0}})
            result = train_in_processes(2, config, root / f"out-{name}", device="cpu",
                                        callbacks=functools.partial(_factory, str(root / name)))
            ranks = [json.loads((root / name / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
            private = [rank["private_peak"] for rank in ranks]
            print(json.dumps({"benchmark": "fsdp_host_memory", "parallelism": parallelism,
                              "quantization": quantization, "status": result.status, "hidden": args.hidden,
                              "layers": args.layers, "weight_bytes": weights, "private_peak_bytes": private,
                              "resident_peak_bytes": [rank["resident_peak"] for rank in ranks],
                              "rank0_private_vs_weights": round(private[0] / weights, 3),
                              "rank1_private_vs_weights": round(private[1] / weights, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
