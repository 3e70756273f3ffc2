"""The worker suite's view of the API: one tenant's client plus the rows the worker side inspects."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi.testclient import TestClient
from sqlalchemy import select

from store.db import session_scope
from store.models import Checkpoint, Job, JobEvent, MetricPoint
from tests.support.jobs import DATASET, dora_method
from worker.settings import WorkerSettings


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


def tenant_service(app, settings: WorkerSettings) -> Iterator[Service]:
    """A fresh tenant's Service on `app` (its recorded publishes cleared), for a fixture to yield from."""
    from store.tenants import create_api_key

    with session_scope(settings) as session:
        key = create_api_key(session, tenant_name=f"t-{uuid.uuid4().hex[:10]}").key
    app.state.published.clear()
    with TestClient(app) as client:
        yield Service(client=client, settings=settings, headers={"Authorization": f"Bearer {key}"},
                      published=app.state.published)
