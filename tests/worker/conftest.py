"""Fixtures for the worker suite: the real API (in-process), SQLite, local storage, the tiny model.

Jobs are created through the API, so the worker reads exactly the rows production writes;
`run_job` is then called in the test process (no Celery: tests/e2e covers the processes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dora_cli.process_settings import AllSettings
from store.migrate import upgrade
from tests.support.api_client import recording_app
from tests.support.worker_service import Service, tenant_service


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from dora_core.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def settings(tmp_path_factory, tiny_model_dir) -> AllSettings:
    root = tmp_path_factory.mktemp("worker")
    # every group: these tests run the API app and the worker in this process
    settings = AllSettings(database_url=f"sqlite:///{root / 'dora.db'}", storage_url=str(root / "artifacts"),
                              broker_url="redis://127.0.0.1:1/0", base_models={"tiny-llama": str(tiny_model_dir)},
                              work_dir=str(root / "work"), lease_seconds=30, heartbeat_seconds=1,
                              requeue_after_seconds=5, auth_cache_seconds=0.0, device="cpu")
    upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def app(settings):
    return recording_app(settings)


@pytest.fixture
def service(app, settings) -> Service:
    yield from tenant_service(app, settings)
