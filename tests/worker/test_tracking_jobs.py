"""Jobs with `integrations` (issue #26), through the API and the worker with the real clients.

W&B: the real `wandb` client in offline mode; the run is read back from its `.wandb` file (config,
every step's loss equal to the job's own metrics, the samples' table). MLflow: a real `mlflow
server` (SQLite backend) started here receives every step's metrics, the config and the samples;
killed in the middle of a job, the job still succeeds and an event names the steps not logged. Bad
integrations through the official `openai` client: 400s naming the field, no job created.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from store.db import session_scope
from store.models import JobEvent, MetricPoint
from tests.support.api_client import recording_app
from tests.support.jobs import ROWS, dora_method, wait_for
from tests.support.wandb_files import offline_run
from tests.support.worker_service import tenant_service
from worker.job import run_job

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


def _service(settings, **tracking):
    """A tenant on an API and worker with these tracking settings. The flush limit is generous (a loaded CI
    host starts wandb-core slowly): a job waits for it only as long as its server needs, or is down."""
    copy = settings.model_copy(update={"tracking_flush_seconds": 60.0, "tracking_timeout_seconds": 10.0} | tracking)
    yield from tenant_service(recording_app(copy), copy)


def _losses(service, job_id) -> dict[int, float]:
    with session_scope(service.settings) as session:
        rows = session.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id))
        return {row.step: row.values["loss"] for row in rows if "loss" in (row.values or {})}


def _events(service, job_id) -> list[JobEvent]:
    with session_scope(service.settings) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def _validation(service) -> str:
    return service.upload("".join(json.dumps(row) + "\n" for row in ROWS[:4]).encode())


@pytest.fixture
def wandb_service(settings, tmp_path):
    yield from _service(settings, wandb_mode="offline", wandb_dir=str(tmp_path / "wandb"), max_job_gpus=2)


def test_a_wandb_job_writes_its_config_every_step_and_the_samples(wandb_service, tmp_path):
    service = wandb_service
    oai = _openai(service)
    integration = {"type": "wandb", "wandb": {"project": "tuning", "name": "first try", "tags": ["sum"]}}
    job = oai.fine_tuning.jobs.create(
        model="tiny-llama", training_file=service.upload(), validation_file=_validation(service),
        method=dora_method(eval_interval=3, sample_prompts=2, sample_max_new_tokens=4), integrations=[integration])
    job_id = job.id
    [shown] = oai.fine_tuning.jobs.retrieve(job_id).integrations  # OpenAI's type for it
    assert (shown.type, shown.wandb.project, shown.wandb.name, shown.wandb.tags) == ("wandb", "tuning", "first try",
                                                                                     ["sum"])
    assert run_job(job_id, settings=service.settings, publish=lambda *a: True) == "succeeded"

    [path] = (tmp_path / "wandb" / "wandb").glob(f"offline-run-*-{job_id}/run-{job_id}.wandb")
    run = offline_run(path)
    assert (run["project"], run["name"]) == ("tuning", "first try")
    assert {"dora/finetune", "dora/tiny-llama", f"dora/{job_id}", "sum"} <= set(run["tags"])
    assert run["config"]["job_id"] == job_id and run["config"]["training"]["max_steps"] == 6
    assert math.isclose(run["config"]["training"]["learning_rate"], 1e-2, rel_tol=0, abs_tol=0)
    logged = {row["_step"]: row["loss"] for row in run["history"] if "loss" in row}
    stored = _losses(service, job_id)
    assert sorted(logged) == list(range(1, 7)) == sorted(stored)
    for step, loss in stored.items():  # float32 losses, carried as JSON doubles both ways
        assert math.isclose(logged[step], loss, rel_tol=1e-6), step
    assert {row["_step"] for row in run["history"] if "eval_loss" in row} == {3, 6}
    tables = {row["_step"]: row["samples"] for row in run["history"] if "samples" in row}
    assert sorted(tables) == [0, 3, 6] and all(t["nrows"] == 2 for t in tables.values())
    table = json.loads((path.parent / "files" / tables[6]["path"]).read_text())
    assert table["columns"] == ["step", "index", "prompt", "expected", "answer"]
    assert [row[:2] for row in table["data"]] == [[6, 0], [6, 1]]
    assert table["data"][0][3] == ROWS[0]["messages"][1]["content"]
    assert not [e for e in _events(service, job_id) if "not logged" in e.message]


def test_bad_integrations_are_400s_naming_the_field_through_the_openai_client(wandb_service):
    import openai

    service = wandb_service
    oai, file_id = _openai(service), service.upload()
    before = oai.fine_tuning.jobs.list().data
    wandb = {"type": "wandb", "wandb": {"project": "p"}}
    for integration, extra, param, says in [
            ({"type": "comet", "comet": {"project": "p"}}, {}, "integrations.0.type", "'comet' is not supported"),
            ({"type": "wandb", "wandb": {"project": "p" * 129}}, {}, "integrations.0.wandb.project", "128"),
            ({"type": "mlflow", "mlflow": {"experiment": "e"}}, {}, "integrations.0.type", "DORA_MLFLOW_TRACKING_URI"),
            (wandb, {"gpus": 2}, "integrations", "one-GPU jobs only")]:
        with pytest.raises(openai.BadRequestError) as bad:
            oai.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id, integrations=[integration],
                                        extra_body=extra)
        assert bad.value.param == param and says in bad.value.message, bad.value.message
    assert oai.fine_tuning.jobs.list().data == before  # nothing created


def _openai(service):
    """The official client on the in-process API (TestClient is an httpx.Client)."""
    import openai

    key = service.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=service.client, max_retries=0)


# -- MLflow -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on SQLite with its artifacts in a folder; `kill()` stops it and its workers."""
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    database = root / "mlflow.db"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{database}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"),
                               start_new_session=True, env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=1).status == 200
        except OSError:
            assert process.poll() is None, (root / "server.log").read_text()[-2000:]
            return False

    wait_for(healthy, timeout=90, what="mlflow server", interval=0.5)

    class Server:
        uri, db = url, database

        @staticmethod
        def kill():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    yield Server
    Server.kill()


@pytest.fixture
def mlflow_service(settings, mlflow_server):
    yield from _service(settings, mlflow_tracking_uri=mlflow_server.uri)


def _mlflow_steps(database: Path, job_id: str, metric: str = "loss") -> dict[int, float]:
    """What the server stored, read from its own database."""
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT m.step, m.value FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
            "WHERE t.key = 'dora.job_id' AND t.value = :job AND m.key = :metric"), {"job": job_id, "metric": metric})
        return {step: value for step, value in rows}


def test_an_mlflow_job_sends_every_step_the_config_and_the_samples(mlflow_service, mlflow_server):
    from mlflow.tracking import MlflowClient

    service = mlflow_service
    integration = {"type": "mlflow", "mlflow": {"experiment": "sums", "run_name": "first"}}
    job_id = service.create(dora_method(eval_interval=3, sample_prompts=2, sample_max_new_tokens=4),
                            validation_file=_validation(service), integrations=[integration])
    assert run_job(job_id, settings=service.settings, publish=lambda *a: True) == "succeeded"

    stored = _losses(service, job_id)
    logged = _mlflow_steps(mlflow_server.db, job_id)
    assert sorted(logged) == list(range(1, 7)) == sorted(stored)
    for step, loss in stored.items():
        assert math.isclose(logged[step], loss, rel_tol=1e-6), step
    assert sorted(_mlflow_steps(mlflow_server.db, job_id, "eval_loss")) == [3, 6]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("sums").experiment_id],
                               filter_string=f"tags.`dora.job_id` = '{job_id}'")
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert run.data.params["training.max_steps"] == "6"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert names == {f"samples/step-{s:06d}.json" for s in (0, 3, 6)}
    assert not [e for e in _events(service, job_id) if "not logged" in e.message]


@pytest.fixture
def impatient_service(settings, mlflow_server):
    """A dead server is waited for the whole flush limit: a short one."""
    yield from _service(settings, mlflow_tracking_uri=mlflow_server.uri, tracking_flush_seconds=3.0,
                        tracking_timeout_seconds=2.0)


def test_a_tracking_server_killed_mid_job_leaves_the_job_succeeded_with_an_event(impatient_service, mlflow_server):
    service = impatient_service
    job_id = service.create(dora_method(max_steps=16, checkpoint_interval=16),
                            integrations=[{"type": "mlflow", "mlflow": {"experiment": "killed"}}])

    def kill_at_step_4():
        wait_for(lambda: len(_losses(service, job_id)) >= 4, timeout=120, what="step 4")
        mlflow_server.kill()

    killer = threading.Thread(target=kill_at_step_4, daemon=True)
    killer.start()
    started = time.monotonic()
    assert run_job(job_id, settings=service.settings, publish=lambda *a: True) == "succeeded"
    killer.join(5)
    assert time.monotonic() - started < 90

    [event] = [e for e in _events(service, job_id) if "not logged" in e.message]
    assert event.level == "warning" and event.message.startswith("MLflow: the metrics of")
    missing = event.data["steps_not_logged"]
    delivered = _mlflow_steps(mlflow_server.db, job_id)
    assert missing and missing[-1] == 16  # the steps after the kill
    assert sorted(set(missing) | set(delivered)) == list(range(1, 17))
    assert not set(missing) & set(delivered)
