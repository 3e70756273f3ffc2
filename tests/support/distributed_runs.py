"""Callbacks and a launcher script for the multi-process training tests (tests/core/test_distributed.py).

Callbacks reach the ranks as picklable factories (functools.partial of a class), since each rank
is a fresh process. `python -m tests.support.distributed_runs CONFIG OUT NPROC DELAY` trains
CONFIG (JSON) into OUT over NPROC CPU processes with DELAY seconds after each step, so that a
test can kill it while it runs. `train_in_float64` runs the same loop computing in float64 (what
training.precision does not offer), for comparisons that must not see fp32's rounding.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    """Inside, run_training (in this process) computes in float64: the dtype it picks for the run
    and the base it loads (numerics.float64_model, so RMSNorm too). The adapter, its gradients,
    AdamW's moments, an NF4 base's dequantized weights and the all-reduces and reduce-scatters
    are then float64, and the gradient norm is summed in float64. Adapter init draws float64
    values (other numbers than an fp32 run's, from the same seed): compare float64 runs with
    float64 runs."""
    from dora_core.training import run

    precision, load = run._precision_dtype, run.load_base_model
    run._precision_dtype = lambda setting, device: torch.float64
    run.load_base_model = lambda *args, **kwargs: float64_model(load(*args, **kwargs))
    try:
        yield
    finally:
        run._precision_dtype, run.load_base_model = precision, load


def train_in_float64(nproc: int, config: RunConfig, out_dir: str | os.PathLike):
    """train_in_processes on the CPU, every rank computing in float64 (float64_training); rank 0's RunResult."""
    return launch(nproc, _float64_rank, config, os.fspath(out_dir))[0]


def _float64_rank(config: RunConfig, out_dir: str):
    die_with_parent()
    with float64_training(), process_group(torch.device("cpu")):
        return run_training(config, out_dir, device="cpu")


def main(argv: list[str]) -> int:
    config_path, out, nproc, delay = argv
    config = RunConfig.from_file(config_path)
    if int(nproc) == 1:
        run_training(config, out, device="cpu", callbacks=[SlowSteps(delay=float(delay))])
    else:
        train_in_processes(int(nproc), config, out, device="cpu",
                           callbacks=callbacks_factory(SlowSteps, delay=float(delay)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
