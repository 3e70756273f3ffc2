"""Fixtures for the API suite: every test runs once on SQLite and once on PostgreSQL.

PostgreSQL gets a fresh database per test session on the local server, migrated by Alembic
(like SQLite), and dropped afterwards. S3 storage runs against a moto server in a subprocess
on a free loopback port. With CI set, an unreachable PostgreSQL or Redis, or a missing moto,
is a failure, not a skip. Each test gets its own tenant, so tests share one app and database
per backend without seeing each other's rows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from store import jobs as job_store
from store.db import session_scope
from store.migrate import upgrade
from store.models import File, Job
from store.settings import Settings
from store.tenants import create_api_key

PG_ADMIN_URL = os.environ.get("DORA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DORA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MAX_UPLOAD = 256 * 1024
BASE_MODELS = {"tiny-llama": "./var/models/tiny-llama", "llama-3.2-1b": "meta-llama/Llama-3.2-1B"}
CHAT_ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def unavailable(what: str, error: Exception, *, problem: str = "is not reachable") -> None:
    """Fail under CI (the service is part of the test environment there), skip elsewhere."""
    message = f"{what} {problem}: {error}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def postgres_database():
    """A fresh, migrated PostgreSQL database; dropped at the end."""
    import psycopg

    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"dora_api_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        unavailable("PostgreSQL", error)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from store.db import dispose_engines

        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_collection_modifyitems(config, items):
    """Tests marked postgresql_only are not generated for the SQLite run (deselected, not skipped)."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        sqlite_run = callspec is not None and callspec.params.get("database_url") == "sqlite"
        (drop if sqlite_run and item.get_closest_marker("postgresql_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'dora.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url, tmp_path_factory) -> Settings:
    settings = Settings(database_url=database_url, storage_url=str(tmp_path_factory.mktemp("artifacts")),
                        broker_url="redis://127.0.0.1:1/0", base_models=BASE_MODELS, max_upload_bytes=MAX_UPLOAD,
                        max_rank=128, auth_cache_seconds=0.0, upload_tmp_dir=str(tmp_path_factory.mktemp("uploads")))
    upgrade(settings)
    return settings


def recording_app(settings):
    """The real app whose queue hand-off records job ids instead of reaching a broker."""
    app = create_app(settings)
    app.state.published = []
    app.state.publish = lambda job_id: app.state.published.append(job_id) or True
    return app


@pytest.fixture(scope="session")
def app(settings):
    return recording_app(settings)


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as client:
        yield client


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


@pytest.fixture
def tenant(client, settings) -> Tenant:
    return make_tenant(client, settings)


@pytest.fixture
def other_tenant(client, settings) -> Tenant:
    return make_tenant(client, settings)


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


@pytest.fixture
def worker(settings) -> FakeWorker:
    return FakeWorker(settings)


@contextmanager
def running_server(app):
    """A real uvicorn server for `app` on a free loopback port, in a thread."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def server_url(app, client):
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis (a database of its own, so other suites' queues are untouched)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        unavailable("Redis", error)
    return REDIS_URL


_MOTO_SERVER = ("import threading; from moto.server import ThreadedMotoServer; "
                "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False); server.start(); "
                "print(server.get_host_and_port()[1], flush=True); threading.Event().wait()")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """A real S3 endpoint: moto's server in a subprocess (port 0, so never a taken port).

    boto3 gets dummy credentials from the environment for the session. A subprocess, not a
    thread, so the objects moto holds do not count in this process's memory measurements.
    """
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as error:
        unavailable("moto[server] and boto3 (pip install -e '.[dev]')", error, problem="are not installed")
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as errors:
        server = subprocess.Popen([sys.executable, "-c", _MOTO_SERVER], stdout=subprocess.PIPE,
                                  stderr=errors, text=True)
    try:
        line = server.stdout.readline().strip()  # the port, once it listens
        if not line.isdigit():
            server.kill()
            unavailable("the moto S3 server", RuntimeError(log.read_text()[-2000:]), problem="did not start")
        with pytest.MonkeyPatch.context() as env:
            for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
                env.setenv(name, value)
            yield f"http://127.0.0.1:{line}"
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint) -> str:
    import boto3

    name = f"dora-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_url(s3_bucket) -> str:
    """`s3://bucket/<prefix of its own>` for one test."""
    return f"s3://{s3_bucket}/run-{uuid.uuid4().hex[:10]}"
