"""The services of the test environment: PostgreSQL, Redis and S3 (moto), free ports, uvicorn in a thread.

With CI set, a service that is not there is a failure (it is part of the test environment there);
elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = os.environ.get("DORA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DORA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# moto's S3 server in a subprocess on port 0; it prints the port it listens on
MOTO_SERVER = ("import threading; from moto.server import ThreadedMotoServer; "
               "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False); server.start(); "
               "print(server.get_host_and_port()[1], flush=True); threading.Event().wait()")


def unavailable(what: str, error: object, *, problem: str = "is not reachable") -> None:
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


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(app):
    """A real uvicorn server for `app` on a free loopback port, in a thread."""
    import uvicorn

    port = free_port()
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
