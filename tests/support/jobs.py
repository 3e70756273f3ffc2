"""Training jobs the worker and e2e suites submit: a small arithmetic dataset and a short DoRA run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a + b}"}]} for a in range(5) for b in range(5)]
DATASET = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def dora_method(**hyperparameters) -> dict:
    """A job's `method` block: DoRA rank 4 on the tiny model, 6 steps with a checkpoint every 3 unless
    `hyperparameters` say otherwise (the e2e suite runs 12 steps with a checkpoint every 4)."""
    training = {"max_steps": 6, "batch_size": 4, "max_seq_len": 64, "checkpoint_interval": 3,
                "learning_rate": 1e-2, "warmup_ratio": 0.0, "lr_scheduler": "constant"} | hyperparameters
    return {"type": "dora", "dora": {"rank": 4, "alpha": 8, "dropout": 0.0, "hyperparameters": training}}


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.1):
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
