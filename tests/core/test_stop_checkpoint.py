"""A run asked to stop (a worker shutting down) checkpoints the step it reached, and resuming from
that checkpoint ends where an uninterrupted run ends: the stop costs no step."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from dora_core.training import TrainingCallback, run_training
from dora_core.training.checkpoints import list_checkpoints
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class StopInside(TrainingCallback):
    """Asks to stop before micro-batch `micro_batch` of step `step` (1-based), with a checkpoint."""

    def __init__(self, *, step: int, micro_batch: int, checkpoint: bool = True) -> None:
        self.step, self.micro_batch, self.checkpoint = step, micro_batch, checkpoint
        self.seen, self.stop, self.checkpoints = 0, False, []

    def on_micro_batch(self, *, step, micro_batch_size):
        self.seen = self.seen + 1 if step == self.step else 0
        self.stop = self.stop or (step == self.step and self.seen == self.micro_batch)

    def should_stop(self):
        return self.stop

    def checkpoint_on_stop(self):
        return self.checkpoint

    def on_checkpoint(self, *, step, path):
        self.checkpoints.append(step)


def _adapter(out_dir):
    return load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("micro_batch", [1, 2], ids=["between-steps", "inside-a-step"])
def test_a_stop_checkpoints_the_step_reached_and_the_resumed_run_ends_the_same(tmp_path, tiny_model_dir,
                                                                                micro_batch):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    # two micro-batches per step and adapter dropout: a stop inside a step has drawn dropout seeds
    # from the RNG already, which the checkpoint must not keep
    config = run_config(tiny_model_dir, data, max_steps=10, checkpoint_interval=4, micro_batch_size=2,
                        gradient_accumulation_steps=2, adapter={"method": "dora", "rank": 4, "alpha": 8,
                                                                "dropout": 0.1})
    straight = run_training(config, tmp_path / "straight")
    stop = StopInside(step=7, micro_batch=micro_batch)
    stopped = run_training(config, tmp_path / "resumed", callbacks=[stop])
    assert stopped.status == "stopped" and stopped.step == 6
    assert stop.checkpoints == [4, 6]  # the interval's, then the stop's
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed" / "checkpoints")][-1] == 6
    resumed = run_training(config, tmp_path / "resumed")
    assert resumed.status == "completed" and resumed.resumed_from_step == 6
    expected, actual = _adapter(tmp_path / "straight"), _adapter(tmp_path / "resumed")
    assert expected.keys() == actual.keys() and straight.step == resumed.step == 10
    assert max(float((expected[k] - actual[k]).abs().max()) for k in expected) < 1e-5


def test_a_stop_without_checkpoint_on_stop_writes_none(tmp_path, tiny_model_dir):
    """A cancel (or a lost lease) stops without a checkpoint: nothing will resume from it."""
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    stop = StopInside(step=7, micro_batch=1, checkpoint=False)
    stopped = run_training(run_config(tiny_model_dir, data, max_steps=10, checkpoint_interval=4),
                           tmp_path / "out", callbacks=[stop])
    assert stopped.status == "stopped" and stopped.step == 6 and stop.checkpoints == [4]


def test_a_stop_right_after_an_interval_checkpoint_does_not_write_it_twice(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    stop = StopInside(step=5, micro_batch=1)
    stopped = run_training(run_config(tiny_model_dir, data, max_steps=10, checkpoint_interval=4),
                           tmp_path / "out", callbacks=[stop])
    assert stopped.step == 4 and stop.checkpoints == [4]
