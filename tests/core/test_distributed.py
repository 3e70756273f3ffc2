"""Training over several processes (gloo, 2 CPU processes) is the single-process run, spread.

Same global batch, same result: DDP and FSDP2 runs (FSDP: rank 1 built on the meta device and filled
from rank 0's weights) give the single-process run's losses, gradient
norms and adapter; a run stopped or SIGKILLed with one process count resumes with another; a
stop asked on rank 0 (a cancel) and a SIGINT to `dora train --nproc 2` end every rank.

Tolerance. Each rank runs exactly the single-process micro-batches (same kernels on the same
inputs); what changes is the order of the fp32 gradient sums (rank 0's micro-batches, rank 1's,
then the all-reduce or reduce-scatter, instead of one running sum) and the loss metric's sum
over ranks. That is a replay that sums in another order: tests/support/numerics.replay_budget,
the fp32 backward budget of this model (each step's gradient moves within it, and AdamW's update
does not depend on the gradient's scale, so the adapter stays within it). Losses and gradient
norms are compared with the same budget. A dropped or doubled micro-batch, a gradient averaged
instead of summed (the grad_norm metric halves) or a wrong resume step differ by 1e-3 and more.
(Where a gradient component sits near zero, Adam can carry a last-bit difference far beyond that
budget: the NF4 test below meets one and compares its adapters in float64.)
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dora_core.training import run_training
from dora_core.training.checkpoints import list_checkpoints
from dora_core.training.processes import train_in_processes
from tests.support.distributed_runs import (
    EventsToFile,
    StopAfterStep,
    callbacks_factory,
    descendant_pids,
    wait_until_gone,
)
from tests.support.numerics import assert_close_to_reference, assert_states_close, eps, replay_budget
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

REPO = Path(__file__).resolve().parents[2]
# 3 micro-batches per step over 2 ranks: rank 1 pads each step with a weight-0 micro-batch.
SETTINGS = {"max_steps": 8, "micro_batch_size": 2, "gradient_accumulation_steps": 3, "checkpoint_interval": 2,
            "validation_split": 0.25, "eval_interval": 4, "sample_prompts": 0}


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", dataset_rows("chat"))


def _config(model_dir: Path, data: Path, **changes):
    return run_config(model_dir, data, **{**SETTINGS, "outputs": ["adapter", "merged"], **changes})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, data_file) -> Path:
    """The single-process run every test compares with."""
    out = tmp_path_factory.mktemp("straight")
    os.environ["HF_HUB_OFFLINE"] = "1"
    assert run_training(_config(tiny_model_dir, data_file), out, device="cpu").status == "completed"
    return out


def _budget(model_dir: Path):
    from transformers import AutoConfig

    return replay_budget(AutoConfig.from_pretrained(model_dir))


def _series(out: Path, name: str) -> torch.Tensor:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor([record[name] for record in records if name in record], dtype=torch.float64)


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def _assert_same_run(out: Path, straight: Path, model_dir: Path, *, what: str) -> None:
    limit = _budget(model_dir)
    assert _steps(out) == list(range(1, SETTINGS["max_steps"] + 1)), f"{what}: each step once"
    for name in ("loss", "grad_norm", "eval_loss"):
        assert_close_to_reference(_series(out, name), _series(straight, name), limit, what=f"{what} {name}")
    adapter = "adapter/adapter_model.safetensors"
    assert_states_close(load_file(str(out / adapter)), load_file(str(straight / adapter)), limit,
                        what=f"{what} adapter")


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_processes_give_the_single_process_run(tmp_path, tiny_model_dir, data_file, straight, parallelism):
    out, events = tmp_path / "out", tmp_path / "events.txt"
    result = train_in_processes(2, _config(tiny_model_dir, data_file, parallelism=parallelism), out, device="cpu",
                                callbacks=callbacks_factory(EventsToFile, path=str(events)))
    assert result.status == "completed" and result.step == SETTINGS["max_steps"]
    # FSDP: rank 1 built the model on the meta device and got its shards from rank 0 (so the
    # equality below also checks what was sent); DDP: every rank loads the whole model
    sent = "rank 0 loaded the base and sent 1 other rank(s) their shards"
    assert (sent in events.read_text()) == (parallelism == "fsdp")
    _assert_same_run(out, straight, tiny_model_dir, what=parallelism)
    # the merged model: from rank 0's whole model (DDP) or rebuilt on the CPU from the gathered adapter (FSDP)
    merged = "merged/model.safetensors"
    assert_states_close(load_file(str(out / merged)), load_file(str(straight / merged)), _budget(tiny_model_dir),
                        what=f"{parallelism} merged")
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [6, 8]  # rank 0 alone wrote them


def test_a_stop_on_rank_0_ends_every_rank_and_runs_resume_across_process_counts(tmp_path, tiny_model_dir,
                                                                                  data_file, straight):
    config, out = _config(tiny_model_dir, data_file), tmp_path / "out"
    first = run_training(config, out, device="cpu", callbacks=[StopAfterStep(step=3)])
    assert (first.status, first.step) == ("stopped", 3)
    # 1 -> 2 processes; rank 0's callback stops after step 6: had rank 1 not stopped with it, it
    # would wait in its next collective for ever and this call would not return
    started = time.monotonic()
    second = train_in_processes(2, config, out, device="cpu", callbacks=callbacks_factory(StopAfterStep, step=6))
    assert (second.status, second.step, second.resumed_from_step) == ("stopped", 6, 3)
    assert list_checkpoints(out / "checkpoints")[-1][0] == 6
    print(f"2-process resume 3 -> 6 took {time.monotonic() - started:.1f} s")
    # 2 -> 1 process
    third = run_training(config, out, device="cpu")
    assert (third.status, third.resumed_from_step) == ("completed", 6)
    _assert_same_run(out, straight, tiny_model_dir, what="1 -> 2 -> 1 processes")


def test_a_sigkilled_two_process_run_resumes_in_one_process(tmp_path, tiny_model_dir, data_file, straight):
    config, out = _config(tiny_model_dir, data_file), tmp_path / "out"
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(config.to_dict()))
    launcher = subprocess.Popen([sys.executable, "-m", "tests.support.distributed_runs", str(config_file), str(out),
                                 "2", "0.5"], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(out / "checkpoints") and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ranks = descendant_pids(launcher.pid)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
    finally:
        launcher.kill()
    assert launcher.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert ranks and not wait_until_gone(ranks, timeout=30), "a rank outlived its SIGKILLed launcher"
    killed_at = list_checkpoints(out / "checkpoints")[-1][0]
    assert 2 <= killed_at < SETTINGS["max_steps"] and not (out / "manifest.json").exists()
    resumed = run_training(config, out, device="cpu")
    assert (resumed.status, resumed.resumed_from_step) == ("completed", killed_at)
    _assert_same_run(out, straight, tiny_model_dir, what=f"killed at step {killed_at}, resumed in one process")


def test_sigint_to_dora_train_nproc_2_ends_every_rank(tmp_path, tiny_model_dir, data_file):
    settings = {"base_model": str(tiny_model_dir), "train_file": str(data_file),
                "adapter": {"method": "dora", "rank": 4, "alpha": 8},
                "training": {**SETTINGS, "max_steps": 500, "learning_rate": 1e-2, "max_seq_len": 64}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    dora = Path(sys.executable).with_name("dora")
    command = subprocess.Popen([str(dora), "train", str(config), "--out", str(tmp_path / "out"), "--device", "cpu",
                                "--nproc", "2", "--log-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert _wait_for_line(command, "checkpoint saved at step 2", timeout=300), "no checkpoint line"
        ranks = descendant_pids(command.pid)
        command.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = command.communicate(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        command.kill()
    assert command.returncode == 130, stderr
    assert "interrupted: checkpoints are kept" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert ranks and not wait_until_gone(ranks, timeout=10), "a rank outlived the interrupted command"
    print(f"SIGINT to exit: {stopped_in:.1f} s")


def _wait_for_line(process: subprocess.Popen, text: str, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready and text in process.stdout.readline():
            return True
    return False


def test_dora_train_refuses_several_hosts(tmp_path, tiny_model_dir, data_file, capsys):
    from dora_cli.main import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(tiny_model_dir), "train_file": str(data_file)}))
    assert main(["train", str(config), "--out", str(tmp_path / "out"), "--nproc", "2", "--nnodes", "2"]) == 2
    assert "--nnodes 2: multi-host runs are not supported yet" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_dataset_mistake_in_the_ranks_exits_2_with_its_message(tmp_path, tiny_model_dir, capfd):
    from dora_cli.main import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(tiny_model_dir), "train_file": str(bad)}))
    assert main(["train", str(config), "--out", str(tmp_path / "out"), "--device", "cpu", "--nproc", "2"]) == 2
    err = capfd.readouterr().err
    assert "error: invalid dataset" in err and "line 2" in err and "Traceback" not in err, err[-2000:]


def test_an_nf4_base_sharded_by_fsdp_trains_as_the_replicated_one(tmp_path_factory, data_file):
    """QDoRA under FSDP2: torchao's NF4 weights are sharded with their blocks and all-gathered for
    each forward and backward. Hidden size 256, so every NF4 weight's packed values, block scales
    and scales of scales split into two equal shards.

    What sharding must not change is the math: DDP over the same 2 processes (every rank holds the
    whole NF4 model) runs the same kernels on the same values and the same gradient sums (two
    ranks' terms). One sum differs: the gradient norm that clipping divides by (FSDP squares and
    sums each rank's shards, then adds the ranks' sums; DDP sums whole tensors), so the clip
    factor, and with it every gradient, may differ in its last bit. Measured: with that norm
    summed in DDP's order, the two NF4 runs are bit-identical over 4 steps (the sharded
    dequantization is exact).

    Why the fp32 adapters are not compared: AdamW normalises each component by its own history,
    so a gradient component within its rounding error of zero moves its parameter by up to ~lr,
    whatever the tensor's scale (tests/support/numerics.adam_drift; in fp32 no rounding budget
    bounds it). Here: lora_A of layer 0's down_proj first gets a gradient at step 2 (lora_B is
    zero before), one of its components is 9e-8 (the tensor's rms: 3e-2), a 1e-8 rounding
    difference (Adam's eps is 1e-8) moved it 1.8e-4 (7e-4 with 2 threads): 1.2e-4 (5e-4) of the
    tensor against the replay budget 5.2e-5 on a 2-core AMD EPYC, and 3.4e-4 from the
    one-process run, where the order of the sums over ranks differs. Whether the two sums agree
    in their last bit is the CPU's and thread count's choice; the amplification is the data's.
    So:

    * fp32, FSDP vs one process, step 1 (before any update): the loss and the gradient norm
      within their rounding budgets;
    * float64 (tests/support/distributed_runs.train_in_float64), FSDP vs DDP over 4 steps: each
      adapter tensor within its rounding budget plus Adam's worst-case drift relative to its
      norm (~1e-6) plus one fp32 eps (the adapter file stores fp32), the losses within theirs
      plus the drift times the gradient norm (a loss moves by at most |grad L| |delta theta|),
      and step 1's gradient norm within its budget. Measured: bit-identical adapters, losses
      2e-16 apart (budget 5e-6); with the halves of the all-gathered block scales (or of the
      scales of scales) swapped, the losses end 0.24 (0.04) apart."""
    from transformers import AutoConfig

    from dora_core.tiny_model import make_tiny_model
    from tests.support.distributed_runs import train_in_float64
    from tests.support.numerics import adam_drift, adam_replay_budget, gradient_budget

    model_dir = make_tiny_model(tmp_path_factory.mktemp("tiny256") / "tiny-llama", hidden_size=256)
    model_config = AutoConfig.from_pretrained(model_dir)
    config = _config(model_dir, data_file, quantization="nf4", max_steps=4, eval_interval=2, outputs=["adapter"])
    first_step = _config(model_dir, data_file, quantization="nf4", max_steps=1, outputs=["adapter"])

    def spread(run_config, parallelism: str):
        training = run_config.training.model_copy(update={"parallelism": parallelism})
        return run_config.model_copy(update={"training": training})

    one, fsdp, ddp64, fsdp64 = (tmp_path_factory.mktemp(name) for name in ("one", "fsdp", "ddp64", "fsdp64"))
    assert run_training(first_step, one, device="cpu").status == "completed"
    assert train_in_processes(2, spread(first_step, "fsdp"), fsdp, device="cpu").status == "completed"
    assert train_in_float64(2, spread(config, "ddp"), ddp64).status == "completed"
    assert train_in_float64(2, spread(config, "fsdp"), fsdp64).status == "completed"

    adapter = "adapter/adapter_model.safetensors"
    reference = load_file(str(ddp64 / adapter))
    elements = sum(tensor.numel() for tensor in reference.values())
    assert_close_to_reference(_series(fsdp, "loss"), _series(one, "loss"), replay_budget(model_config),
                              what="nf4 fsdp fp32 step-1 loss")
    assert_close_to_reference(_series(fsdp, "grad_norm"), _series(one, "grad_norm"),
                              gradient_budget(model_config, torch.float32, adapter_elements=elements),
                              what="nf4 fsdp fp32 step-1 grad_norm")

    gradient = gradient_budget(model_config, torch.float64, adapter_elements=elements)
    drift = adam_drift(gradient, learning_rate=config.training.learning_rate,
                       max_grad_norm=config.training.max_grad_norm, steps=config.training.max_steps)
    assert _steps(fsdp64) == _steps(ddp64) == [1, 2, 3, 4]
    losses, grad_norms = _series(ddp64, "loss"), _series(ddp64, "grad_norm")
    through_gradient = drift[0] * float(grad_norms.norm() / losses.norm())
    assert_close_to_reference(_series(fsdp64, "loss"), losses, replay_budget(model_config, torch.float64).plus(
        through_gradient, f"({drift[1]}) x |grad_norm| / |loss| = {through_gradient:.3g}"), what="nf4 float64 losses")
    assert_close_to_reference(_series(fsdp64, "grad_norm")[:1], grad_norms[:1], gradient,
                              what="nf4 float64 step-1 grad_norm")
    stored = eps(torch.float32)
    sharded = load_file(str(fsdp64 / adapter))
    assert sharded.keys() == reference.keys()
    for key, tensor in reference.items():
        limit = adam_replay_budget(model_config, torch.float64, scale=float(tensor.double().norm()), drift=drift)
        assert_close_to_reference(sharded[key], tensor, limit.plus(stored, f"fp32 file: eps(float32) {stored:.3g}"),
                                  what=f"nf4 float64 adapter, fsdp vs ddp {key}")


def test_nf4_weights_fsdp_cannot_split_evenly_fail_with_the_ranks_own_error(tmp_path, tiny_model_dir, data_file):
    """The tiny model's NF4 weights (64 blocks, one scale of scales) do not split in two: the
    run refuses before sharding, and that TrainingError (not the launcher's ChildFailedError)
    is what the caller gets, so the worker fails the job at once with its message."""
    from dora_core.training import TrainingError

    config = _config(tiny_model_dir, data_file, quantization="nf4", parallelism="fsdp")
    with pytest.raises(TrainingError, match="does not split into 2 equal shards.*use training.parallelism: ddp"):
        train_in_processes(2, config, tmp_path / "out", device="cpu")
