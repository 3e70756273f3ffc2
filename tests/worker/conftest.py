"""Fixtures for the worker suite: the real API (in-process), SQLite, local storage, the tiny model.

Jobs are created through the API, so the worker reads exactly the rows production writes;
`run_job` is then called in the test process (no Celery: tests/e2e covers the processes).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from store.db import session_scope
from store.migrate import upgrade
from store.models import Checkpoint, Job, JobEvent, MetricPoint
from store.tenants import create_api_key
from tests.api.conftest import recording_app
from worker.settings import WorkerSettings

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a + b}"}]} for a in range(5) for b in range(5)]
DATASET = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def dora_method(**hyperparameters) -> dict:
    training = {"max_steps": 6, "batch_size": 4, "max_seq_len": 64, "checkpoint_interval": 3,
                "learning_rate": 1e-2, "warmup_ratio": 0.0, "lr_scheduler": "constant"} | hyperparameters
    return {"type": "dora", "dora": {"rank": 4, "alpha": 8, "dropout": 0.0, "hyperparameters": training}}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from dora_core.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def settings(tmp_path_factory, tiny_model_dir) -> WorkerSettings:
    root = tmp_path_factory.mktemp("worker")
    settings = WorkerSettings(database_url=f"sqlite:///{root / 'dora.db'}", storage_url=str(root / "artifacts"),
                              broker_url="redis://127.0.0.1:1/0", base_models={"tiny-llama": str(tiny_model_dir)},
                              work_dir=str(root / "work"), lease_seconds=30, heartbeat_seconds=1,
                              requeue_after_seconds=5, auth_cache_seconds=0.0, device="cpu")
    upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def app(settings):
    return recording_app(settings)


@dataclass
class Service:
    """The API as one tenant sees it, plus what the worker side needs to inspect."""

    client: TestClient
    settings: WorkerSettings
    headers: dict
    published: list = field(default_factory=list)

    def upload(self, content: bytes = DATASET) -> str:
        response = self.client.post("/v1/files", headers=self.headers, files={"file": ("train.jsonl", content)},
                                    data={"purpose": "fine-tune"})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def create(self, method: dict | None = None, **body) -> str:
        body = {"model": "tiny-llama", "training_file": self.upload(), "method": method or dora_method()} | body
        response = self.client.post("/v1/fine_tuning/jobs", headers=self.headers, json=body)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def get(self, job_id: str) -> dict:
        return self.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=self.headers).json()

    def cancel(self, job_id: str) -> dict:
        return self.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=self.headers).json()

    def artifacts(self, job_id: str) -> list[dict]:
        return self.client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts", headers=self.headers).json()["data"]

    def row(self, job_id: str) -> Job:
        with session_scope(self.settings) as session:
            return session.get(Job, job_id)

    def steps(self, job_id: str) -> list[int]:
        with session_scope(self.settings) as session:
            query = select(MetricPoint.step).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step)
            return list(session.scalars(query))

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        with session_scope(self.settings) as session:
            return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.id)))

    def events(self, job_id: str) -> list[str]:
        with session_scope(self.settings) as session:
            query = select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            return list(session.scalars(query))


@pytest.fixture
def service(app, settings) -> Service:
    with session_scope(settings) as session:
        key = create_api_key(session, tenant_name=f"t-{uuid.uuid4().hex[:10]}").key
    app.state.published.clear()
    with TestClient(app) as client:
        yield Service(client=client, settings=settings, headers={"Authorization": f"Bearer {key}"},
                      published=app.state.published)
