"""Which settings each `dora` command loads: the composite of the groups it reads.

The services' composites live with their code (`ApiSettings` in store/settings.py, `WorkerSettings`,
`WebhookSenderSettings` and `EvalRunnerSettings` in worker/settings.py, `ServeSettings` in
serve/settings.py); the commands that are not one service get theirs here. `PROCESSES` is what docs/settings.md's
"read by" column is rendered from.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_settings import BaseSettings

from serve.settings import ServeSettings
from store.settings import ApiSettings, AuthSettings, DatabaseSettings, SessionSettings
from worker.settings import EvalRunnerSettings, WebhookSenderSettings, WorkerSettings


class KeysSettings(SessionSettings, AuthSettings):
    """`dora keys`: a session, and the API's key cache delay that `keys revoke` reports."""


class AllSettings(ApiSettings, WorkerSettings, WebhookSenderSettings, EvalRunnerSettings, ServeSettings):
    """Every group: `dora up` checks them all before it starts the API, a worker, the webhook sender,
    the eval executor and an inference server with the same environment; also what a test running the
    whole stack in one process uses."""


@dataclass(frozen=True)
class Process:
    name: str  # the column heading in docs/settings.md
    commands: str  # what runs with these settings
    settings: type[BaseSettings]


PROCESSES = (
    Process("api", "`dora api` (each uvicorn process)", ApiSettings),
    Process("worker", "`dora worker` with its job processes and reconciler, `dora reconcile`", WorkerSettings),
    Process("webhooks", "`dora webhooks`", WebhookSenderSettings),
    Process("evals", "`dora evals`", EvalRunnerSettings),
    Process("serve", "`dora serve`", ServeSettings),
    Process("migrate", "`dora migrate`", DatabaseSettings),
    Process("keys", "`dora keys create`, `list`, `revoke`", KeysSettings),
)
