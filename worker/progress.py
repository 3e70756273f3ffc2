"""The training callback of a job: progress to SQL, checkpoints to storage, stop when asked.

dora_core calls these hooks (see dora_core/training/callbacks.py); this class turns them into
fenced writes through the `Lease`. Every optimiser step stores its metrics and renews the lease,
which is also when cancellation is read, so a cancelled job stops within one step.
Checkpoints are uploaded to storage before they are registered in SQL, so a registered
checkpoint is always whole and another host can resume from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dora_core.training import TrainingCallback
from store.storage import Storage, job_key
from worker.lease import Lease
from worker.transfer import upload_folder

log = logging.getLogger(__name__)

# metric names in OpenAI's checkpoint shape (train_loss, ...) from dora_core's per-step names
CHECKPOINT_METRICS = {"loss": "train_loss", "token_accuracy": "train_mean_token_accuracy",
                      "eval_loss": "valid_loss", "eval_token_accuracy": "valid_mean_token_accuracy"}


class JobProgress(TrainingCallback):
    def __init__(self, *, lease: Lease, storage: Storage, tenant_id: str, heartbeat_seconds: float,
                 keep_checkpoints: int, stop_requested=lambda: False) -> None:
        self.lease, self.storage, self.tenant_id = lease, storage, tenant_id
        self.heartbeat_seconds, self.keep_checkpoints = heartbeat_seconds, keep_checkpoints
        self.stop_requested = stop_requested  # the worker is shutting down
        self.total_steps: int | None = None
        self.step_values: dict[int, dict] = {}  # the latest step's values (an evaluation adds to them)
        self.step_epoch: float | None = None
        self.first_step_at: float | None = None
        self._last_beat = 0.0

    # -- dora_core hooks -------------------------------------------------------------------
    def on_start(self, *, total_steps: int, start_step: int, report: dict) -> None:
        self.total_steps = total_steps
        if start_step > 0:
            self.lease.mark_resumed(start_step)  # event: "Attempt n resumed from the checkpoint at step k"
        self.lease.renew(step=start_step, total_steps=total_steps)
        rows = (report.get("train") or {}).get("rows")
        self.lease.event(f"Training on {rows} examples for {total_steps} steps" if rows else
                         f"Training for {total_steps} steps",
                         data={"total_steps": total_steps, "start_step": start_step})

    def on_step(self, metrics: dict) -> None:
        step = metrics["step"]
        if self.first_step_at is None:
            self.first_step_at = time.time()
        values = {k: v for k, v in metrics.items() if k not in ("step", "epoch")}
        self.step_values, self.step_epoch = {step: values}, metrics.get("epoch")
        self.lease.record_metrics(step=step, values=values, epoch=self.step_epoch)
        self._beat(step=step, epoch=self.step_epoch)

    def on_evaluate(self, metrics: dict) -> None:
        step = metrics["step"]
        values = self.step_values.get(step, {}) | {k: v for k, v in metrics.items() if k != "step"}
        self.step_values = {step: values}
        self.lease.record_metrics(step=step, values=values, epoch=self.step_epoch)

    def on_checkpoint(self, *, step: int, path: str) -> None:
        prefix = job_key(self.tenant_id, self.lease.job_id, "checkpoints", f"attempt-{self.lease.attempt}",
                         Path(path).name)
        if not self.lease.held:
            return
        values = self.step_values.get(step, {})
        metrics = {name: values[key] for key, name in CHECKPOINT_METRICS.items() if key in values}
        try:
            upload_folder(self.storage, Path(path), prefix)
            registered = self.lease.add_checkpoint(step=step, storage_key=prefix, metrics=metrics)
        except Exception as error:  # noqa: BLE001 - the run goes on; this host still has it locally
            log.warning("job %s: could not store checkpoint %s: %s", self.lease.job_id, prefix, error)
            registered = False
        if registered:
            self._prune_checkpoints()
        else:
            self._quietly(self.storage.delete_prefix, prefix)

    def on_event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        if message.startswith("resumed from checkpoint"):
            return  # on_start's mark_resumed records it, with the attempt number
        self.lease.event(message[:1000], level=level, data=data)

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_beat >= self.heartbeat_seconds:
            self._beat()

    def should_stop(self) -> bool:
        return not self.lease.held or self.lease.cancel_requested or self.stop_requested()

    # -- helpers ---------------------------------------------------------------------------
    def _beat(self, **progress) -> None:
        self._last_beat = time.monotonic()
        self.lease.renew(total_steps=self.total_steps, **progress)

    def _quietly(self, function, *args) -> None:
        try:
            function(*args)
        except Exception as error:  # noqa: BLE001 - housekeeping
            log.warning("job %s: %s failed: %s", self.lease.job_id, function.__name__, error)

    def _prune_checkpoints(self) -> None:
        """Keep the newest `keep_checkpoints` in storage (their rows stay, as the job's history)."""
        from store import jobs as job_store
        from store.db import session_scope

        try:
            with session_scope(self.lease.settings) as session:
                keys = job_store.checkpoint_keys(session, job_id=self.lease.job_id)
            for _, key in keys[self.keep_checkpoints:]:
                self.storage.delete_prefix(key)
        except Exception as error:  # noqa: BLE001 - pruning is housekeeping
            log.warning("job %s: could not prune old checkpoints: %s", self.lease.job_id, error)
