"""The connection budget (issue [reliability-3] N11): each process's pool is sized from its share of
DORA_DB_CONNECTION_BUDGET, and each process warns at its first connection when the deployment's
pools could exceed PostgreSQL's max_connections (docs/architecture.md, "Connection budget")."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from store.db import ServerConnections, budget_warnings, build_engine, pool_limits, watch_connection_budget
from store.settings import DatabaseSettings

SERVER = ServerConnections(max_connections=100, reserved=3, processes=1, open=12)


def database(database_url: str = "sqlite://", **values) -> DatabaseSettings:
    return DatabaseSettings(_env_file=None, database_url=database_url, **values)


def test_pool_sizes_come_from_the_share_of_the_budget():
    assert pool_limits(database()) == (20, 20)  # no budget: the pool settings as they are
    assert pool_limits(database(db_connection_budget=90, db_processes=4)) == (11, 11)  # a share of 22
    assert pool_limits(database(db_connection_budget=45, db_processes=2)) == (11, 11)  # 22: the odd one unused
    assert pool_limits(database(db_connection_budget=400, db_processes=2)) == (20, 20)  # the settings are caps
    assert pool_limits(database(db_connection_budget=5, db_processes=5)) == (1, 0)
    assert pool_limits(database(db_connection_budget=60, db_processes=2, db_pool_size=5)) == (5, 20)
    with pytest.raises(ValidationError, match="DORA_DB_CONNECTION_BUDGET"):
        database(db_connection_budget=3, db_processes=4)


def test_the_warnings_say_what_exceeds_the_server_and_what_to_set():
    assert budget_warnings(database(), SERVER) == []  # one process of 40 fits in 97
    [over] = budget_warnings(database(db_processes=5), SERVER)
    assert "5 processes x (pool 20 + overflow 20) = 200 connections" in over and "max_connections 100" in over
    assert "DORA_DB_CONNECTION_BUDGET" in over
    assert budget_warnings(database(db_processes=5, db_connection_budget=97), SERVER) == []  # sized from the budget
    [budget] = budget_warnings(database(db_processes=2, db_connection_budget=120), SERVER)
    assert "DORA_DB_CONNECTION_BUDGET is 120" in budget and "accepts 97" in budget
    # more processes connected than the settings say: the real count is the one multiplied
    seen = ServerConnections(max_connections=100, reserved=3, processes=3, open=40)
    [over] = budget_warnings(database(), seen)
    assert "3 processes x (pool 20 + overflow 20) = 120" in over
    assert budget_warnings(database(), ServerConnections(100, 3, processes=2, open=40)) == []  # 80 fit
    understated, over = budget_warnings(database(db_connection_budget=90, db_processes=2), seen)
    assert "3 dora-tuner processes are connected" in understated and "DORA_DB_PROCESSES is 2" in understated
    assert "3 processes x (pool 20 + overflow 20) = 120" in over  # each took its share of 45, for 2


@pytest.mark.postgresql_only
def test_each_process_checks_the_server_at_its_first_connection(settings, caplog):
    caplog.set_level(logging.INFO, logger="store.db")
    for processes, warned in ((1, False), (100, True)):
        caplog.clear()
        engine = build_engine(settings.database_url)
        watch_connection_budget(engine, database(database_url=settings.database_url, db_processes=processes))
        try:
            with engine.connect() as connection:
                name = connection.execute(text("SELECT current_setting('application_name')")).scalar()
        finally:
            engine.dispose()
        assert name.startswith("dora-tuner/")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert bool(warnings) == warned, warnings
        if warned:
            assert "100 processes x (pool 20 + overflow 20) = 4000 connections" in warnings[-1]
            assert "max_connections" in warnings[-1]
