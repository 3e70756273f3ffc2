"""A process SIGKILLed while writing a checkpoint leaves the previous one intact and loadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from dora_core.training import run_training
from dora_core.training.checkpoints import list_checkpoints
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

REPO = Path(__file__).resolve().parents[2]

# Runs training in a child process whose torch.save, while writing the step-4 checkpoint,
# writes half a file and then SIGKILLs its own process: no cleanup code can run.
CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    from dora_core.training import checkpoints, run_training, RunConfig
    real_save = torch.save
    def dying_save(obj, path, *args, **kwargs):
        if "step-000004" in str(path) and str(path).endswith("optimizer.pt"):
            with open(path, "wb") as handle:
                handle.write(b"half a checkpoint")
                handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, path, *args, **kwargs)
    checkpoints.torch.save = dying_save
    config = RunConfig.from_file(sys.argv[1])
    run_training(config, sys.argv[2])
""")


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("prompt_completion"))
    config = run_config(tiny_model_dir, data, max_steps=8, checkpoint_interval=2)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", CHILD, str(config_path), str(out)], env=env, timeout=300,
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]

    checkpoint_dir = out / "checkpoints"
    assert [step for step, _ in list_checkpoints(checkpoint_dir)] == [2]
    assert list(checkpoint_dir.glob(".tmp-step-000004-*")), "the killed write left its temporary folder"
    assert not (out / "adapter").exists()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_training(config, out)
    assert result.status == "completed" and result.resumed_from_step == 2 and result.step == 8
    assert not list(checkpoint_dir.glob(".tmp-*"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
