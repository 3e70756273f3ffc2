"""Fixtures for the API suite: every test runs once on SQLite and once on PostgreSQL.

PostgreSQL gets a fresh database per test session on the local server, migrated by Alembic
(like SQLite), and dropped afterwards. S3 storage runs against a moto server in a subprocess
on a free loopback port. With CI set, an unreachable PostgreSQL or Redis, or a missing moto,
is a failure, not a skip. Each test gets its own tenant, so tests share one app and database
per backend without seeing each other's rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dora_cli.process_settings import AllSettings
from store.migrate import upgrade
from tests.support.api_client import (
    BASE_MODELS,
    MAX_UPLOAD,
    METRICS_TOKEN,
    FakeWorker,
    Tenant,
    make_tenant,
    recording_app,
)
from tests.support.services import MOTO_SERVER, REDIS_URL, postgres_database, running_server, unavailable


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
def settings(database_url, tmp_path_factory) -> AllSettings:
    # every group: these tests also play the webhook sender and the worker in this process
    settings = AllSettings(database_url=database_url, storage_url=str(tmp_path_factory.mktemp("artifacts")),
                        broker_url="redis://127.0.0.1:1/0", base_models=BASE_MODELS, max_upload_bytes=MAX_UPLOAD,
                        max_rank=128, auth_cache_seconds=0.0, upload_tmp_dir=str(tmp_path_factory.mktemp("uploads")),
                        metrics_token=METRICS_TOKEN)
    upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def app(settings):
    return recording_app(settings)


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture
def tenant(client, settings) -> Tenant:
    return make_tenant(client, settings)


@pytest.fixture
def other_tenant(client, settings) -> Tenant:
    return make_tenant(client, settings)


@pytest.fixture
def worker(settings) -> FakeWorker:
    return FakeWorker(settings)


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


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """A real S3 endpoint: moto's server in a subprocess (port 0, so never a taken port).

    boto3 gets dummy credentials from the environment for the session. A subprocess, not a
    thread, so the objects moto holds do not count in this process's memory measurements.
    """
    try:
        import boto3  # noqa: F401 - only whether it is installed
        import moto.server  # noqa: F401 - only whether it is installed
    except ImportError as error:
        unavailable("moto[server] and boto3 (pip install -e '.[dev]')", error, problem="are not installed")
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as errors:
        server = subprocess.Popen([sys.executable, "-c", MOTO_SERVER], stdout=subprocess.PIPE,
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
