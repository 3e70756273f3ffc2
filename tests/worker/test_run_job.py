"""`worker.job.run_job`, in process: claim, train under a lease, outputs, failures, cancel, resume."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import update

from dora_contract import JobSpec
from store.db import session_scope
from store.models import Job
from store.storage import open_storage
from tests.support.jobs import DATASET, dora_method
from worker.job import run_job


def _run(service, job_id, **kwargs) -> str:
    published = kwargs.pop("published", [])
    return run_job(job_id, settings=kwargs.pop("settings", service.settings),
                   publish=lambda jid, gpus: published.append(jid) or True, **kwargs)


def _in_thread(service, job_id, **kwargs):
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("value", _run(service, job_id, **kwargs)))
    thread.start()
    return thread, outcome


def _wait_for_step(service, job_id, step: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = service.steps(job_id)
        if steps and steps[-1] >= step:
            return steps[-1]
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached step {step}")


def test_a_job_trains_and_stores_metrics_checkpoints_and_artifacts(service):
    job_id = service.create(outputs=["adapter", "merged"])
    assert _run(service, job_id) == "succeeded"
    job = service.get(job_id)
    assert job["status"] == "succeeded" and job["attempt"] == 1 and job["error"] is None
    assert job["fine_tuned_model"].startswith("ft:tiny-llama:") and job["trained_tokens"] > 0
    assert job["progress"] == {"step": 6, "total_steps": 6, "epoch": job["progress"]["epoch"], "percent": 100.0,
                               "eta_seconds": None}
    assert service.steps(job_id) == [1, 2, 3, 4, 5, 6]
    assert [c.step for c in service.checkpoints(job_id)] == [3, 6]
    artifacts = {a["name"]: a for a in service.artifacts(job_id)}
    assert set(artifacts) == {"adapter", "merged"} and len(job["result_files"]) == 2
    assert {f["path"] for f in artifacts["adapter"]["files"]} == {"adapter_config.json", "adapter_model.safetensors"}
    assert "model.safetensors" in {f["path"] for f in artifacts["merged"]["files"]}
    storage = open_storage(service.settings.storage_url)
    for checkpoint in service.checkpoints(job_id):
        assert storage.list(checkpoint.storage_key)  # uploaded: another host can resume from it
    assert not (Path(service.settings.work_dir) / job_id).exists()  # the local work folder is cleaned up
    assert any(message.startswith("Training on 25 examples for 6 steps") for message in service.events(job_id))


def test_a_second_delivery_of_the_same_job_is_dropped(service):
    job_id = service.create()
    assert _run(service, job_id) == "succeeded"
    assert _run(service, job_id) == "skipped"
    assert service.row(job_id).attempt == 1
    assert sum(message.startswith("Attempt ") for message in service.events(job_id)) == 1


def test_a_dataset_that_breaks_at_training_time_fails_at_once_with_a_readable_error(service):
    # every row fits the upload rules, but none keeps an answer token within max_seq_len
    job_id = service.create(dora_method(max_seq_len=8))
    published = []
    assert _run(service, job_id, published=published) == "failed"
    job = service.get(job_id)
    assert job["status"] == "failed" and job["attempt"] == 1 and not published  # no retry
    error = job["error"]
    assert error["code"] == "invalid_training_file" and error["param"] == "training_file"
    assert "line 1" in error["message"] and job["training_file"] in error["message"]
    assert "Traceback" not in error["message"] and service.settings.work_dir not in error["message"]


def test_a_missing_base_model_fails_with_model_not_found(service, tmp_path):
    job_id = service.create()
    settings = service.settings.model_copy(update={"base_models": {"tiny-llama": str(tmp_path / "no-such-model")}})
    assert _run(service, job_id, settings=settings) == "failed"
    error = service.get(job_id)["error"]
    assert error["code"] in ("model_not_found", "model_load_failed") and "Traceback" not in error["message"]


def test_cancel_mid_run_stops_within_one_step_without_artifacts(service):
    job_id = service.create(dora_method(max_steps=400, checkpoint_interval=2))
    thread, outcome = _in_thread(service, job_id)
    _wait_for_step(service, job_id, 3)
    at_request = service.cancel(job_id)["progress"]["step"]
    thread.join(timeout=60)
    assert outcome["value"] == "cancelled"
    job = service.get(job_id)
    assert job["status"] == "cancelled" and job["attempt"] == 1 and job["result_files"] == []
    assert service.artifacts(job_id) == []
    assert service.steps(job_id)[-1] <= at_request + 1
    assert _run(service, job_id) == "skipped"  # a cancelled job is never claimed again


def test_a_worker_shutting_down_checkpoints_gives_the_job_back_and_the_next_attempt_resumes_there(service):
    job_id = service.create(dora_method(max_steps=60, checkpoint_interval=50))
    stop = threading.Event()
    published = []
    thread, outcome = _in_thread(service, job_id, stop_requested=stop.is_set, published=published)
    _wait_for_step(service, job_id, 5)
    stop.set()
    thread.join(timeout=60)
    assert outcome["value"] == "released" and published == [job_id]
    job = service.row(job_id)
    stopped_at = job.step
    assert job.status == "queued" and job.lease_owner is None and 5 <= stopped_at < 50
    assert [c.step for c in service.checkpoints(job_id)] == [stopped_at]  # the stop's, not an interval's
    assert (Path(service.settings.work_dir) / job_id / "run" / "checkpoints").is_dir()

    assert _run(service, job_id) == "succeeded"
    job = service.get(job_id)
    assert job["attempt"] == 2 and job["resumed_from_step"] == stopped_at
    assert service.steps(job_id) == list(range(1, 61))  # continuous: re-run steps replaced, none missing
    assert any(m == f"Attempt 2 resumed from the checkpoint at step {job['resumed_from_step']}"
               for m in service.events(job_id))


def test_another_host_resumes_from_the_checkpoint_in_storage(service, tmp_path):
    job_id = service.create(dora_method(max_steps=60, checkpoint_interval=2))
    stop = threading.Event()
    thread, outcome = _in_thread(service, job_id, stop_requested=stop.is_set)
    _wait_for_step(service, job_id, 5)
    stop.set()
    thread.join(timeout=60)
    assert outcome["value"] == "released"
    newest = max(c.step for c in service.checkpoints(job_id))

    other_host = service.settings.model_copy(update={"work_dir": str(tmp_path / "other-host")})
    assert _run(service, job_id, settings=other_host) == "succeeded"
    job = service.get(job_id)
    assert job["attempt"] == 2 and job["resumed_from_step"] == newest
    assert f"Fetched the checkpoint at step {newest} (written by attempt 1) from storage" in service.events(job_id)
    assert sorted(a["name"] for a in service.artifacts(job_id)) == ["adapter", "merged"]  # exactly one set


def test_an_attempt_that_lost_its_lease_stops_and_writes_nothing(service):
    job_id = service.create(dora_method(max_steps=400))
    thread, outcome = _in_thread(service, job_id)
    _wait_for_step(service, job_id, 2)
    with session_scope(service.settings) as session:  # another worker reclaimed the job
        session.execute(update(Job).where(Job.id == job_id).values(lease_owner="other:1", attempt=Job.attempt + 1))
        session.commit()
    thread.join(timeout=60)
    assert outcome["value"] == "lost"
    job = service.row(job_id)
    assert job.status == "running" and job.lease_owner == "other:1" and job.result_files == []


def test_a_retryable_failure_is_retried_then_stops_at_the_attempt_cap(service):
    job_id = service.create(max_attempts=2)
    storage = open_storage(service.settings.storage_url)
    storage.delete(JobSpec.from_data(service.row(job_id).settings).training_file.storage_key)  # a poison job
    published = []
    assert _run(service, job_id, published=published) == "released"
    assert published == [job_id] and service.row(job_id).status == "queued"
    assert _run(service, job_id, published=published) == "failed"
    job = service.get(job_id)
    assert job["attempt"] == 2 and job["error"]["code"] == "attempts_exhausted"
    assert job["error"]["message"].startswith("The job failed on all 2 attempts; the last error was: FileNotFoundError")
    assert _run(service, job_id) == "skipped"
    assert any(m.startswith("Attempt 1 failed: FileNotFoundError") for m in service.events(job_id))


def test_the_dataset_is_fetched_from_storage_into_the_work_folder(service, monkeypatch):
    from worker import job as job_module

    seen = {}
    original = job_module.JobAttempt.build_config

    def spy(self):
        config = original(self)
        seen["train"] = Path(config.train_file).read_bytes()
        return config

    monkeypatch.setattr(job_module.JobAttempt, "build_config", spy)
    job_id = service.create(dora_method(max_steps=1))
    assert _run(service, job_id) == "succeeded"
    assert seen["train"] == DATASET


def test_evaluations_join_their_step_and_checkpoints_carry_openai_metric_names(service):
    """Evaluations at 3 and 6, checkpoints at 2, 4 and 6: every checkpoint has the whole validation
    set's full_valid_*; valid_* only where an evaluation ran, with the same numbers."""
    job_id = service.create(dora_method(eval_interval=3, checkpoint_interval=2), validation_file=service.upload())
    assert _run(service, job_id) == "succeeded"
    metrics = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", headers=service.headers).json()["data"]
    points = {point["step"]: point["values"] for point in metrics}
    assert {"loss", "eval_loss", "eval_token_accuracy"} <= set(points[3]) and metrics[2]["epoch"] is not None
    checkpoints = {c["step_number"]: c["metrics"] for c in service.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=service.headers).json()["data"]}
    assert sorted(checkpoints) == [2, 4, 6]
    for step, values in checkpoints.items():
        assert {"step", "train_loss", "train_mean_token_accuracy", "full_valid_loss",
                "full_valid_mean_token_accuracy"} <= set(values), step
        assert values["full_valid_loss"] == points[step]["full_eval_loss"] > 0
        assert 0 <= values["full_valid_mean_token_accuracy"] <= 1
    assert "valid_loss" not in checkpoints[2] and "eval_loss" not in points[2]  # no evaluation at step 2
    assert checkpoints[6]["valid_loss"] == checkpoints[6]["full_valid_loss"] == points[6]["eval_loss"]


def test_a_cancel_asked_while_outputs_upload_ends_the_job_cancelled_and_removes_them(service, tmp_path):
    """N9: the cancel came after the last step, while the outputs were being uploaded; the job
    used to end succeeded with cancel_requested set. The final write ends it cancelled, and this
    attempt's uploaded outputs are deleted (nothing registered them)."""
    from store import jobs as job_store
    from worker.job import JobAttempt

    job_id = service.create()
    with session_scope(service.settings) as session:
        job = job_store.claim_job(session, job_id=job_id, owner="host:1", lease_seconds=60)
    storage = open_storage(service.settings.storage_url)
    attempt = JobAttempt(service.settings, job, "host:1", storage, lambda *_: True, lambda: False)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    artifacts = attempt.store_outputs({name: str(tmp_path / "adapter") for name in attempt.spec.run.outputs})
    assert service.cancel(job_id)["status"] == "running"  # accepted: 200, running, cancel requested
    assert attempt.succeed(artifacts, step=6) == "cancelled"
    job = service.get(job_id)
    assert job["status"] == "cancelled" and job["result_files"] == [] and job["error"] is None
    assert service.artifacts(job_id) == [] and not storage.list(artifacts[0].storage_prefix)
