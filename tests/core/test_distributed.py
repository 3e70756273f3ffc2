"""Training over several processes (gloo, 2 CPU processes) is the single-process run, spread.

Same global batch, same result: DDP and FSDP2 runs (FSDP: rank 1 built on the meta device and filled
from rank 0's weights) give the single-process run's losses, gradient
norms and adapter; a run stopped or SIGKILLed with one process count resumes with another; a
stop asked on rank 0 (a cancel) and a SIGINT to `dora train --nproc 2` end every rank.

Tolerance. Each rank runs exactly the single-process micro-batches (same kernels on the same
inputs); what changes is the order of the gradient sums (rank 0's micro-batches, rank 1's, then
the all-reduce or reduce-scatter, instead of one running sum; with FSDP the gradient norm that
clipping divides by is summed shard by shard, then over ranks) and the loss metric's sum over
ranks. Before the first update that is a replay summing in another order: the fp32 step-1 loss
within tests/support/numerics.replay_budget and the gradient norm within gradient_budget.

After several AdamW steps no fp32 budget exists: Adam divides each component by its own history,
so a gradient component near zero (at Adam's eps scale, e.g. a lora_A component on step 2, the
first step lora_A gets a gradient) whose last bit differs moves its parameter by ~0.02 lr whatever
the tensor's scale (numerics.adam_drift), and whether two sums of another order agree in their
last bit is the CPU's, the BLAS path's and the thread count's choice. So the multi-step
comparisons (adapters, losses, eval losses, runs resumed across process counts) are made between
runs computing in float64 (distributed_runs.train_in_float64, float64_training), within their
rounding budget plus Adam's worst-case drift over the run (3.4e-6 absolute): each adapter tensor
relative to its norm (plus one fp32 eps: the file stores fp32), each loss through the reference's
gradient norm at that step and each eval loss through the reference's eval-loss gradient norm
(a loss moves by at most |grad L| |delta theta|, first order), the step-1 gradient norm within
its float64 budget. The fp32 runs keep what does not drift: every step once, the step-1 loss and
gradient norm, rank 0's checkpoints and the merged model equal to the merge of its own adapter.
A dropped or doubled micro-batch, a gradient averaged instead of summed (the grad_norm metric
halves), a rank not given rank 0's weights or a wrong resume step differ by 1e-3 and more.
Measured on a 2-core AMD EPYC, the same with OMP_NUM_THREADS=1 and 2: fp32 step 1 at most 6.7e-8
apart (budgets 5.2e-5 and 7.5e-5), float64 losses and eval losses 3e-16 (budgets 3.1e-6 and
4.3e-6), the float64 adapters' fp32 files bit-identical, resumed runs included. Mutations: rank 1
not given rank 0's FSDP shards: non-finite step-1 loss; given them times (1 + 1e-6): float64
step-1 grad_norm 9.8e-7 apart (budget 1.4e-13; fp32 does not see it); gradients averaged: step-1
grad_norm 0.5; eval losses not summed over ranks: float64 eval losses 0.077.

Launches. Spawning 2 ranks costs ~10 s per rank of imports (torch, transformers), so the fp32
two-rank runs of the module share one launch (two_rank_runs) and the float64 ones another
(two_rank_runs64): distributed_runs.train_runs_in_processes runs them one after another in the
same ranks.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dora_core.training import RunResult, run_training
from dora_core.training.checkpoints import list_checkpoints
from dora_core.training.processes import train_in_processes
from tests.support.distributed_runs import (
    EventsToFile,
    RankRun,
    StopAfterStep,
    callbacks_factory,
    descendant_pids,
    eval_gradient_norms,
    float64_training,
    train_runs_in_processes,
    wait_until_gone,
)
from tests.support.numerics import (
    adam_drift,
    adam_replay_budget,
    assert_close_to_reference,
    assert_states_close,
    budget,
    eps,
    gradient_budget,
    replay_budget,
)
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

REPO = Path(__file__).resolve().parents[2]
# 3 micro-batches per step over 2 ranks: rank 1 pads each step with a weight-0 micro-batch.
SETTINGS = {"max_steps": 8, "micro_batch_size": 2, "gradient_accumulation_steps": 3, "checkpoint_interval": 2,
            "validation_split": 0.25, "eval_interval": 4, "sample_prompts": 0}
ADAPTER = "adapter/adapter_model.safetensors"
SENT = "rank 0 loaded the base and sent 1 other rank(s) their shards"


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", dataset_rows("chat"))


def _config(model_dir: Path, data: Path, **changes):
    return run_config(model_dir, data, **{**SETTINGS, "outputs": ["adapter", "merged"], **changes})


def _spread(config, parallelism: str):
    return config.model_copy(update={"training": config.training.model_copy(update={"parallelism": parallelism})})


def _nf4_config(model_dir: Path, data: Path):
    """The NF4 test's float64 runs: 4 steps, an evaluation every 2."""
    return _config(model_dir, data, quantization="nf4", max_steps=4, eval_interval=2, outputs=["adapter"])


def _nf4_step_1(model_dir: Path, data: Path):
    """The NF4 test's fp32 runs: step 1 only (compared before any update)."""
    return _config(model_dir, data, quantization="nf4", max_steps=1, outputs=["adapter"])


@dataclass(frozen=True)
class Reference:
    """A float64 one-process run and its eval-loss gradient norms, one per evaluation."""

    out: Path
    eval_gradients: list[float]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, data_file) -> Path:
    """The fp32 single-process run the fp32 two-rank runs compare their first step with."""
    out = tmp_path_factory.mktemp("straight")
    os.environ["HF_HUB_OFFLINE"] = "1"
    assert run_training(_config(tiny_model_dir, data_file), out, device="cpu").status == "completed"
    return out


@pytest.fixture(scope="module")
def straight64(tmp_path_factory, tiny_model_dir, data_file) -> Reference:
    """The float64 single-process run every multi-step comparison is made with."""
    out = tmp_path_factory.mktemp("straight64")
    os.environ["HF_HUB_OFFLINE"] = "1"
    with float64_training(), eval_gradient_norms() as norms:
        assert run_training(_config(tiny_model_dir, data_file), out, device="cpu").status == "completed"
    return Reference(out, norms)


@pytest.fixture(scope="module")
def tiny256_dir(tmp_path_factory) -> Path:
    """Hidden size 256: every NF4 weight's packed values, block scales and scales of scales split in two."""
    from dora_core.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny256") / "tiny-llama", hidden_size=256)


def _launched(runs: dict[str, RankRun]) -> dict[str, tuple[Path, RunResult]]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    results = train_runs_in_processes(2, list(runs.values()))
    return {name: (Path(run.out_dir), result) for (name, run), result in zip(runs.items(), results, strict=True)}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, tiny_model_dir, tiny256_dir, data_file) -> dict[str, tuple[Path, RunResult]]:
    """The module's fp32 two-rank runs, in one launch: DDP and FSDP over 8 steps (each reporting
    its events to out/events.txt) and the NF4 FSDP run's first step."""
    runs = {}
    for parallelism in ("ddp", "fsdp"):
        out = tmp_path_factory.mktemp(parallelism)
        runs[parallelism] = RankRun(_spread(_config(tiny_model_dir, data_file), parallelism), str(out),
                                    callbacks=callbacks_factory(EventsToFile, path=str(out / "events.txt")))
    runs["nf4 fsdp"] = RankRun(_spread(_nf4_step_1(tiny256_dir, data_file), "fsdp"),
                               str(tmp_path_factory.mktemp("nf4-fsdp")))
    return _launched(runs)


@pytest.fixture(scope="module")
def two_rank_runs64(tmp_path_factory, tiny_model_dir, tiny256_dir, data_file) -> dict[str, tuple[Path, RunResult]]:
    """The module's float64 two-rank runs, in one launch: DDP and FSDP over 8 steps, the NF4 DDP
    and FSDP runs, and last (a rank that did not stop would block the launch) the resume across
    process counts: a one-process run stopped after step 3 goes on in 2 processes, rank 0's
    callback stopping it after step 6 (under "resumed"; the one-process run under "first")."""
    runs = {parallelism: RankRun(_spread(_config(tiny_model_dir, data_file), parallelism),
                                 str(tmp_path_factory.mktemp(f"{parallelism}64")), float64=True)
            for parallelism in ("ddp", "fsdp")}
    for parallelism in ("ddp", "fsdp"):
        runs[f"nf4 {parallelism}"] = RankRun(_spread(_nf4_config(tiny256_dir, data_file), parallelism),
                                             str(tmp_path_factory.mktemp(f"nf4-{parallelism}64")), float64=True)
    config, out = _config(tiny_model_dir, data_file), tmp_path_factory.mktemp("resumed64")
    with float64_training():
        first = run_training(config, out, device="cpu", callbacks=[StopAfterStep(step=3)])
    runs["resumed"] = RankRun(config, str(out), float64=True, callbacks=callbacks_factory(StopAfterStep, step=6))
    return {**_launched(runs), "first": (out, first)}


def _model_config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _series(out: Path, name: str) -> torch.Tensor:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor([record[name] for record in records if name in record], dtype=torch.float64)


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def _adapter_elements(out: Path) -> int:
    return sum(tensor.numel() for tensor in load_file(str(out / ADAPTER)).values())


def _assert_same_first_step(out: Path, reference: Path, model_dir: Path, *, what: str) -> None:
    """fp32: step 1's loss and gradient norm (computed before any update) within their rounding budgets."""
    model_config = _model_config(model_dir)
    gradient = gradient_budget(model_config, torch.float32, adapter_elements=_adapter_elements(reference))
    assert_close_to_reference(_series(out, "loss")[:1], _series(reference, "loss")[:1], replay_budget(model_config),
                              what=f"{what} fp32 step-1 loss")
    assert_close_to_reference(_series(out, "grad_norm")[:1], _series(reference, "grad_norm")[:1], gradient,
                              what=f"{what} fp32 step-1 grad_norm")


def _assert_same_run64(out: Path, reference: Path, model_dir: Path, *, what: str,
                       eval_gradients: list[float] | None = None) -> None:
    """Two float64 runs of one config (the module docstring's tolerance): every step once, each
    adapter tensor within its rounding budget plus Adam's worst-case drift relative to its norm
    plus one fp32 eps, the losses within theirs plus the drift times the reference's gradient
    norms, the eval losses (given the reference's eval-loss gradient norms) plus the drift times
    those, and step 1's gradient norm within its budget."""
    config = json.loads((reference / "manifest.json").read_text())["config"]["training"]
    model_config = _model_config(model_dir)
    assert _steps(out) == _steps(reference) == list(range(1, config["max_steps"] + 1)), f"{what}: each step once"
    expected = load_file(str(reference / ADAPTER))
    gradient = gradient_budget(model_config, torch.float64, adapter_elements=sum(t.numel() for t in expected.values()))
    drift = adam_drift(gradient, learning_rate=config["learning_rate"], max_grad_norm=config["max_grad_norm"],
                       steps=config["max_steps"])
    rounding = replay_budget(model_config, torch.float64)

    def through(values: torch.Tensor, gradients: torch.Tensor, name: str):
        moved = drift[0] * float(gradients.norm() / values.norm())
        return rounding.plus(moved, f"({drift[1]}) x |{name}| / |values| = {moved:.3g}")

    losses, grad_norms = _series(reference, "loss"), _series(reference, "grad_norm")
    assert_close_to_reference(_series(out, "loss"), losses, through(losses, grad_norms, "grad_norm"),
                              what=f"{what} float64 losses")
    assert_close_to_reference(_series(out, "grad_norm")[:1], grad_norms[:1], gradient,
                              what=f"{what} float64 step-1 grad_norm")
    if eval_gradients is not None:
        eval_losses = _series(reference, "eval_loss")
        assert len(eval_gradients) == len(eval_losses) > 0
        assert_close_to_reference(_series(out, "eval_loss"), eval_losses,
                                  through(eval_losses, torch.tensor(eval_gradients, dtype=torch.float64),
                                          "eval-loss gradient"), what=f"{what} float64 eval losses")
    stored = eps(torch.float32)
    actual = load_file(str(out / ADAPTER))
    assert actual.keys() == expected.keys(), f"{what}: adapter keys differ"
    for key, tensor in expected.items():
        limit = adam_replay_budget(model_config, torch.float64, scale=float(tensor.double().norm()), drift=drift)
        assert_close_to_reference(actual[key], tensor, limit.plus(stored, f"fp32 file: eps(float32) {stored:.3g}"),
                                  what=f"{what} float64 adapter {key}")


def _assert_merged_is_its_adapter(out: Path, model_dir: Path, *, what: str) -> None:
    """merged/ is the base with out's own adapter merged in (W' = m (W + sBA) / ||W + sBA||, in
    fp32: 5 rounded stages, sums over at most the MLP width), merged again here in one process."""
    from dora_core import merge_adapter
    from dora_core.model_loading import load_base_model
    from dora_core.peft_format import load_adapter

    model = merge_adapter(load_adapter(load_base_model(model_dir, dtype=torch.float32, device="cpu"), out / "adapter"))
    model_config = _model_config(model_dir)
    limit = budget(torch.float32, stages=5, terms=max(model_config.hidden_size, model_config.intermediate_size))
    expected = dict(model.state_dict())
    assert_states_close(load_file(str(out / "merged" / "model.safetensors")), expected, limit, what=f"{what} merged")


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_processes_give_the_single_process_run(tiny_model_dir, straight, straight64, two_rank_runs,
                                                    two_rank_runs64, parallelism):
    out, result = two_rank_runs[parallelism]
    assert result.status == "completed" and result.step == SETTINGS["max_steps"]
    # FSDP: rank 1 built the model on the meta device and got its shards from rank 0 (so the
    # comparisons below also check what was sent); DDP: every rank loads the whole model
    assert (SENT in (out / "events.txt").read_text()) == (parallelism == "fsdp")
    assert _steps(out) == list(range(1, SETTINGS["max_steps"] + 1)), f"{parallelism}: each step once"
    _assert_same_first_step(out, straight, tiny_model_dir, what=parallelism)
    # the merged model: from rank 0's whole model (DDP) or rebuilt on the CPU from the gathered adapter (FSDP)
    _assert_merged_is_its_adapter(out, tiny_model_dir, what=parallelism)
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [6, 8]  # rank 0 alone wrote them
    out64, result64 = two_rank_runs64[parallelism]
    assert result64.status == "completed" and result64.step == SETTINGS["max_steps"]
    _assert_same_run64(out64, straight64.out, tiny_model_dir, what=parallelism,
                       eval_gradients=straight64.eval_gradients)


def test_a_stop_on_rank_0_ends_every_rank_and_runs_resume_across_process_counts(tiny_model_dir, data_file,
                                                                                  straight64, two_rank_runs64):
    out, first = two_rank_runs64["first"]
    assert (first.status, first.step) == ("stopped", 3)
    # 1 -> 2 processes (two_rank_runs64); rank 0's callback stops after step 6: had rank 1 not
    # stopped with it, it would wait in its next collective for ever and the launch would not return
    _, second = two_rank_runs64["resumed"]
    assert (second.status, second.step, second.resumed_from_step) == ("stopped", 6, 3)
    assert list_checkpoints(out / "checkpoints")[-1][0] == 6
    # 2 -> 1 process
    with float64_training():
        third = run_training(_config(tiny_model_dir, data_file), out, device="cpu")
    assert (third.status, third.resumed_from_step) == ("completed", 6)
    _assert_same_run64(out, straight64.out, tiny_model_dir, what="1 -> 2 -> 1 processes",
                       eval_gradients=straight64.eval_gradients)


def test_a_sigkilled_two_process_run_resumes_in_one_process(tmp_path, tiny_model_dir, data_file, straight64):
    config, out = _config(tiny_model_dir, data_file), tmp_path / "out"
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(config.to_dict()))
    launcher = subprocess.Popen([sys.executable, "-m", "tests.support.distributed_runs", str(config_file), str(out),
                                 "2", "0.5", "float64"], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
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
    with float64_training():
        resumed = run_training(config, out, device="cpu")
    assert (resumed.status, resumed.resumed_from_step) == ("completed", killed_at)
    _assert_same_run64(out, straight64.out, tiny_model_dir, what=f"killed at step {killed_at}, resumed in one process",
                       eval_gradients=straight64.eval_gradients)


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


def test_an_nf4_base_sharded_by_fsdp_trains_as_the_replicated_one(tmp_path, tiny256_dir, data_file, two_rank_runs,
                                                                   two_rank_runs64):
    """QDoRA under FSDP2: torchao's NF4 weights are sharded with their blocks and all-gathered for
    each forward and backward. Hidden size 256 (tiny256_dir), so every NF4 weight's packed
    values, block scales and scales of scales split into two equal shards.

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
    * float64 (tests/support/distributed_runs.train_in_float64), FSDP vs DDP over 4 steps
      (_assert_same_run64): each adapter tensor within its rounding budget plus Adam's
      worst-case drift relative to its norm (~1e-6) plus one fp32 eps (the adapter file stores
      fp32), the losses within theirs plus the drift times the gradient norm (a loss moves by
      at most |grad L| |delta theta|), and step 1's gradient norm within its budget. Measured:
      bit-identical adapters, losses 2e-16 apart (budget 5e-6); with the halves of the
      all-gathered block scales (or of the scales of scales) swapped, the losses end 0.24
      (0.04) apart.

    The two-rank runs are in the module's shared launches: two_rank_runs (fp32, step 1) and
    two_rank_runs64 (float64)."""
    one = tmp_path / "one"
    assert run_training(_nf4_step_1(tiny256_dir, data_file), one, device="cpu").status == "completed"
    fsdp, result = two_rank_runs["nf4 fsdp"]
    assert result.status == "completed" and result.step == 1
    _assert_same_first_step(fsdp, one, tiny256_dir, what="nf4 fsdp")
    (ddp64, ddp_result), (fsdp64, fsdp_result) = two_rank_runs64["nf4 ddp"], two_rank_runs64["nf4 fsdp"]
    assert ddp_result.status == fsdp_result.status == "completed"
    _assert_same_run64(fsdp64, ddp64, tiny256_dir, what="nf4 fsdp vs ddp")


def test_nf4_weights_fsdp_cannot_split_evenly_fail_with_the_ranks_own_error(tmp_path, tiny_model_dir, data_file):
    """The tiny model's NF4 weights (64 blocks, one scale of scales) do not split in two: the
    run refuses before sharding, and that TrainingError (not the launcher's ChildFailedError)
    is what the caller gets, so the worker fails the job at once with its message."""
    from dora_core.training import TrainingError

    config = _config(tiny_model_dir, data_file, quantization="nf4", parallelism="fsdp")
    with pytest.raises(TrainingError, match="does not split into 2 equal shards.*use training.parallelism: ddp"):
        train_in_processes(2, config, tmp_path / "out", device="cpu")
