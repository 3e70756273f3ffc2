"""Stale database connections: when PostgreSQL drops the API's connections (a restart, a failover,
an idle timeout), the next requests still succeed; nothing shared is restarted here, the test
terminates only its own database's backends."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from store.db import build_engine

# SQLite has no server connections to lose: these tests exist for the PostgreSQL run only
# (tests/api/conftest.py deselects their SQLite variants; nothing is skipped).
pytestmark = pytest.mark.postgresql_only


@pytest.fixture
def pg_url(settings) -> str:
    assert settings.database_url.startswith("postgresql")
    return settings.database_url


def terminate_backends(database_url: str) -> int:
    """Kill every other connection to this test's own database, as a server restart would."""
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
        rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    return sum(1 for (killed,) in rows if killed)


def test_every_kind_of_request_survives_dropped_connections(pg_url, tenant, client):
    job_id = tenant.job()["id"]
    for _ in range(3):  # the pool now holds connections that were used and returned
        assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200
    assert terminate_backends(pg_url) >= 1
    assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200  # key lookup + the read path
    assert terminate_backends(pg_url) >= 1
    assert tenant.get("/v1/fine_tuning/jobs", params={"limit": 1}).status_code == 200  # the request session
    assert terminate_backends(pg_url) >= 1
    assert tenant.create_job().status_code == 200  # a write
    assert terminate_backends(pg_url) >= 1
    assert client.get("/readyz").json()["database"] == "ok"


@pytest.mark.parametrize("pre_ping", [True, False])
def test_pre_ping_is_what_replaces_a_dropped_connection(pg_url, pre_ping):
    """The control: without pre-ping the first statement on a dropped connection fails."""
    engine = build_engine(pg_url, pool_size=1, max_overflow=0, pre_ping=pre_ping)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        terminate_backends(pg_url)
        with engine.connect() as connection:
            if pre_ping:
                assert connection.execute(text("SELECT 1")).scalar() == 1
            else:
                with pytest.raises(OperationalError):
                    connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
