"""The training run: every format learns, resume is exact, stop and OOM behave, outputs load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dora_core.config import AdapterConfigError
from dora_core.training import RunConfig, TrainingCallback, TrainingError, run_training
from tests.support.numerics import (
    assert_close_to_reference,
    assert_distinguishable,
    assert_states_close,
    float64_model,
    model_budget,
    replay_budget,
)
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _adapter_tensors(out_dir):
    return load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))


def _metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _replay_budget(model_dir):
    from transformers import AutoConfig

    return replay_budget(AutoConfig.from_pretrained(model_dir))


class Recorder(TrainingCallback):
    def __init__(self):
        self.events, self.steps, self.checkpoints, self.resumed = [], [], [], []
        self.full_validations = []  # steps whose whole validation set was sent for a checkpoint

    def on_evaluate(self, metrics):
        if "full_eval_loss" in metrics:
            self.full_validations.append(metrics["step"])

    def on_event(self, message, **kwargs):
        self.events.append(message)

    def on_resume(self, *, step):
        self.resumed.append(step)

    def on_step(self, metrics):
        self.steps.append(metrics["step"])

    def on_checkpoint(self, *, step, path):
        self.checkpoints.append(step)


@pytest.mark.parametrize("kind", ["chat", "prompt_completion", "alpaca", "text"])
def test_each_format_trains_and_memorises(tmp_path, tiny_model_dir, kind):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows(kind))
    config = run_config(tiny_model_dir, data, max_steps=40, micro_batch_size=8, checkpoint_interval=100)
    result = run_training(config, tmp_path / "out")
    losses = [m["loss"] for m in _metrics(tmp_path / "out") if "loss" in m]
    assert result.status == "completed" and len(losses) == 40
    assert min(losses[-5:]) < 0.4 * losses[0], losses
    report = json.loads((tmp_path / "out" / "dataset_report.json").read_text())
    assert report["train"]["format"] == kind
    if kind != "text":  # loss only on the answers: a small share of all tokens
        assert report["train"]["trainable_tokens"] < 0.3 * report["train"]["tokens"]


def test_train_on_inputs_puts_loss_on_every_token(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("prompt_completion"))
    masked = run_training(run_config(tiny_model_dir, data, max_steps=1), tmp_path / "masked")
    full = run_training(run_config(tiny_model_dir, data, max_steps=1, train_on_inputs=True), tmp_path / "full")
    assert masked.status == full.status == "completed"
    assert _metrics(tmp_path / "full")[0]["trained_tokens"] > 4 * _metrics(tmp_path / "masked")[0]["trained_tokens"]


class CrashAt(TrainingCallback):
    """Raises inside step `step` (after the checkpoint of an earlier step), like a dying process."""

    def __init__(self, step):
        self.step = step

    def on_micro_batch(self, *, step, micro_batch_size):
        if step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_interrupted_and_resumed_run_ends_with_the_same_adapter(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    config = run_config(tiny_model_dir, data, max_steps=12, checkpoint_interval=4,
                        adapter={"method": "dora", "rank": 4, "alpha": 8, "dropout": 0.1})
    straight = run_training(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tmp_path / "resumed", callbacks=[CrashAt(step=7)])  # last checkpoint: step 4
    assert [m["step"] for m in _metrics(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
    recorder = Recorder()
    resumed = run_training(config, tmp_path / "resumed", callbacks=[recorder])
    assert resumed.resumed_from_step == 4 and straight.resumed_from_step is None
    assert recorder.steps[0] == 5 and recorder.resumed == [4]
    assert not any("resumed" in e for e in recorder.events)  # a typed hook, not an event's text
    steps = [m["step"] for m in _metrics(tmp_path / "resumed")]
    assert steps == list(range(1, 13))
    limit = _replay_budget(tiny_model_dir)
    expected, actual = _adapter_tensors(tmp_path / "straight"), _adapter_tensors(tmp_path / "resumed")
    assert_states_close(actual, expected, limit, what="resumed adapter")
    losses = {m["step"]: m["loss"] for m in _metrics(tmp_path / "straight")}
    resumed = {m["step"]: m["loss"] for m in _metrics(tmp_path / "resumed")}
    assert_close_to_reference(torch.tensor([resumed[s] for s in sorted(losses)], dtype=torch.float64),
                              torch.tensor([losses[s] for s in sorted(losses)], dtype=torch.float64), limit,
                              what="losses per step")


class StopAfter(TrainingCallback):
    def __init__(self, step):
        self.step, self.stop = step, False

    def on_step(self, metrics):
        self.stop = self.stop or metrics["step"] >= self.step

    def should_stop(self):
        return self.stop


def test_should_stop_ends_the_run_within_one_step(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("alpaca"))
    result = run_training(run_config(tiny_model_dir, data, max_steps=50), tmp_path / "out", callbacks=[StopAfter(3)])
    assert result.status == "stopped" and result.step == 3
    assert not (tmp_path / "out" / "adapter").exists()


class OutOfMemoryAbove(TrainingCallback):
    def __init__(self, limit):
        self.limit = limit

    def on_micro_batch(self, *, step, micro_batch_size):
        if micro_batch_size > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_global_batch(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("prompt_completion"))
    recorder = Recorder()
    result = run_training(run_config(tiny_model_dir, data, micro_batch_size=8, gradient_accumulation_steps=1),
                          tmp_path / "oom", callbacks=[OutOfMemoryAbove(2), recorder])
    run_training(run_config(tiny_model_dir, data, micro_batch_size=2, gradient_accumulation_steps=4),
                 tmp_path / "reference")
    assert result.status == "completed" and result.step == 12
    assert sum("out of memory: micro-batch" in e for e in recorder.events) == 2
    assert {m["micro_batch_size"] for m in _metrics(tmp_path / "oom")} == {2}
    expected, actual = _adapter_tensors(tmp_path / "reference"), _adapter_tensors(tmp_path / "oom")
    assert_states_close(actual, expected, _replay_budget(tiny_model_dir), what="OOM-halved adapter")
    manifest = json.loads((tmp_path / "oom" / "manifest.json").read_text())
    assert manifest["oom_retries"] == 2 and manifest["micro_batch_size"] == 2


def test_out_of_memory_at_micro_batch_one_fails_clearly(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("prompt_completion"))
    with pytest.raises(TrainingError, match="out of memory at micro-batch size 1"):
        run_training(run_config(tiny_model_dir, data, micro_batch_size=2), tmp_path / "out",
                     callbacks=[OutOfMemoryAbove(0)])


def test_validation_split_gives_eval_metrics(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    run_training(run_config(tiny_model_dir, data, max_steps=10, validation_split=0.25, eval_interval=5),
                 tmp_path / "out")
    evals = [m for m in _metrics(tmp_path / "out") if "eval_loss" in m]
    assert [m["step"] for m in evals] == [5, 10]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"] * 1.5 and 0 <= evals[1]["eval_token_accuracy"] <= 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["final_metrics"]["eval_loss"] == evals[1]["eval_loss"]
    assert manifest["dataset"]["train_sha256"] and manifest["seed"] == 0 and "torch" in manifest["library_versions"]


class EvaluationRecorder(TrainingCallback):
    def __init__(self):
        self.evaluations = []

    def on_evaluate(self, metrics):
        self.evaluations.append(metrics)


def test_every_checkpoint_step_measures_the_whole_validation_set(tmp_path, tiny_model_dir):
    """Checkpoints at 2 and 4 get `full_eval_*`; at 2 no evaluation is due (eval_interval 3) yet its
    numbers are the evaluation a run with eval_interval 2 records there (the same trajectory:
    measuring changes nothing the training reads). Evaluations stay at 3 and the last step."""
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    runs = {}
    for interval in (3, 2):
        recorder = EvaluationRecorder()
        config = run_config(tiny_model_dir, data, max_steps=4, validation_split=0.25, eval_interval=interval,
                            checkpoint_interval=2)
        run_training(config, tmp_path / f"every-{interval}", callbacks=[recorder])
        runs[interval] = recorder.evaluations
    full = {m["step"]: m for m in runs[3] if "full_eval_loss" in m}
    evaluated = {m["step"]: m for m in runs[2] if "eval_loss" in m}
    assert sorted(full) == [2, 4]
    assert [m["step"] for m in _metrics(tmp_path / "every-3") if "eval_loss" in m] == [3, 4]
    assert not any("full_eval_loss" in m for m in _metrics(tmp_path / "every-3"))  # not an evaluation
    for step in (2, 4):
        # the same fp32 computation on the same weights in one process: equal to a few ulps at most
        assert full[step]["full_eval_loss"] == pytest.approx(evaluated[step]["eval_loss"], rel=8 * 2**-23), step
        assert full[step]["full_eval_token_accuracy"] == pytest.approx(evaluated[step]["eval_token_accuracy"],
                                                                       rel=8 * 2**-23)
    final = next(m for m in runs[3] if m["step"] == 4 and "eval_loss" in m)
    assert full[4]["full_eval_loss"] == final["eval_loss"]  # an evaluation at a checkpoint step is reused


def test_adapter_loads_in_peft_and_merged_model_loads_with_transformers(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dora_core import load_adapter
    from dora_core.model_loading import load_base_model

    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    run_training(run_config(tiny_model_dir, data, max_steps=8, outputs=["adapter", "merged"]), tmp_path / "out")
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 11]])
    # Trained in fp32 (the production path), evaluated in float64: the adapter file holds fp32
    # values that float64 represents exactly, so ours and PEFT compute the same math (float64
    # budget); the merged file holds W' rounded to fp32 after an fp32 merge, a relative change of
    # each weight within fp32's per-stage budget, so merged vs ours gets fp32's forward budget.
    float64 = torch.float64
    adapter, merged_dir = tmp_path / "out" / "adapter", tmp_path / "out" / "merged"
    ours = float64_model(load_adapter(load_base_model(tiny_model_dir, dtype=float64), adapter))
    peft = PeftModel.from_pretrained(float64_model(load_base_model(tiny_model_dir, dtype=float64)), adapter)
    merged = float64_model(AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True, dtype=float64))
    base = float64_model(load_base_model(tiny_model_dir, dtype=float64))
    merge_limit = model_budget(base, torch.float32)
    with torch.no_grad():
        ours_logits = ours(ids).logits
        peft_logits = peft(input_ids=ids).logits
        assert ours_logits.dtype == peft_logits.dtype == float64
        assert_distinguishable(base(ids).logits, ours_logits, merge_limit, what="training must change the model")
        assert_close_to_reference(peft_logits, ours_logits, model_budget(base, float64), what="PEFT's logits")
        assert_close_to_reference(merged(ids).logits, ours_logits, merge_limit, what="merged model's logits")
    assert (tmp_path / "out" / "merged" / "tokenizer_config.json").exists()
    assert not list((tmp_path / "out" / "merged").glob("*.bin"))


@pytest.mark.parametrize(("training", "field"), [({"micro_batch_size": 0}, "training.micro_batch_size"),
                                                  ({"learning_rate": -1}, "training.learning_rate"),
                                                  ({"lr_scheduler": "step"}, "training.lr_scheduler"),
                                                  ({"epochs": "many"}, "training.epochs"),
                                                  ({"no_such_setting": 1}, "training.no_such_setting")])
def test_invalid_training_settings_name_the_field(training, field):
    with pytest.raises(AdapterConfigError) as error:
        RunConfig.from_dict({"base_model": "m", "train_file": "f.jsonl", "training": training})
    assert error.value.field == field


def test_precision_bf16_needs_a_gpu(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("text"))
    with pytest.raises(TrainingError, match="bf16 needs a CUDA GPU"):
        run_training(run_config(tiny_model_dir, data, precision="bf16"), tmp_path / "out", device="cpu")


def test_the_parallelism_strategy_is_decided_once_per_run(tmp_path, tiny_model_dir, monkeypatch):
    """It reads the GPU's memory and the model folder: loading, gradient checkpointing and wrap
    read the one decision (Parallelism.strategy) instead of each asking again."""
    from dora_core.training import distributed

    calls = []
    decide = distributed.choose_strategy

    def counted(*args, **kwargs):
        calls.append(1)
        return decide(*args, **kwargs)

    monkeypatch.setattr(distributed, "choose_strategy", counted)
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    run_training(run_config(tiny_model_dir, data, max_steps=1, gradient_checkpointing="auto"), tmp_path / "out")
    assert calls == [1]


@pytest.mark.parametrize("missing", ["base_model", "train_file"])
def test_missing_required_setting_names_it(missing):
    data = {"base_model": "m", "train_file": "f.jsonl"}
    data.pop(missing)
    with pytest.raises(AdapterConfigError) as error:
        RunConfig.from_dict(data)
    assert error.value.field == missing


def test_gradient_checkpointing_gives_the_same_run(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    plain = run_training(run_config(tiny_model_dir, data, max_steps=4), tmp_path / "plain")
    checkpointed = run_training(run_config(tiny_model_dir, data, max_steps=4, gradient_checkpointing=True),
                                tmp_path / "checkpointed")
    assert plain.status == checkpointed.status == "completed"
    expected, actual = _adapter_tensors(tmp_path / "plain"), _adapter_tensors(tmp_path / "checkpointed")
    assert_states_close(actual, expected, _replay_budget(tiny_model_dir), what="checkpointed adapter")


def test_early_stopping_when_eval_loss_stops_improving(tmp_path, tiny_model_dir):
    """Validation answers contradict the training answers: memorising one worsens the other."""
    rows = dataset_rows("prompt_completion")
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    wrong = write_jsonl(tmp_path / "validation.jsonl", [{**row, "completion": " 99"} for row in rows])
    config = run_config(tiny_model_dir, train, max_steps=40, eval_interval=2, early_stopping_patience=2)
    config = RunConfig.from_dict({**config.to_dict(), "validation_file": str(wrong)})
    recorder = Recorder()
    result = run_training(config, tmp_path / "out", callbacks=[recorder])
    evals = [m["eval_loss"] for m in _metrics(tmp_path / "out") if "eval_loss" in m]
    assert result.status == "early_stopped" and result.step < 40
    assert min(evals[:-2]) <= min(evals[-2:]), "stopped after two evaluations without improvement"
    assert any("early stopping" in e for e in recorder.events)
    assert recorder.checkpoints[-1] == result.step == recorder.full_validations[-1]  # its checkpoint has full_valid_*
    assert (tmp_path / "out" / "adapter").exists()
    again = run_training(config, tmp_path / "out")  # a re-run (a worker retry) must not train on
    assert again.status == "early_stopped" and again.step == result.step
    assert len(_metrics(tmp_path / "out")) == len(evals) + result.step


def test_gradient_checkpointing_setting_accepts_auto_only_besides_booleans():
    with pytest.raises(AdapterConfigError) as error:
        RunConfig.from_dict({"base_model": "m", "train_file": "f", "training": {"gradient_checkpointing": "yes"}})
    assert error.value.field == "training.gradient_checkpointing"
