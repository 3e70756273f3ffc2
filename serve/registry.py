"""This server's row in the registry of inference servers (store/inference_servers.py), kept fresh.

A daemon thread beats every DORA_SERVE_HEARTBEAT_SECONDS: the first beat registers the row, each
next one renews it, and a clean shutdown removes it, so the API stops routing here at once rather
than after the TTL. A database outage only logs a warning: requests in flight and new ones (from an
API that still sees the row) keep being served, and the next beat tries again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

from sqlalchemy.orm import Session

from serve.settings import ServeSettings
from store import inference_servers
from store.db import get_engine

log = logging.getLogger(__name__)


def new_server_id() -> str:
    """`host:pid:random`: unique per process start, readable in the table."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Heartbeat:
    """Beats `server_id`'s row from a thread until stop(); stop() also unregisters it."""

    def __init__(self, settings: ServeSettings, *, base_models: list[str], server_id: str | None = None) -> None:
        self.settings = settings
        self.server_id = server_id or new_server_id()
        self.base_models = sorted(base_models)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-heartbeat", daemon=True)
        self._failing = False

    def start(self) -> None:
        self.beat()  # registered before the server says it is up (when the database is there)
        self._thread.start()

    def beat(self) -> bool:
        """One beat; False (and a log line) when the database could not be reached."""
        try:
            with Session(get_engine(self.settings)) as session:  # no broker: a server writes no webhook
                inference_servers.beat(session, server_id=self.server_id, url=self.settings.advertised_url,
                                       base_models=self.base_models, max_batch=self.settings.serve_max_batch,
                                       ttl_seconds=self.settings.inference_server_ttl_seconds)
                session.commit()
        except Exception as error:  # noqa: BLE001 - an outage must not stop serving; retried next beat
            if not self._failing:
                log.warning("inference server %s: heartbeat failed (%s); still serving, retrying every %g s",
                            self.server_id, str(error).splitlines()[0][:200], self.settings.serve_heartbeat_seconds)
            self._failing = True
            return False
        if self._failing:
            log.info("inference server %s: heartbeat restored", self.server_id)
        self._failing = False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.settings.serve_heartbeat_seconds):
            self.beat()

    def stop(self) -> None:
        """Stop beating and remove the row (best effort: a row left behind expires with the TTL)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            with Session(get_engine(self.settings)) as session:
                inference_servers.unregister(session, server_id=self.server_id)
                session.commit()
        except Exception as error:  # noqa: BLE001 - shutting down; the row expires with the TTL
            log.warning("inference server %s: could not unregister (%s)", self.server_id, error)
