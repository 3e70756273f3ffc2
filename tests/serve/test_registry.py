"""The heartbeat of an inference server (serve/registry.py), in this process on SQLite: a database
that cannot be reached costs a warning and a False beat, never an exception (the server keeps
serving), and the next beat after it is back registers the row; stop() removes it."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from serve.registry import Heartbeat
from serve.settings import ServeSettings
from store.db import get_engine
from store.migrate import upgrade
from store.models import InferenceServer


def _settings(url: str) -> ServeSettings:
    return ServeSettings(_env_file=None, database_url=url, base_models={"tiny-llama": "/models/tiny"},
                         inference_secret="s" * 16, serve_port=8123, serve_heartbeat_seconds=60)


def _rows(url: str) -> list[tuple]:
    with Session(get_engine(_settings(url))) as session:
        return [(row.id, row.url, row.base_models, row.max_batch) for row in session.scalars(select(InferenceServer))]


def test_a_database_outage_only_logs_and_the_next_beat_registers(tmp_path, caplog):
    missing = f"sqlite:///{tmp_path / 'no-such-folder' / 'dora.db'}"  # cannot be opened: an outage
    heartbeat = Heartbeat(_settings(missing), base_models=["tiny-llama"], server_id="host:1:abc")
    with caplog.at_level(logging.WARNING, logger="serve.registry"):
        assert heartbeat.beat() is False and heartbeat.beat() is False
    assert len([r for r in caplog.records if "heartbeat failed" in r.getMessage()]) == 1  # once per outage
    url = f"sqlite:///{tmp_path / 'dora.db'}"
    upgrade(_settings(url))
    heartbeat.settings = _settings(url)  # the database is back
    assert heartbeat.beat() is True
    assert _rows(url) == [("host:1:abc", "http://127.0.0.1:8123", ["tiny-llama"], 16)]
    heartbeat.stop()
    assert _rows(url) == []
