"""The API as the tests drive it: one tenant's client, a fake worker, and the app that records publishes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from store import jobs as job_store
from store.db import session_scope
from store.models import File, Job
from store.progress import Heartbeat, write_progress
from store.settings import Settings
from store.tenants import create_api_key

MAX_UPLOAD = 256 * 1024
BASE_MODELS = {"tiny-llama": "./var/models/tiny-llama", "llama-3.2-1b": "meta-llama/Llama-3.2-1B"}
# the operator's token for /metrics in the API suite's settings (DORA_METRICS_TOKEN)
METRICS_TOKEN = "test-metrics-token-0123456789"
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}
CHAT_ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def recording_app(settings):
    """The real app whose queue hand-off records job ids instead of reaching a broker."""
    app = create_app(settings)
    app.state.published = []
    app.state.published_gpus = {}  # job id -> the GPU count its message was published for

    def publish(job_id: str, gpus: int = 1) -> bool:
        app.state.published.append(job_id)
        app.state.published_gpus[job_id] = gpus
        return True

    app.state.publish = publish
    app.state.published_eval_runs = []  # eval run ids, in publish order
    app.state.publish_eval_run = lambda run_id: app.state.published_eval_runs.append(run_id) is None
    return app


@dataclass
class Tenant:
    """One tenant's view of the API: its key, a client, and counters of what it owns."""

    client: TestClient
    settings: Settings
    key: str
    tenant_id: str
    headers: dict = field(default_factory=dict)

    def get(self, path, **kw):
        return self.client.get(path, headers=self.headers | kw.pop("headers", {}), **kw)

    def post(self, path, **kw):
        return self.client.post(path, headers=self.headers | kw.pop("headers", {}), **kw)

    def delete(self, path, **kw):
        return self.client.delete(path, headers=self.headers | kw.pop("headers", {}), **kw)

    def upload(self, content: bytes = CHAT_ROW * 3, filename: str = "train.jsonl", purpose: str = "fine-tune"):
        return self.post("/v1/files", files={"file": (filename, content)}, data={"purpose": purpose})

    def file_id(self, content: bytes = CHAT_ROW * 3) -> str:
        response = self.upload(content)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def create_job(self, body: dict | None = None, **kw):
        body = {"model": "tiny-llama", "training_file": self.file_id()} | (body or {})
        return self.post("/v1/fine_tuning/jobs", json=body, **kw)

    def job(self, body: dict | None = None) -> dict:
        response = self.create_job(body)
        assert response.status_code == 200, response.text
        return response.json()

    def counts(self) -> tuple[int, int, int]:
        """(file rows, job rows, storage objects) this tenant owns."""
        storage_root = Path(self.settings.storage_url) / "tenants" / self.tenant_id
        objects = sum(1 for p in storage_root.rglob("*") if p.is_file()) if storage_root.exists() else 0
        with session_scope(self.settings) as session:
            files = session.scalar(select(func.count()).select_from(File).where(File.tenant_id == self.tenant_id))
            jobs = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == self.tenant_id))
        return files, jobs, objects


def make_tenant(client: TestClient, settings: Settings) -> Tenant:
    with session_scope(settings) as session:
        new = create_api_key(session, tenant_name=f"t-{uuid.uuid4().hex[:12]}")
    return Tenant(client=client, settings=settings, key=new.key, tenant_id=new.tenant_id,
                  headers={"Authorization": f"Bearer {new.key}"})


@dataclass
class FakeWorker:
    """Drives a job through store/'s state machine the way worker/ will."""

    settings: Settings
    owner: str = field(default_factory=lambda: f"test-worker-{uuid.uuid4().hex[:6]}")
    attempt: int = 0

    def claim(self, job_id: str, lease_seconds: float = 60):
        with session_scope(self.settings) as session:
            job = job_store.claim_job(session, job_id=job_id, owner=self.owner, lease_seconds=lease_seconds)
        if job is not None:
            self.attempt = job.attempt
        return job

    def call(self, function, **kw):
        with session_scope(self.settings) as session:
            return function(session, owner=self.owner, attempt=self.attempt, **kw)

    def progress(self, job_id: str, *, lease_seconds: float = 60, **progress) -> Heartbeat:
        """A heartbeat and what it carries (metrics, events, step...), written as worker/lease.py writes it."""
        return self.call(write_progress, job_id=job_id, lease_seconds=lease_seconds, **progress)
