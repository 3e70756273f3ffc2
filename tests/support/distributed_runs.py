"""Callbacks and a launcher script for the multi-process training tests (tests/core/test_distributed.py).

Callbacks reach the ranks as picklable factories (functools.partial of a class), since each rank
is a fresh process. `python -m tests.support.distributed_runs CONFIG OUT NPROC DELAY` trains
CONFIG (JSON) into OUT over NPROC CPU processes with DELAY seconds after each step, so that a
test can kill it while it runs (a fifth argument `float64`: computing in float64).
`train_in_float64` runs the same loop computing in float64 (what training.precision does not
offer), for comparisons that must not see fp32's rounding. `train_runs_in_processes` runs
several 2-rank runs one after another in the same ranks: one launch instead of one per run
(each launch spends ~10 s per rank importing torch and transformers).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from dora_core.training import RunConfig, TrainingCallback, run_training
from dora_core.training.distributed import die_with_parent, launch, process_group
from dora_core.training.processes import train_in_processes
from tests.support.numerics import float64_model


class StopAfterStep(TrainingCallback):
    """Asks to stop once step `step` is done, with a checkpoint there (as a worker shutting down does)."""

    def __init__(self, *, step: int) -> None:
        self.step, self.done = step, 0

    def on_step(self, metrics: dict) -> None:
        self.done = metrics["step"]

    def should_stop(self) -> bool:
        return self.done >= self.step

    def checkpoint_on_stop(self) -> bool:
        return True


class SlowSteps(TrainingCallback):
    """Sleeps after each step, so the run is still going when the test kills it."""

    def __init__(self, *, delay: float) -> None:
        self.delay = delay

    def on_step(self, metrics: dict) -> None:
        time.sleep(self.delay)


class EventsToFile(TrainingCallback):
    """Appends each event message the rank reports to `path` (only rank 0 reports)."""

    def __init__(self, *, path: str) -> None:
        self.path = Path(path)

    def on_event(self, message: str, **kwargs) -> None:
        with self.path.open("a") as log:
            log.write(message + "\n")


def callbacks_factory(callback_class, **kwargs):
    """A picklable zero-argument factory of [callback_class(**kwargs)], for train_in_processes."""
    return functools.partial(_one, callback_class, kwargs)


def _one(callback_class, kwargs):
    return [callback_class(**kwargs)]


def descendant_pids(pid: int) -> set[int]:
    """Every living process below `pid` (Linux /proc: the parent id is field 4 of /proc/PID/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pids: set[int], *, timeout: float) -> set[int]:
    """The pids still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if running(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@contextmanager
def float64_training() -> Iterator[None]:
    """Inside, run_training (in this process) computes in float64: the dtype it picks for the run,
    the base it loads and the meta-device skeleton an FSDP rank other than 0 builds before rank 0
    sends it its shards (numerics.float64_model, so RMSNorm too). The adapter, its gradients,
    AdamW's moments, an NF4 base's dequantized weights and the all-reduces and reduce-scatters
    are then float64, and the gradient norm is summed in float64. Checkpoints keep the float64
    adapter (the format stores fp32, exact for a run in fp32 or bf16 but a rounding of a float64
    adapter, which a resumed run would carry on from), so a resume restores the run exactly as
    it does in fp32; the adapter output stays fp32. Adapter init draws float64 values (other
    numbers than an fp32 run's, from the same seed): compare float64 runs with float64 runs."""
    from dora_core.training import checkpoints, run

    precision, load, skeleton = run._precision_dtype, run.load_base_model, run.base_model_skeleton
    save_adapter = checkpoints.save_adapter
    run._precision_dtype = lambda setting, device: torch.float64
    run.load_base_model = lambda *args, **kwargs: float64_model(load(*args, **kwargs))
    run.base_model_skeleton = lambda *args, **kwargs: float64_model(skeleton(*args, **kwargs))
    checkpoints.save_adapter = functools.partial(_save_adapter_in_its_dtype, save_adapter)
    try:
        yield
    finally:
        run._precision_dtype, run.load_base_model, run.base_model_skeleton = precision, load, skeleton
        checkpoints.save_adapter = save_adapter


def _save_adapter_in_its_dtype(save_adapter, model, directory, **kwargs):
    """peft_format.save_adapter, then its weights file written again with the parameters' own dtype."""
    from safetensors.torch import load_file, save_file

    from dora_core.inject import adapted_module_names
    from dora_core.peft_format import KEY_PREFIX, WEIGHTS_NAME

    path = save_adapter(model, directory, **kwargs)
    parameters = {f"{KEY_PREFIX}{name}.{key}": getattr(model.get_submodule(name), key.removesuffix(".weight"))
                  for name in adapted_module_names(model)
                  for key in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")}
    saved = load_file(str(path / WEIGHTS_NAME))
    save_file({key: parameters[key].detach().cpu().contiguous() for key in saved}, str(path / WEIGHTS_NAME),
              metadata={"format": "pt"})
    return path


@contextmanager
def eval_gradient_norms() -> Iterator[list[float]]:
    """Inside, each evaluation of run_training (in this process, one process) first appends to the
    yielded list the l2 norm of the eval loss's gradient over the trainable adapter parameters, at
    the parameters it evaluates: how fast the eval loss can move when they move (|delta eval_loss|
    <= that norm * |delta theta|, first order), which a comparison of eval losses between runs
    whose adapters may drift apart needs. Computed on the same batches and the same token mean as
    TrainingRun.evaluate, then evaluate runs as usual (nothing it reads is changed)."""
    from dora_core.training import run
    from dora_core.training.loss import summed_loss

    norms: list[float] = []
    evaluate = run.TrainingRun.evaluate

    def measured(self):
        assert self.parallel.world_size == 1, "eval_gradient_norms measures one-process runs"
        items, size = self.data.validation, self.state.micro_batch_size
        self.model.eval()
        with torch.enable_grad():
            sums = []
            for start in range(0, len(items), size):
                batch = self.data.collator([items[i] for i in range(start, min(start + size, len(items)))])
                sums.append(summed_loss(self.model, {k: v.to(self.device) for k, v in batch.items()}))
            loss = sum(s.loss_sum for s in sums) / max(sum(s.tokens for s in sums), 1)
            gradients = torch.autograd.grad(loss, self.trainable, allow_unused=True)
        self.model.train()
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g.double()) for g in gradients if g is not None]))))
        return evaluate(self)

    run.TrainingRun.evaluate = measured
    try:
        yield norms
    finally:
        run.TrainingRun.evaluate = evaluate


def train_in_float64(nproc: int, config: RunConfig, out_dir: str | os.PathLike, *,
                     callbacks: Callable[[], list] | None = None):
    """train_in_processes on the CPU, every rank computing in float64 (float64_training); rank 0's RunResult."""
    return train_runs_in_processes(nproc, [RankRun(config, os.fspath(out_dir), float64=True,
                                                   callbacks=callbacks)])[0]


@dataclass(frozen=True)
class RankRun:
    """One run_training call in every rank of train_runs_in_processes: into `out_dir` on the CPU,
    in float64 if asked (float64_training), with the callbacks `callbacks()` makes in each rank."""

    config: RunConfig
    out_dir: str
    float64: bool = False
    callbacks: Callable[[], list] | None = None


def train_runs_in_processes(nproc: int, runs: list[RankRun]) -> list:
    """Each run over `nproc` CPU processes, one after another in the same ranks and process group
    (one launch); rank 0's RunResults, in order. Each run is the one train_in_processes or
    train_in_float64 would make: run_training seeds the generators as it starts and builds its
    model, wrapper (DDP, FSDP2 and its device mesh) and optimizer anew, so nothing but the
    processes and the gloo group carries over. A run that raises ends the launch (the launcher's
    ChildFailedError; the rank's traceback is in the captured stderr). A run that leaves one rank
    behind (a stop it did not follow) blocks the next collective, as it would block its launch."""
    return launch(nproc, _runs_rank, list(runs))[0]


def _runs_rank(runs: list[RankRun]) -> list:
    die_with_parent()
    results = []
    with process_group(torch.device("cpu")):
        for run in runs:
            with float64_training() if run.float64 else nullcontext():
                callbacks = run.callbacks() if run.callbacks else []
                results.append(run_training(run.config, run.out_dir, callbacks=callbacks, device="cpu"))
    return results


def main(argv: list[str]) -> int:
    config_path, out, nproc, delay, *dtype = argv
    config = RunConfig.from_file(config_path)
    slow = callbacks_factory(SlowSteps, delay=float(delay))
    if dtype == ["float64"]:
        if int(nproc) == 1:
            with float64_training():
                run_training(config, out, device="cpu", callbacks=slow())
        else:
            train_in_float64(int(nproc), config, out, callbacks=slow)
    elif int(nproc) == 1:
        run_training(config, out, device="cpu", callbacks=slow())
    else:
        train_in_processes(int(nproc), config, out, device="cpu", callbacks=slow)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
