"""The registry of inference servers (`dora serve`): each beats its row, the API reads the live ones.

Why SQL, as workers' leases are: every process already has the database, it survives a restart of
any one of them, and a server that dies simply stops beating; no extra service to run. A server
is live while its heartbeat is younger than DORA_INFERENCE_SERVER_TTL_SECONDS. The API drops a
server's row at once when it cannot connect to it (`drop`), so the next request goes elsewhere; a
server that is still alive puts its row back with its next beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from store.models import InferenceServer, utcnow

# rows this many TTLs old are removed by the next beat of any server (a crashed server's row)
STALE_ROWS_AFTER_TTLS = 20


@dataclass(frozen=True)
class LiveServer:
    id: str
    url: str
    max_batch: int


def beat(session: Session, *, server_id: str, url: str, base_models: list[str], max_batch: int,
         ttl_seconds: float) -> None:
    """Register or refresh this server's row (and remove rows long dead); the caller commits."""
    now = utcnow()
    values = dict(url=url, base_models=sorted(base_models), max_batch=max_batch, heartbeat_at=now)
    updated = session.execute(update(InferenceServer).where(InferenceServer.id == server_id).values(**values))
    if updated.rowcount == 0:
        session.add(InferenceServer(id=server_id, started_at=now, **values))
    stale = now - timedelta(seconds=ttl_seconds * STALE_ROWS_AFTER_TTLS)
    session.execute(delete(InferenceServer).where(InferenceServer.heartbeat_at < stale))


def live_servers(session: Session, *, base_model: str, ttl_seconds: float) -> list[LiveServer]:
    """The servers that beat within the TTL and hold `base_model`, in id order."""
    since = utcnow() - timedelta(seconds=ttl_seconds)
    rows = session.scalars(select(InferenceServer).where(InferenceServer.heartbeat_at >= since)
                           .order_by(InferenceServer.id)).all()
    return [LiveServer(id=row.id, url=row.url, max_batch=row.max_batch) for row in rows
            if base_model in (row.base_models or [])]


def drop(session: Session, *, server_id: str) -> None:
    """Forget a server that could not be reached; the caller commits."""
    session.execute(delete(InferenceServer).where(InferenceServer.id == server_id))


def unregister(session: Session, *, server_id: str) -> None:
    """A server shutting down removes its own row (the caller commits)."""
    drop(session, server_id=server_id)
