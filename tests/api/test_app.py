"""The app as a process: no torch, refuses an un-migrated database, health, readiness, metrics,
migrations matching the models, and the service CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient

from api.app import create_app
from store.db import build_engine
from store.migrate import SchemaOutdated
from store.models import Base
from store.settings import Settings
from tests.support.api_client import OPERATOR
from tests.support.packaging import build_wheel

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_process_never_imports_torch_or_dora_core():
    code = ("import sys; from api.app import create_app; from store.settings import Settings; "
            "create_app(Settings(database_url='sqlite://', storage_url=sys.argv[1])); "
            "bad = [m for m in ('torch', 'dora_core', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / "var" / "test-artifacts")], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_startup_refuses_an_unmigrated_database(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", storage_url=str(tmp_path / "a"))
    with pytest.raises(SchemaOutdated, match="run `dora migrate`"):
        with TestClient(create_app(settings)):
            pass


def test_migrations_match_the_models(settings):
    engine = build_engine(settings.database_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def test_health_ready_and_prometheus(client, tenant):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")  # the test settings point at a dead broker
    assert ready.status_code == 503 and ready.json()["database"] == "ok" and ready.json()["broker"] == "unreachable"
    tenant.job()
    text = client.get("/metrics", headers=OPERATOR).text
    assert 'dora_http_requests_total{method="POST",route="/v1/fine_tuning/jobs",status="200"}' in text
    assert 'dora_jobs{status="queued"}' in text


def test_readyz_with_a_live_broker(settings, redis_url):
    app = create_app(settings.model_copy(update={"broker_url": redis_url}))
    with TestClient(app) as client:
        assert client.get("/readyz").json() == {"status": "ready", "database": "ok", "broker": "ok"}


def _dora(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dora_cli.main", *args], cwd=ROOT, env=os.environ | env,
                          capture_output=True, text=True, timeout=120)


def test_cli_migrate_keys_create_and_api_refusal(tmp_path):
    env = {"DORA_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "DORA_STORAGE_URL": str(tmp_path / "a")}
    refused = _dora("api", "--port", "1", env=env)
    assert refused.returncode == 2 and "run `dora migrate`" in refused.stderr
    assert _dora("migrate", env=env).returncode == 0
    created = _dora("keys", "create", "--tenant", "acme", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-dora-") and " " not in key
    app = create_app(Settings(database_url=env["DORA_DATABASE_URL"], storage_url=env["DORA_STORAGE_URL"]))
    with TestClient(app) as client:
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_real_bug_is_a_logged_500_in_the_error_shape(settings, caplog):
    app = create_app(settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error" and "a bug" not in response.text
    assert "unhandled error on GET /boom" in caplog.text


def test_migrations_downgrade_and_upgrade_again(tmp_path):
    from alembic import command

    from store.migrate import alembic_config, head_revision, upgrade

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", storage_url=str(tmp_path / "a"))
    upgrade(settings)
    command.downgrade(alembic_config(settings.database_url), "base")
    upgrade(settings)
    engine = build_engine(settings.database_url)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()
    engine.dispose()


def test_dora_migrate_from_an_installed_wheel_in_another_directory(tmp_path):
    """The migration scripts ship in the wheel (the top-level `migrations` package, beside `store`)
    and are found from there, not from the CWD: build the wheel, unpack it as an install would,
    then `dora migrate` far from the checkout, from a folder holding some other `migrations/`."""
    import zipfile

    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {"migrations/__init__.py", "migrations/env.py", "migrations/script.py.mako"} <= set(names)
    assert any(n.startswith("migrations/versions/") and n.endswith(".py") for n in names)
    assert not any(n.startswith("store/migrations/") for n in names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "migrations").mkdir(parents=True)  # another project's, first on sys.path for `python -m`
    (elsewhere / "migrations" / "__init__.py").write_text("raise RuntimeError('not our migrations')\n")
    env = os.environ | {"PYTHONPATH": str(tmp_path / "site"), "DORA_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    migrated = subprocess.run([sys.executable, "-m", "dora_cli.main", "migrate"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    check = ("import store, store.migrate as m; from store.db import build_engine; "
             "from store.settings import Settings; "
             "m.check_schema(build_engine(Settings().database_url)); print(m.migrations_dir())")
    checked = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr[-3000:]
    # the wheel's copy: neither the checkout's nor the `migrations/` in the working directory
    assert Path(checked.stdout.strip()) == (tmp_path / "site" / "migrations").resolve()


def test_alembic_ini_in_the_checkout_still_migrates(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT), "DORA_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    result = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    from store.migrate import check_schema

    engine = build_engine(env["DORA_DATABASE_URL"])
    check_schema(engine)
    engine.dispose()
