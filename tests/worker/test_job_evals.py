"""worker/job_evals.py (issue #24) in process on SQLite: a checkpoint's eval run is made once (a replay
makes none), carries the checkpoint as its model, and keeps the checkpoint from pruning while queued;
every refusal (the tenant's cap, a deleted eval, no adapter output, the database away) is a warning
event and never an exception into the training."""

from __future__ import annotations

from sqlalchemy import select, update

from dora_contract import JobSpec
from store.db import session_scope
from store.eval_execution import RESOLVED_KEY
from store.job_evals import busy_storage_keys
from store.models import EvalRun
from worker.job_evals import job_evals

CRITERION = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"}


def _post(service, path: str, body: dict) -> dict:
    response = service.client.post(path, headers=service.headers, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _job_with_an_eval(service):
    eval_id = _post(service, "/v1/evals", {"testing_criteria": [CRITERION], "data_source_config": {
        "type": "custom", "item_schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}})["id"]
    _post(service, f"/v1/evals/{eval_id}/runs", {"data_source": {
        "type": "completions", "model": "tiny-llama", "source": {"type": "file_content", "content": [
            {"item": {"answer": "a"}}]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "say a"}]}}})
    job_id = service.create(evals=[eval_id], suffix="ev")
    return eval_id, service.row(job_id)


def _runs(service, job_id: str) -> list[EvalRun]:
    with session_scope(service.settings) as session:
        return list(session.scalars(select(EvalRun).where(EvalRun.meta["fine_tuning_job_id"].as_string() == job_id)))


def test_a_checkpoints_run_is_made_once_and_holds_its_checkpoint_until_it_ends(service, settings):
    eval_id, job = _job_with_an_eval(service)
    memory = settings.model_copy(update={"broker_url": "memory://"})
    evals = job_evals(memory, job, JobSpec.from_data(job.settings).evals)
    events = []

    def record(message, level="info", data=None):
        events.append((level, message, data))

    evals.for_checkpoint(step=3, storage_key="tenants/x/ckpt-3", event=record)
    evals.for_checkpoint(step=3, storage_key="tenants/x/ckpt-3", event=record)  # a replay: no second run
    [run] = _runs(service, job.id)
    assert run.status == "queued" and run.eval_id == eval_id and run.model.endswith(":ckpt-step-3")
    assert run.model.startswith("ft:tiny-llama:") and ":ev:" in run.model
    assert run.data_source[RESOLVED_KEY] == {"base_model": "tiny-llama", "adapter": {
        "key": run.model, "storage_prefix": "tenants/x/ckpt-3"}}
    assert events == [("info", f"Eval run {run.id} of eval {eval_id} queued for the checkpoint at step 3",
                       {"eval_id": eval_id, "run_id": run.id, "step": 3, "model": run.model})]

    with session_scope(settings) as session:
        assert busy_storage_keys(session, tenant_id=job.tenant_id, job_id=job.id) == {"tenants/x/ckpt-3"}
        session.execute(update(EvalRun).where(EvalRun.id == run.id).values(status="completed"))
        session.commit()
        assert busy_storage_keys(session, tenant_id=job.tenant_id, job_id=job.id) == set()


def test_refusals_are_warning_events_never_exceptions(service, settings, tmp_path):
    eval_id, job = _job_with_an_eval(service)
    spec_evals = JobSpec.from_data(job.settings).evals
    events = []

    def record(message, level="info", data=None):
        events.append((level, message))

    # the template run is queued: one active run, and the cap is 1
    capped = job_evals(settings.model_copy(update={"broker_url": "memory://", "max_active_eval_runs_per_tenant": 1}),
                       job, spec_evals)
    capped.for_checkpoint(step=3, storage_key="k/3", event=record)
    capped.for_fine_tuned_model(step=6, adapter_prefix=None, event=record)
    away = job_evals(settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'none' / 'x.db'}"}),
                     job, spec_evals)
    away.for_checkpoint(step=3, storage_key="k/3", event=record)
    assert service.client.delete(f"/v1/evals/{eval_id}", headers=service.headers).status_code == 200
    memory = job_evals(settings.model_copy(update={"broker_url": "memory://"}), job, spec_evals)
    memory.for_checkpoint(step=9, storage_key="k/9", event=record)

    assert [level for level, _ in events] == ["warning"] * 4
    assert events[0][1] == (f"No run of eval {eval_id} on the checkpoint at step 3: the tenant already has 1 queued "
                            "or in_progress eval runs, its limit (DORA_MAX_ACTIVE_EVAL_RUNS_PER_TENANT)")
    assert "kept no 'adapter' output" in events[1][1]
    assert events[2][1].startswith("No eval runs of the checkpoint at step 3: ") and "OperationalError" in events[2][1]
    assert events[3][1] == f"No run of eval {eval_id} on the checkpoint at step 9: the eval was deleted"
    assert _runs(service, job.id) == []
