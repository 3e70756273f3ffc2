"""A job's evals (issue #24): one eval run of each at every checkpoint and of the fine-tuned model.

Called by the job's progress callback when a checkpoint is registered (worker/progress.py) and by
the attempt once the job has succeeded (worker/job.py). SQL first (store/job_evals.py), then the
message to `dora evals`; a run that cannot be made (the eval was deleted, the tenant is at its
cap on active runs, the database or broker is away) never fails the training: an event says so.
A message that is lost leaves the run queued, and `dora evals`' sweeper publishes it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from dora_contract.job_spec import JobEval
from dora_contract.serving import AdapterRef
from store.db import session_scope
from store.job_evals import CHECKPOINT, FINE_TUNED_MODEL, RunRefused, create_job_run
from store.jobs import fine_tuned_model_name
from store.models import Tenant
from store.queue import publish_eval_run
from worker.database import first_line
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
Event = Callable[..., None]  # event(message, level=..., data=...): the job's event log


@dataclass(frozen=True)
class JobEvals:
    """What making the runs needs, as plain values (it crosses into a rank process pickled)."""

    settings: WorkerSettings
    job_id: str
    tenant_id: str
    model: str  # the job's base model
    suffix: str | None
    evals: tuple[JobEval, ...]

    def for_checkpoint(self, *, step: int, storage_key: str, event: Event) -> None:
        self._make(step=step, checkpoint=True, storage_key=storage_key, event=event)

    def for_fine_tuned_model(self, *, step: int, adapter_prefix: str | None, event: Event) -> None:
        """The succeeded job's fine-tuned model, served from its `adapter` output (none: said, not run)."""
        if adapter_prefix is None:
            event("No eval runs of the fine-tuned model: the job kept no 'adapter' output, which is what serves "
                  "it; its checkpoints' runs are its scores", level="warning")
            return
        self._make(step=step, checkpoint=False, storage_key=adapter_prefix, event=event)

    def _make(self, *, step: int, checkpoint: bool, storage_key: str, event: Event) -> None:
        what = f"the checkpoint at step {step}" if checkpoint else "the fine-tuned model"
        try:
            with session_scope(self.settings) as session:
                tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == self.tenant_id))
        except Exception as error:  # noqa: BLE001 - evals never fail the training
            event(f"No eval runs of {what}: {first_line(error)}", level="warning")
            return
        model = fine_tuned_model_name(model=self.model, tenant_name=tenant_name, suffix=self.suffix,
                                      job_id=self.job_id, step=step if checkpoint else None)
        adapter = AdapterRef(key=model, storage_prefix=storage_key).model_dump(mode="json")
        for job_eval in self.evals:
            try:
                with session_scope(self.settings) as session:
                    run = create_job_run(session, tenant_id=self.tenant_id, job_id=self.job_id, job_eval=job_eval,
                                         model=model, base_model=self.model, adapter=adapter, step=step,
                                         kind=CHECKPOINT if checkpoint else FINE_TUNED_MODEL,
                                         cap=self.settings.max_active_eval_runs_per_tenant)
                    run_id = run.id if run is not None else None
            except RunRefused as refused:
                event(f"No run of eval {job_eval.eval_id} on {what}: {refused}", level="warning",
                      data={"eval_id": job_eval.eval_id, "step": step})
                continue
            except Exception as error:  # logged with its traceback: evals never fail the training
                log.warning("job %s: eval run of %s on %s not created", self.job_id, job_eval.eval_id, what,
                            exc_info=error)
                event(f"No run of eval {job_eval.eval_id} on {what}: {first_line(error)}", level="warning",
                      data={"eval_id": job_eval.eval_id, "step": step})
                continue
            if run_id is None:
                continue  # made by an earlier attempt
            publish_eval_run(run_id, broker_url=self.settings.broker_url)  # False: the sweeper publishes it
            event(f"Eval run {run_id} of eval {job_eval.eval_id} queued for {what}",
                  data={"eval_id": job_eval.eval_id, "run_id": run_id, "step": step, "model": model})


def job_evals(settings: WorkerSettings, job, evals: tuple[JobEval, ...]) -> JobEvals | None:
    """The job's JobEvals, or None when it names no evals."""
    if not evals:
        return None
    return JobEvals(settings=settings, job_id=job.id, tenant_id=job.tenant_id, model=job.model, suffix=job.suffix,
                    evals=evals)
