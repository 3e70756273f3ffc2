"""Callbacks and a launcher script for the multi-process training tests (tests/core/test_distributed.py).

Callbacks reach the ranks as picklable factories (functools.partial of a class), since each rank
is a fresh process. `python -m tests.support.distributed_runs CONFIG OUT NPROC DELAY` trains
CONFIG (JSON) into OUT over NPROC CPU processes with DELAY seconds after each step, so that a
test can kill it while it runs.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from dora_core.training import RunConfig, TrainingCallback, run_training
from dora_core.training.processes import train_in_processes


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
