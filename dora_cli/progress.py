"""How `dora train` shows a run: a rich progress bar on a terminal, one short line per N steps in logs.

Both are `TrainingCallback`s; events (resume, OOM retry, early stopping, dataset warnings),
evaluations, their samples (the model's greedy answers to validation prompts) and checkpoints
are printed as lines in both modes (above the bar on a terminal).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from dora_core.training import TrainingCallback

SAMPLE_TEXT_WIDTH = 100  # characters of a sample's prompt (its end), expected and answer (their start) printed


def make_progress(stream: TextIO | None = None, *, log_every: int = 10) -> RunProgress:
    """A progress bar when `stream` (default stdout) is a terminal, else plain lines."""
    stream = sys.stdout if stream is None else stream
    is_tty = getattr(stream, "isatty", lambda: False)()
    return BarProgress(stream) if is_tty else LineProgress(stream, log_every=log_every)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_step(metrics: dict, total_steps: int, eta_seconds: float | None) -> str:
    """`step 3/6  loss 6.2738  lr 1.00e-04  grad_norm 1.36  812 tok/s  eta 0:00:02`"""
    parts = [f"step {metrics['step']}/{total_steps}", f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.2e}"]
    if metrics.get("grad_norm") is not None:
        parts.append(f"grad_norm {metrics['grad_norm']:.3g}")
    if metrics.get("tokens_per_second") is not None:
        parts.append(f"{metrics['tokens_per_second']:.0f} tok/s")
    if metrics.get("gpu_memory_peak_bytes") is not None:
        parts.append(f"peak mem {metrics['gpu_memory_peak_bytes'] / 2**30:.1f} GiB")
    if eta_seconds is not None:
        parts.append(f"eta {format_duration(eta_seconds)}")
    return "  ".join(parts)


def format_evaluation(metrics: dict) -> str:
    """`eval step N` and every number the evaluation measured, in its order: an SFT run's eval_loss and
    eval_token_accuracy, a DPO run's eval_rewards/*, or, at a checkpoint step where no evaluation ran,
    the whole validation set's full_eval_* (dora_core/training/run.py validate_for_checkpoint)."""
    kind = "full eval" if any(name.startswith("full_") for name in metrics) else "eval"
    values = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items()
                       if name != "step" and isinstance(value, int | float))
    return f"{kind} step {metrics['step']}  {values}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_samples(step: int, samples: Sequence[dict], width: int = SAMPLE_TEXT_WIDTH) -> list[str]:
    """`samples at step 10:` then, per sample, its prompt's end, the expected answer and the model's,
    each on one line (whitespace collapsed) and cut at `width` characters."""
    def head(text: str) -> str:
        text = _one_line(text)
        return text if len(text) <= width else text[: width - 1] + "\u2026"

    def tail(text: str) -> str:
        text = _one_line(text)
        return text if len(text) <= width else "\u2026" + text[-(width - 1):]

    lines = [f"samples at step {step}:"]
    for sample in samples:
        lines += [f"  #{sample['index']} prompt   {tail(sample['prompt'])}",
                  f"     expected {head(sample['expected'])}",
                  f"     answer   {head(sample['answer'])}"]
    return lines


class RunProgress(TrainingCallback):
    """What both displays share: the step clock for the ETA and the event lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.total_steps = 0
        self.start_step = 0
        self.started = time.perf_counter()

    def on_start(self, *, total_steps: int, start_step: int, report: dict) -> None:
        self.total_steps, self.start_step, self.started = total_steps, start_step, time.perf_counter()
        rows = (report.get("train") or {}).get("rows")
        where = f"resuming at step {start_step + 1}" if start_step else "starting"
        self.message(f"training: {total_steps} steps" + (f" over {rows} rows" if rows is not None else "")
                     + f", {where}")

    def eta_seconds(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * max(0, self.total_steps - step)

    def on_evaluate(self, metrics: dict) -> None:
        self.message(format_evaluation(metrics))

    def on_samples(self, *, step: int, samples: list[dict]) -> None:
        for line in format_samples(step, samples):
            self.message(line)

    def on_checkpoint(self, *, step: int, path: str) -> None:
        self.message(f"checkpoint saved at step {step}: {path}")

    def on_resume(self, *, step: int) -> None:
        self.message(f"resumed from checkpoint at step {step}")

    def on_event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        self.message(f"warning: {message}" if level == "warning" else message)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop any live display; safe to call more than once."""


class LineProgress(RunProgress):
    """Off a terminal: the first step, every `log_every`-th step and the last, one line each."""

    def __init__(self, stream: TextIO, *, log_every: int = 10) -> None:
        super().__init__(stream)
        self.log_every = max(1, log_every)

    def on_step(self, metrics: dict) -> None:
        step = metrics["step"]
        if step == self.start_step + 1 or step % self.log_every == 0 or step == self.total_steps:
            self.message(format_step(metrics, self.total_steps, self.eta_seconds(step)))


class BarProgress(RunProgress):
    """On a terminal: a rich bar with step/total, loss, lr, elapsed and ETA; messages print above it."""

    def __init__(self, stream: TextIO, console=None) -> None:
        from rich.console import Console

        super().__init__(stream)
        self.console = console if console is not None else Console(file=stream)
        self.progress = None
        self.task = None

    def on_start(self, *, total_steps: int, start_step: int, report: dict) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().on_start(total_steps=total_steps, start_step=start_step, report=report)
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, loss="-", lr="-")

    def on_step(self, metrics: dict) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=metrics["step"], loss=f"{metrics['loss']:.4f}",
                                 lr=f"{metrics['lr']:.2e}")

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
