"""`/v1/fine_tuning/jobs`: create (methods, idempotency), list, get, cancel, events, checkpoints, metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from dora_contract import AdapterSettings, JobSpec, TrainingSettings
from store import jobs as job_store
from store.jobs import ACTIVE, TERMINAL, JobStatus
from store.progress import StepMetrics
from store.queue import publish_job
from tests.support.api_client import CHAT_ROW, OPERATOR


def test_dora_method_is_stored_resolved_and_published_once(tenant, app):
    method = {"type": "dora", "dora": {"rank": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
                                       "hyperparameters": {"max_steps": 50, "learning_rate": 1e-4,
                                                           "lr_scheduler": "linear", "max_seq_len": 512}}}
    job = tenant.job({"method": method, "suffix": "my-run", "seed": 7, "metadata": {"team": "nlp"},
                      "outputs": ["adapter", "merged"]})
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-") and job["status"] == "queued"
    hp = job["method"]["dora"]["hyperparameters"]  # every resolved value, in one place
    assert (hp["rank"], hp["alpha"], hp["dropout"], hp["target_modules"]) == (8, 16, 0.1, ["q_proj", "v_proj"])
    assert hp["max_steps"] == 50 and hp["learning_rate"] == 1e-4
    assert hp["gradient_accumulation_steps"] == 1 and hp["gradient_checkpointing"] == "auto"  # defaults, visibly
    assert set(job["method"]["dora"]) == {"hyperparameters"}
    assert job["seed"] == 7 and job["suffix"] == "my-run" and job["metadata"] == {"team": "nlp"}
    assert job["outputs"] == ["adapter", "merged"] and job["attempt"] == 0 and job["result_files"] == []
    assert job["progress"] == {"step": 0, "total_steps": None, "epoch": None, "percent": None, "eta_seconds": None}
    assert app.state.published.count(job["id"]) == 1


def test_openai_supervised_method_maps_to_dora_defaults(tenant):
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto",
                                                                      "learning_rate_multiplier": 0.5}}}
    job = tenant.job({"method": method})
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": TrainingSettings().micro_batch_size,
                                      "learning_rate_multiplier": 0.5}
    hp = job["method"]["dora"]["hyperparameters"]
    assert hp["rank"] == AdapterSettings().rank
    assert hp["learning_rate"] == pytest.approx(TrainingSettings().learning_rate * 0.5)
    plain = tenant.job()  # no method at all: supervised with every default
    assert plain["method"]["type"] == "supervised"
    assert plain["method"]["dora"]["hyperparameters"]["rank"] == AdapterSettings().rank


def test_lora_method(tenant):
    job = tenant.job({"method": {"type": "lora", "lora": {"rank": 4, "use_rslora": True}}})
    hp = job["method"]["lora"]["hyperparameters"]
    assert job["method"]["type"] == "lora" and hp["use_rslora"] is True and hp["rank"] == 4


def test_adapter_settings_inside_hyperparameters_openai_convention(tenant):
    """OpenAI keeps a method's own knobs in `hyperparameters` (DPO's beta): rank and alpha too."""
    method = {"type": "dora", "dora": {"hyperparameters": {"rank": 8, "alpha": 12, "dropout": 0.05, "max_steps": 3}}}
    hp = tenant.job({"method": method})["method"]["dora"]["hyperparameters"]
    assert (hp["rank"], hp["alpha"], hp["dropout"], hp["max_steps"]) == (8, 12, 0.05, 3)
    # alpha left out follows the rank (2 x rank), wherever the rank was given
    assert tenant.job({"method": {"type": "dora", "dora": {"rank": 4}}})["method"]["dora"]["hyperparameters"][
        "alpha"] == 8


def test_shown_method_sent_back_gives_the_same_job_settings(tenant):
    first = tenant.job({"method": {"type": "dora", "dora": {"rank": 4, "hyperparameters": {"max_steps": 3}}},
                        "seed": 1})
    again = tenant.job({"method": first["method"], "seed": 1})
    assert again["method"] == first["method"]


def test_idempotency_key_returns_the_same_job(tenant, app):
    file_id = tenant.file_id()
    body = {"model": "tiny-llama", "training_file": file_id}
    key = {"Idempotency-Key": "run-42"}
    first = tenant.post("/v1/fine_tuning/jobs", json=body, headers=key).json()
    again = tenant.post("/v1/fine_tuning/jobs", json=body, headers=key).json()
    assert again["id"] == first["id"] and app.state.published.count(first["id"]) == 1
    changed = tenant.post("/v1/fine_tuning/jobs", json=body | {"seed": 1}, headers=key)
    assert changed.status_code == 409 and changed.json()["error"]["param"] == "Idempotency-Key"
    assert tenant.counts()[1] == 1


def test_concurrent_requests_with_one_idempotency_key_make_one_job(tenant):
    body = {"model": "tiny-llama", "training_file": tenant.file_id()}

    def create(_):
        return tenant.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "same"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(create, range(8)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert tenant.counts()[1] == 1


def test_list_paginates_and_filters_by_status_and_metadata(tenant):
    ids = [tenant.job({"metadata": {"batch": "a" if i < 3 else "b"}})["id"] for i in range(5)]
    tenant.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel")
    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = tenant.get("/v1/fine_tuning/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == ids[::-1]
    cancelled = tenant.get("/v1/fine_tuning/jobs", params={"status": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    batch_b = tenant.get("/v1/fine_tuning/jobs", params={"metadata[batch]": "b"}).json()["data"]
    assert [j["id"] for j in batch_b] == ids[:2:-1]


def test_the_status_filter_accepts_exactly_the_job_status_names(tenant, client):
    """JobStatus is the one list of status names: the OpenAPI enum of `?status=` is its values,
    each is accepted, and anything else (`validating_files` is not a status here) is a 400."""
    openapi = client.get("/openapi.json").json()
    param = next(p for p in openapi["paths"]["/v1/fine_tuning/jobs"]["get"]["parameters"] if p["name"] == "status")
    documented = param["schema"]["enum"]
    assert documented == [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed", "cancelled",
                                                          "paused"]
    assert JobStatus.QUEUED in ACTIVE and ACTIVE | TERMINAL == set(JobStatus) and not ACTIVE & TERMINAL
    for status in documented:
        assert tenant.get("/v1/fine_tuning/jobs", params={"status": status}).status_code == 200
    for wrong in ("validating_files", "QUEUED", ""):
        refused = tenant.get("/v1/fine_tuning/jobs", params={"status": wrong})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "status", refused.text
        assert refused.json()["error"]["message"].endswith(
            "one of queued, running, succeeded, failed, cancelled, paused")


def test_a_validation_split_that_leaves_no_training_rows_is_a_400_naming_it(tenant):
    """The upload stored the file's row count, so a split that would hold out every row is refused
    at creation, naming the field (the worker would only fail the job on it)."""
    one_row = tenant.file_id(CHAT_ROW)
    for method, param in (({"type": "dora", "dora": {"hyperparameters": {"validation_split": 0.5}}},
                           "method.dora.hyperparameters.validation_split"),
                          ({"type": "lora", "lora": {"hyperparameters": {"validation_split": 0.1}}},
                           "method.lora.hyperparameters.validation_split")):
        refused = tenant.create_job({"training_file": one_row, "method": method})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == param and "leaves no training rows" in error["message"], error
    assert tenant.counts()[1] == 0
    two_rows = tenant.file_id(CHAT_ROW * 2)  # one held out, one to train on
    tenant.job({"training_file": two_rows, "method": {"type": "dora", "dora": {"hyperparameters": {
        "validation_split": 0.5}}}})


def test_progress_percent_eta_attempt_and_resume(tenant, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    assert worker.progress(job_id, resumed_from_step=10, step=25, total_steps=100, epoch=0.75).held
    job = tenant.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    progress = job["progress"]
    assert job["status"] == "running" and job["attempt"] == 1 and job["resumed_from_step"] == 10
    assert progress["step"] == 25 and progress["total_steps"] == 100 and progress["percent"] == 25.0
    assert progress["epoch"] == 0.75 and progress["eta_seconds"] is not None and progress["eta_seconds"] >= 0


def test_cancel_running_then_worker_finishes_it(tenant, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    requested = tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()
    assert requested["status"] == "running" and requested["cancel_requested"] is True
    worker.call(job_store.finish_job, job_id=job_id, status="cancelled")
    assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "cancelled"
    assert tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200  # cancelling twice is fine


def test_a_cancel_accepted_at_the_last_step_ends_the_job_cancelled(tenant, worker):
    """N9: a cancel answered 200 `running` while the worker was writing its outputs, then the job
    ended succeeded (cancel_requested: true) and the client was told nothing. The cancel wins:
    the worker's final write, whatever it meant to write, ends the job cancelled."""
    spec = job_store.ArtifactSpec(name="adapter", storage_prefix="tenants/x/jobs/y/outputs/attempt-1/adapter",
                                  files=[{"path": "adapter_config.json", "bytes": 2, "sha256": "0" * 64}])
    for meant, kwargs in (("succeeded", {"artifacts": [spec], "trained_tokens": 10}),
                          ("failed", {"error": job_store.JobError(code="internal_error", message="boom")})):
        job_id = tenant.job()["id"]
        worker.claim(job_id)
        accepted = tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        assert accepted.status_code == 200 and accepted.json()["status"] == "running"
        assert accepted.json()["cancel_requested"] is True
        assert worker.call(job_store.finish_job, job_id=job_id, status=meant, **kwargs)
        job = tenant.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "cancelled", (meant, job)
        assert job["result_files"] == [] and job["fine_tuned_model"] is None and job["error"] is None
        assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").json()["data"] == []
        events = [e["message"] for e in tenant.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]]
        assert "The job was cancelled" in events and not any("successfully" in m for m in events)


def test_cancel_of_a_finished_job_is_409(tenant, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    worker.call(job_store.finish_job, job_id=job_id, status="failed",
                error=job_store.JobError(code="invalid_dataset", message="line 3: bad row"))
    response = tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert response.status_code == 409 and "failed" in response.json()["error"]["message"]
    job = tenant.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["error"] == {"code": "invalid_dataset", "message": "line 3: bad row", "param": None}


def test_events_checkpoints_and_metrics(tenant, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    for step in range(1, 31):
        assert worker.progress(job_id, metrics=[StepMetrics(step=step, epoch=step / 30,
                                                            values={"train_loss": 3.0 - step / 30,
                                                                    "learning_rate": 1e-4})]).held
        if step % 10 == 0:
            worker.call(job_store.add_checkpoint, job_id=job_id, step=step, storage_key=f"ckpt/{step}",
                        metrics={"train_loss": 3.0 - step / 30})
    events = tenant.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
    messages = [e["message"] for e in events]
    assert messages[0] == "Checkpoint saved at step 30" and messages[-1].startswith("Created fine-tuning job")
    first_page = tenant.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 2}).json()
    assert first_page["has_more"] and len(first_page["data"]) == 2
    checkpoints = tenant.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints] == [30, 20, 10]
    assert checkpoints[0]["object"] == "fine_tuning.job.checkpoint" and checkpoints[0]["metrics"]["step"] == 30
    assert checkpoints[0]["fine_tuned_model_checkpoint"].endswith(":ckpt-step-30")
    steps, after = [], None
    while True:
        page = tenant.get(f"/v1/fine_tuning/jobs/{job_id}/metrics",
                          params={"limit": 12} | ({"after": after} if after is not None else {})).json()
        steps += [p["step"] for p in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_after"]
    assert steps == list(range(1, 31))


def test_broker_failure_leaves_the_job_created_and_queued(tenant, settings):
    assert publish_job("ftjob-none", broker_url="redis://127.0.0.1:1/0") is False  # refused, not raised
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app(settings)  # the real publisher, pointed at a dead broker
    with TestClient(app) as client:
        file_id = tenant.file_id()
        response = client.post("/v1/fine_tuning/jobs", headers=tenant.headers,
                               json={"model": "tiny-llama", "training_file": file_id})
        assert response.status_code == 200 and response.json()["status"] == "queued"
        assert "dora_publish_failures_total 1.0" in client.get("/metrics", headers=OPERATOR).text


def test_stored_run_config_is_accepted_by_dora_core(tenant, settings):
    """The worker hands the stored spec's run to dora_core unchanged: the names must agree."""
    settings_module = pytest.importorskip("dora_core.training.settings")
    from store.db import session_scope
    from store.models import Job

    method = {"type": "lora", "lora": {"rank": 4, "target_modules": ["q_proj"], "hyperparameters": {
        "n_epochs": 2, "batch_size": 2, "lr_scheduler": "linear", "precision": "fp32", "validation_split": 0.1}}}
    for body in ({"method": method, "seed": 5}, {}):
        job_id = tenant.job(body)["id"]
        with session_scope(settings) as session:
            stored = JobSpec.from_data(session.get(Job, job_id).settings)
        config = settings_module.RunConfig.from_dict(
            stored.run.model_dump() | {"base_model": stored.base_model.source, "train_file": "/data/train.jsonl"})
        assert config.adapter.method == ("lora" if body else "dora")
        if body:
            assert config.adapter.rank == 4 and config.training.epochs == 2 and config.training.micro_batch_size == 2
            assert config.training.seed == 5 and config.training.validation_split == 0.1


def test_an_unknown_model_names_the_base_models_and_a_fine_tuned_one_without_adapter_says_why(tenant, worker):
    unknown = tenant.create_job({"model": "gpt-9"})
    assert unknown.status_code == 400, unknown.text
    error = unknown.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert error["message"] == ("The model 'gpt-9' does not exist or is not available for fine-tuning here: the base "
                                "models here are 'llama-3.2-1b', 'tiny-llama' (GET /v1/models lists them)")
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    assert worker.call(job_store.finish_job, job_id=job_id, status="succeeded", artifacts=[])
    tuned = tenant.get(f"/v1/fine_tuning/jobs/{job_id}").json()["fine_tuned_model"]
    assert tuned in [m["id"] for m in tenant.get("/v1/models").json()["data"]]
    refused = tenant.create_job({"model": tuned})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_supported")
    assert error["message"].startswith(f"The model '{tuned}' cannot be trained further: its job kept no 'adapter' "
                                       "output (its outputs: none)"), error
