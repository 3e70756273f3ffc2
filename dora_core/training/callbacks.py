"""The hooks a run calls, so the worker (or the CLI) can watch, steer and keep it alive.

The run never imports the worker: it calls these methods and the worker's subclass writes
metrics and events to SQL, renews its lease and reads cancellation.
"""

from __future__ import annotations

from collections.abc import Sequence


class TrainingCallback:
    """Override what you need; every method has a do-nothing default."""

    def on_start(self, *, total_steps: int, start_step: int, report: dict) -> None:
        """Data is ready; `start_step` > 0 when resuming from a checkpoint."""

    def on_step(self, metrics: dict) -> None:
        """After each optimiser step: step, epoch, loss, lr, grad_norm, tokens_per_second, ..."""

    def on_evaluate(self, metrics: dict) -> None:
        """After an evaluation: step, eval_loss, eval_token_accuracy."""

    def on_samples(self, *, step: int, samples: list[dict]) -> None:
        """After an evaluation that produced samples (dora_core/training/samples.py): the model's
        greedy answers to the first validation prompts, each {step, index, line, prompt, expected, answer}."""

    def on_checkpoint(self, *, step: int, path: str) -> None:
        """A checkpoint for `step` is complete on disk (atomically renamed into place)."""

    def on_resume(self, *, step: int) -> None:
        """The run continues from its newest checkpoint, at `step`; called before on_start. A hook
        of its own (not an event's text) so a callback can act on it: the worker records which
        attempt resumed and restores what SQL lacks up to `step`."""

    def on_event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        """Something a user should read in the job's events (OOM retry, early stop, warnings)."""

    def on_micro_batch(self, *, step: int, micro_batch_size: int) -> None:
        """Before each micro-batch's forward; the cheapest place to be interrupted."""

    def heartbeat(self) -> None:
        """Called often, including during slow phases (loading, merging): renew a lease here."""

    def should_stop(self) -> bool:
        """Return True to end the run cleanly (cancellation); checked every micro-batch."""
        return False

    def checkpoint_on_stop(self) -> bool:
        """Asked once should_stop ended the run: True to write a checkpoint at the step reached
        first (a worker shutting down, so the next attempt resumes there); False (the default)
        for a stop after which nothing will resume, such as a cancel."""
        return False


class CallbackList(TrainingCallback):
    """Fans every call out to several callbacks; stops when any one asks to."""

    def __init__(self, callbacks: Sequence[TrainingCallback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_start(self, **kwargs) -> None:
        for callback in self.callbacks:
            callback.on_start(**kwargs)

    def on_step(self, metrics: dict) -> None:
        for callback in self.callbacks:
            callback.on_step(metrics)

    def on_evaluate(self, metrics: dict) -> None:
        for callback in self.callbacks:
            callback.on_evaluate(metrics)

    def on_samples(self, **kwargs) -> None:
        for callback in self.callbacks:
            callback.on_samples(**kwargs)

    def on_checkpoint(self, **kwargs) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(**kwargs)

    def on_resume(self, **kwargs) -> None:
        for callback in self.callbacks:
            callback.on_resume(**kwargs)

    def on_event(self, message: str, **kwargs) -> None:
        for callback in self.callbacks:
            callback.on_event(message, **kwargs)

    def on_micro_batch(self, **kwargs) -> None:
        for callback in self.callbacks:
            callback.on_micro_batch(**kwargs)

    def heartbeat(self) -> None:
        for callback in self.callbacks:
            callback.heartbeat()

    def should_stop(self) -> bool:
        return any(callback.should_stop() for callback in self.callbacks)

    def checkpoint_on_stop(self) -> bool:
        return any(callback.checkpoint_on_stop() for callback in self.callbacks)
