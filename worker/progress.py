"""The training callback of a job: progress to SQL, checkpoints to storage, stop when asked.

dora_core calls these hooks (see dora_core/training/callbacks.py); this class turns them into
fenced writes through the `Lease`. Every optimiser step buffers its metrics and renews the
lease, which writes them (and, after a database outage, everything buffered meanwhile) and is
also when cancellation is read, so a cancelled job stops within one step.
Checkpoints are uploaded to storage before they are registered in SQL, so a registered
checkpoint is always whole and another host can resume from it. A worker shutting down
(`stop_requested`) has the run write a checkpoint at the step it reached before it stops
(`checkpoint_on_stop`), so the next attempt resumes from there; so does a job a user paused.
A registered checkpoint gets a run of each of the job's evals (worker/job_evals.py); one that
those runs still read is not pruned yet.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from dora_core.training import TrainingCallback
from store.progress import stored_samples, stored_steps
from store.storage import Storage, job_key
from store.transfer import upload_folder
from worker.job_evals import JobEvals
from worker.lease import Lease, LeaseGone
from worker.tracking import JobTracking

log = logging.getLogger(__name__)

# metric names in OpenAI's checkpoint shape (train_loss, ...) from dora_core's per-step names. valid_*
# come from an evaluation at the checkpoint's step (eval_interval); full_valid_* from the whole
# validation set measured at every checkpoint step (dora_core/training/run.py validate_for_checkpoint).
# dora's evaluations are of the whole set too, so where both are present they are the same numbers.
CHECKPOINT_METRICS = {"loss": "train_loss", "token_accuracy": "train_mean_token_accuracy",
                      "eval_loss": "valid_loss", "eval_token_accuracy": "valid_mean_token_accuracy",
                      "full_eval_loss": "full_valid_loss", "full_eval_token_accuracy": "full_valid_mean_token_accuracy"}


class JobProgress(TrainingCallback):
    def __init__(self, *, lease: Lease, storage: Storage, tenant_id: str, heartbeat_seconds: float,
                 keep_checkpoints: int, stop_requested=lambda: False, metrics_file: Path | None = None,
                 evals: JobEvals | None = None, tracking: JobTracking | None = None) -> None:
        self.lease, self.storage, self.tenant_id = lease, storage, tenant_id
        self.tracking = tracking  # the job's W&B / MLflow runs (worker/tracking.py): buffered, never blocking
        self.evals = evals  # the job's evals, run on each registered checkpoint
        self.metrics_file = metrics_file  # the run's metrics.jsonl on this host
        self.heartbeat_seconds, self.keep_checkpoints = heartbeat_seconds, keep_checkpoints
        self.stop_requested = stop_requested  # the worker is shutting down
        self.total_steps: int | None = None
        self.step_values: dict[int, dict] = {}  # the latest step's values (an evaluation adds to them)
        self.step_epoch: float | None = None
        self.first_step_at: float | None = None
        self._last_beat = 0.0

    # -- dora_core hooks -------------------------------------------------------------------
    def on_resume(self, *, step: int) -> None:
        self.lease.mark_resumed(step)  # event: "Attempt n resumed from the checkpoint at step k"
        self._backfill(step)

    def on_start(self, *, total_steps: int, start_step: int, report: dict) -> None:
        self.total_steps = total_steps
        self.lease.renew(step=start_step, total_steps=total_steps)  # with what on_resume buffered
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
        if self.tracking is not None:
            self.tracking.metrics(step, values | ({"epoch": self.step_epoch} if self.step_epoch is not None else {}))
        self._beat(step=step, epoch=self.step_epoch)

    def on_evaluate(self, metrics: dict) -> None:
        step = metrics["step"]
        values = self.step_values.get(step, {}) | {k: v for k, v in metrics.items() if k != "step"}
        self.step_values = {step: values}
        self.lease.record_metrics(step=step, values=values, epoch=self.step_epoch)
        if self.tracking is not None:
            self.tracking.metrics(step, {k: v for k, v in metrics.items() if k != "step"})

    def on_samples(self, *, step: int, samples: list[dict]) -> None:
        """Written with the next heartbeat, like metrics (listed at GET .../samples)."""
        self.lease.record_samples(step=step, samples=samples)
        if self.tracking is not None:
            self.tracking.samples(step, samples)

    def on_checkpoint(self, *, step: int, path: str) -> None:
        prefix = job_key(self.tenant_id, self.lease.job_id, "checkpoints", f"attempt-{self.lease.attempt}",
                         Path(path).name)
        if not self.lease.held:
            return
        values = self.step_values.get(step, {})
        metrics = {name: values[key] for key, name in CHECKPOINT_METRICS.items() if key in values}
        try:
            upload_folder(self.storage, Path(path), prefix)
        except Exception as error:  # noqa: BLE001 - the run goes on; this host still has it locally
            log.warning("job %s: could not store checkpoint %s: %s", self.lease.job_id, prefix, error)
            self._quietly(self.storage.delete_prefix, prefix)
            return
        # "pending": the database is away; the row is written when it is back, so the files stay
        outcome = self.lease.add_checkpoint(step=step, storage_key=prefix, metrics=metrics)
        if outcome == "registered":
            if self.evals is not None:
                self.evals.for_checkpoint(step=step, storage_key=prefix, event=self.on_event)
            self._prune_checkpoints()
        elif outcome == "pending" and self.evals is not None:
            self.on_event(f"No eval runs of the checkpoint at step {step}: the database is unreachable",
                          level="warning", data={"step": step})
        elif outcome == "lost":
            self._quietly(self.storage.delete_prefix, prefix)

    def on_event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        self.lease.event(message[:1000], level=level, data=data)

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_beat >= self.heartbeat_seconds:
            self._beat()

    def should_stop(self) -> bool:
        return (not self.lease.held or self.lease.cancel_requested or self.lease.pause_requested
                or self.stop_requested())

    def checkpoint_on_stop(self) -> bool:
        """Only a shutdown or a pause is worth a checkpoint: a cancelled job never runs again, and an
        attempt that lost its lease must not write (another attempt may be using the same work folder)."""
        return (self.lease.held and not self.lease.cancel_requested
                and (self.lease.pause_requested or self.stop_requested()))

    # -- helpers ---------------------------------------------------------------------------
    def _backfill(self, up_to: int) -> None:
        """Metrics of steps up to the checkpoint this attempt resumes from that SQL lacks (an earlier
        attempt on this host buffered them through a database outage, then lost its lease) are
        taken from the run's metrics.jsonl here, so the job still has every step once."""
        if self.metrics_file is None or not self.metrics_file.is_file():
            return
        try:
            stored = set(self.lease.read(stored_steps, up_to=up_to))
        except LeaseGone:
            return
        missing: dict[int, dict] = {}
        epochs: dict[int, float | None] = {}
        for line in self.metrics_file.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            step = record.get("step")
            if step is None or step > up_to or step in stored:
                continue
            missing.setdefault(step, {}).update({k: v for k, v in record.items() if k not in ("step", "epoch")})
            epochs[step] = record.get("epoch", epochs.get(step))
        for step in sorted(missing):
            self.lease.record_metrics(step=step, values=missing[step], epoch=epochs[step])
        if missing:
            log.info("job %s: %d steps' metrics missing in the database were restored from this host's run",
                     self.lease.job_id, len(missing))
        self._backfill_samples(up_to)

    def _backfill_samples(self, up_to: int) -> None:
        """The same for samples: those of evaluations up to the checkpoint that SQL lacks, from the
        run's samples.jsonl beside metrics.jsonl (a resumed run does not evaluate those steps again)."""
        path = self.metrics_file.with_name("samples.jsonl")
        if not path.is_file():
            return
        try:
            stored = set(self.lease.read(stored_samples, up_to=up_to))
        except LeaseGone:
            return
        missing: dict[int, list[dict]] = {}
        for line in path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            key = (record.get("step"), record.get("index"))
            if key[0] is not None and key[0] <= up_to and key not in stored:
                missing.setdefault(key[0], []).append(record)
        for step in sorted(missing):
            self.lease.record_samples(step=step, samples=missing[step])

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
        from store.job_evals import busy_storage_keys

        try:
            with session_scope(self.lease.settings) as session:
                keys = job_store.checkpoint_keys(session, job_id=self.lease.job_id)
                busy = (busy_storage_keys(session, tenant_id=self.tenant_id, job_id=self.lease.job_id)
                        if self.evals is not None else set())
            for _, key in keys[self.keep_checkpoints:]:
                if key not in busy:
                    self.storage.delete_prefix(key)
        except Exception as error:  # noqa: BLE001 - pruning is housekeeping
            log.warning("job %s: could not prune old checkpoints: %s", self.lease.job_id, error)
